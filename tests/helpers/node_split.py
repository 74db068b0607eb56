"""A run's ranks laid out as several nodes would write them: one directory per node.

Each node directory holds the run's ``run.json`` (what each node's first process writes:
the same run id everywhere) and that node's ``rank-*`` directories, as
tests/comparator/test_multi_node.py's real two-node launches leave them.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from dumper.format import RUN_INFO_FILE, rank_dir_name


def split_into_nodes(run: Path, root: Path, name: str, nodes: tuple[tuple[int, ...], ...]) -> list[Path]:
    """Copy ``run`` into ``root/{name}-node{i}`` (rank ``nodes[i]`` each); returns the node directories."""
    directories = []
    for index, ranks in enumerate(nodes):
        directory = root / f"{name}-node{index}"
        if not (directory / RUN_INFO_FILE).exists():
            directory.mkdir(parents=True, exist_ok=True)
            for rank in ranks:
                shutil.copytree(run / rank_dir_name(rank), directory / rank_dir_name(rank))
            shutil.copy2(run / RUN_INFO_FILE, directory / RUN_INFO_FILE)  # last: marks the copy complete
        directories.append(directory)
    return directories
