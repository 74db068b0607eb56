"""Write a closed rank's index-summary.json (format and reading: dumper/index_summary.py).

Apart from the reader's module because it reads the index through the reader, which
itself reads summaries.
"""

from __future__ import annotations

import json
import os

from dumper.format import INDEX_FILE
from dumper.format_fields import write_json_atomic
from dumper.index_summary import SUMMARY_FILE, index_fingerprint, remove_summary, summarize_records, to_json
from dumper.reader import read_index
from dumper.safeio import JSON_LIMIT

__all__ = ["write_summary"]


def write_summary(rank_dir: str) -> bool:
    """Summarise a closed rank's index beside it; False (and no summary) when the index is not clean."""
    path = os.path.join(rank_dir, SUMMARY_FILE)
    index_path = os.path.join(rank_dir, INDEX_FILE)
    if not os.path.exists(index_path):
        return False
    size, crc = index_fingerprint(index_path)
    records, torn, problems = read_index(index_path, source=os.path.basename(rank_dir))
    if torn or problems or index_fingerprint(index_path) != (size, crc):
        remove_summary(rank_dir)  # the reader names the bad lines itself
        return False
    body = to_json(summarize_records(records), index_bytes=size, index_crc32=crc)
    if len(json.dumps(body, separators=(",", ":"))) > JSON_LIMIT // 2:
        # Nearly one row per record (e.g. a tag per request): no smaller than the index, not worth it.
        remove_summary(rank_dir)
        return False
    write_json_atomic(path, body)
    return True
