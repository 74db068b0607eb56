"""Reviewed waivers: intentional numerical changes the gate accepts, until they expire.

A YAML file meant to live in the engine's repository (so a waiver is reviewed like code),
written by ``dumpcmp gate accept`` and read only through dumper/yamlsafe.py::

    waivers:
      - tensors: '^moe_output$'          # regex searched in the tensor name
        tolerance: {rel_diff: 1.0e-2}    # new limits for these tensors (thresholds metrics) ...
        # new_baseline: true             # ... or: the change is accepted outright; promote
                                         # tonight's run (--promote) to make it the baseline
        reason: "fp8 MoE kernel (PR 1234) rounds differently"
        author: alice
        expires: 2027-01-31              # the gate fails, naming the waiver, from the next day on
        created: 2026-12-01

A tolerance waiver passes a failing tensor whose metrics are within its limits; a
new-baseline waiver passes its tensors whatever they measure. Either way the report
marks them allowed and the gate lists them.
"""

from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from comparator.errors import GateError
from comparator.judge.limits import STATS_METRICS, TENSOR_METRICS, Limit, make_limit
from dumper.patterns import UserRegex, compile_user_regex

WAIVER_KEYS = ("tensors", "tolerance", "new_baseline", "reason", "author", "expires", "created")
TOLERANCE_METRICS = tuple(dict.fromkeys(TENSOR_METRICS + STATS_METRICS))


@dataclass(frozen=True, kw_only=True)
class Waiver:
    tensors: UserRegex
    kind: Literal["tolerance", "new_baseline"]
    tolerance: dict[str, Limit] = field(default_factory=dict)  # for kind "tolerance"
    reason: str
    author: str
    expires: datetime.date
    created: datetime.date | None = None
    source: str = ""  # "waivers.yaml:12"

    def expired(self, today: datetime.date) -> bool:
        return today > self.expires

    def describe(self) -> str:
        what = ("tolerance " + ", ".join(limit.describe() for limit in self.tolerance.values())
                if self.kind == "tolerance" else "new baseline")
        return (f"waiver {self.source} for tensors {self.tensors.pattern!r} ({what}; by {self.author}: "
                f"{self.reason}; expires {self.expires.isoformat()})")

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source, "tensors": self.tensors.pattern, "kind": self.kind,
            "tolerance": {m: limit.to_json() for m, limit in self.tolerance.items()},
            "reason": self.reason, "author": self.author, "expires": self.expires.isoformat(),
            "created": self.created.isoformat() if self.created else None,
        }


def load_waivers(path: str | os.PathLike[str]) -> tuple[Waiver, ...]:

    from dumper import yamlsafe

    from dumper.safeio import read_text

    path = os.fspath(path)
    try:
        text = read_text(path, what="waivers file", error=GateError)
    except FileNotFoundError:
        raise GateError(f"{path}: no such waivers file; create one with: dumpcmp gate accept {path} ...") from None
    data, root = yamlsafe.load_document(text, path, GateError)
    return parse_waivers(data, root, path)


def _line(root: Any, index: int | None = None, key: str | None = None) -> int:
    import yaml

    node = root
    if isinstance(node, yaml.MappingNode):
        node = next((v for k, v in node.value if k.value == "waivers"), node)
    if index is not None and isinstance(node, yaml.SequenceNode) and index < len(node.value):
        node = node.value[index]
        if key is not None and isinstance(node, yaml.MappingNode):
            node = next((k for k, _ in node.value if k.value == key), node)
    return node.start_mark.line + 1 if node is not None else 1


def parse_waivers(data: Any, root: Any, path: str) -> tuple[Waiver, ...]:
    if data is None:
        return ()
    if not isinstance(data, dict) or set(data) - {"waivers"}:
        extra = sorted(str(k) for k in data) if isinstance(data, dict) else []
        raise GateError(f"{path}:{_line(root)}: expected a mapping with one key 'waivers' (a list), "
                        f"got {', '.join(extra) or type(data).__name__}")
    entries = data.get("waivers") or []
    if not isinstance(entries, list):
        raise GateError(f"{path}:{_line(root)}: 'waivers' must be a list of waivers")
    return tuple(_parse_one(entry, index, root, path) for index, entry in enumerate(entries))


def _parse_one(entry: Any, index: int, root: Any, path: str) -> Waiver:
    def fail(message: str, key: str | None = None) -> GateError:
        return GateError(f"{path}:{_line(root, index, key)}: waiver {index + 1}: {message}")

    if not isinstance(entry, dict):
        raise fail("must be a mapping with tensors, tolerance or new_baseline, reason, author, expires")
    unknown = [str(k) for k in entry if k not in WAIVER_KEYS]
    if unknown:
        raise fail(f"unknown field {unknown[0]!r}; valid fields: {', '.join(WAIVER_KEYS)}", unknown[0])
    for key in ("tensors", "reason", "author", "expires"):
        if entry.get(key) in (None, ""):
            raise fail(f"'{key}' is required (tensors, reason, author and expires make a waiver reviewable)")
    pattern = compile_user_regex(str(entry["tensors"]), f"{path}:{_line(root, index, 'tensors')}: tensors", GateError)
    has_tolerance, new_baseline = entry.get("tolerance") is not None, entry.get("new_baseline", False)
    if not isinstance(new_baseline, bool):
        raise fail("new_baseline must be true or false", "new_baseline")
    if has_tolerance == new_baseline:
        raise fail("give either a tolerance ({rel_diff: 1e-2, ...}) or new_baseline: true, not both or neither")
    tolerance: dict[str, Limit] = {}
    if has_tolerance:
        if not isinstance(entry["tolerance"], dict) or not entry["tolerance"]:
            raise fail("tolerance must map metrics to limits, e.g. {rel_diff: 1.0e-2}", "tolerance")
        for metric, value in entry["tolerance"].items():
            if metric not in TOLERANCE_METRICS:
                raise fail(f"unknown metric {metric!r} in tolerance; valid: {', '.join(TOLERANCE_METRICS)}", "tolerance")
            try:
                tolerance[str(metric)] = make_limit(str(metric), value)
            except (TypeError, ValueError, IndexError) as exc:
                raise fail(f"invalid limit for {metric}: {value!r} ({exc})", "tolerance") from None
    return Waiver(
        tensors=pattern, kind="tolerance" if has_tolerance else "new_baseline", tolerance=tolerance,
        reason=str(entry["reason"]), author=str(entry["author"]),
        expires=_date(entry["expires"], lambda m: fail(m, "expires")),
        created=_date(entry["created"], lambda m: fail(m, "created")) if entry.get("created") else None,
        source=f"{os.path.basename(path)}:{_line(root, index)}",
    )


def _date(value: Any, fail: Any) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value).strip())
    except ValueError:
        raise fail(f"{value!r} is not a date; write YYYY-MM-DD, e.g. 2027-01-31") from None


def waiver_entry_yaml(*, tensors: str, tolerance: dict[str, Any] | None, new_baseline: bool, reason: str,
                      author: str, expires: datetime.date, created: datetime.date) -> str:
    """One list item of the waivers file. JSON strings are YAML double-quoted scalars: any text stays intact."""
    import json

    lines = [f"  - tensors: {json.dumps(tensors)}"]
    if tolerance:
        lines.append("    tolerance: {" + ", ".join(f"{m}: {json.dumps(v)}" for m, v in tolerance.items()) + "}")
    if new_baseline:
        lines.append("    new_baseline: true")
    lines += [f"    reason: {json.dumps(reason)}", f"    author: {json.dumps(author)}",
              f"    expires: {expires.isoformat()}", f"    created: {created.isoformat()}"]
    return "\n".join(lines) + "\n"


def add_waiver(path: str | os.PathLike[str], entry: str) -> tuple[Waiver, ...]:
    """Append one waiver (text from waiver_entry_yaml) to the file, keeping its comments; atomic.

    The result is parsed before it replaces the file, so a file this cannot extend
    (e.g. other keys after ``waivers:``) is refused rather than broken.
    """
    from dumper import yamlsafe

    path = os.fspath(path)
    header = ("# dumpcmp gate waivers: reviewed, intentional numerical changes (docs/gate.md).\n"
              "# Written by `dumpcmp gate accept`; keep this file in the engine's repository.\n")
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        text = header
    except (OSError, UnicodeDecodeError) as exc:
        raise GateError(f"{path}: cannot read the waivers file ({exc})") from None
    before = load_waivers(path) if os.path.exists(path) else ()
    if not re.search(r"^waivers:", text, re.M) or re.search(r"^waivers:\s*\[\]\s*$", text, re.M):
        text = re.sub(r"^waivers:\s*\[\]\s*$", "", text, flags=re.M).rstrip("\n") + "\nwaivers:\n"
    new_text = text.rstrip("\n") + "\n" + entry
    after = parse_waivers(yamlsafe.safe_load(new_text), yamlsafe.compose(new_text), path)
    if len(after) != len(before) + 1:
        raise GateError(f"{path}: cannot append a waiver to this file (is 'waivers:' its last key?); "
                        "move the waivers list to the end of the file")
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(new_text)
        os.replace(tmp, path)
    except OSError as exc:
        raise GateError(f"{path}: cannot write the waivers file ({exc.strerror})") from None
    return after
