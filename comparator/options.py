"""Everything ``compare`` can be told, as one validated, frozen config object."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, get_args

from comparator.errors import ClusterError, NameMapError, OptionError
from comparator.judge.routing import RoutingOptions
from comparator.judge.thresholds import Thresholds, load_thresholds
from dumper.patterns import UserRegex, check_replacement, compile_user_regex
from dumper.safeio import read_text

if TYPE_CHECKING:
    from aligners import Aligner, MetadataNames

AlignerName = Literal["auto", "none", "concat_steps", "by_request"]
ALIGNER_NAMES: tuple[str, ...] = get_args(AlignerName)
ExecutorName = Literal["local", "ray"]
EXECUTOR_NAMES: tuple[str, ...] = get_args(ExecutorName)


@dataclass(frozen=True, kw_only=True)
class StepRange:
    """Steps ``start`` to ``stop - 1`` (either open). Written ``A:B``, ``A:``, ``:B`` or ``A``."""

    start: int | None = None
    stop: int | None = None

    def __contains__(self, step: int) -> bool:
        return (self.start is None or step >= self.start) and (self.stop is None or step < self.stop)

    @property
    def origin(self) -> int:
        return self.start or 0

    def __str__(self) -> str:
        return f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"


def parse_steps(text: str | None) -> StepRange:
    if text is None or text.strip() in ("", ":"):
        return StepRange()
    text = text.strip()
    try:
        if ":" not in text:
            step = int(text)
            return StepRange(start=step, stop=step + 1)
        start_text, stop_text = text.split(":", 1)
        start = int(start_text) if start_text.strip() else None
        stop = int(stop_text) if stop_text.strip() else None
    except ValueError:
        raise OptionError(f"invalid step range {text!r}; write A:B (steps A to B-1), A:, :B or a single step A") from None
    if start is not None and stop is not None and stop <= start:
        raise OptionError(f"empty step range {text!r}: B must be greater than A in A:B")
    return StepRange(start=start, stop=stop)


def compile_regex(text: str | None, option: str) -> UserRegex | None:
    return None if text is None else compile_pattern(text, option)


def compile_pattern(text: str, option: str) -> UserRegex:
    """Every regex option goes through the checks of dumper/patterns.py (size, nesting, backtracking)."""
    return compile_user_regex(text, option, OptionError)


@dataclass(frozen=True, kw_only=True)
class DimsOverride:
    """``--override-dims [baseline:|target:]NAME=DIMS``: NAME is a regex matched in full."""

    pattern: UserRegex
    dims: str
    side: Literal["both", "baseline", "target"] = "both"

    def applies(self, name: str, side: str) -> bool:
        return self.side in ("both", side) and self.pattern.fullmatch(name) is not None


def parse_override_dims(text: str) -> DimsOverride:
    from dumper.dims import parse_dims

    name, sep, dims = text.partition("=")
    if not sep or not name.strip() or not dims.strip():
        raise OptionError(f"--override-dims {text!r}: write NAME=DIMS, e.g. 'mlp_output=t h[tp:partial]'")
    side = "both"
    for prefix in ("baseline:", "target:"):
        if name.startswith(prefix):
            side, name = prefix[:-1], name[len(prefix):]
    parse_dims(dims.strip())  # fail now, before any tensor is read
    pattern = compile_pattern(name.strip(), "--override-dims name")
    return DimsOverride(pattern=pattern, dims=dims.strip(), side=side)  # type: ignore[arg-type]


_TAG_FIELD = re.compile(r"\{([A-Za-z_]\w*)\}")


@dataclass(frozen=True, kw_only=True)
class NameMap:
    """How target names and tags translate to the baseline's (runs of two engines).

    YAML file::

        names:                       # exact target name -> baseline name
          model.layers.mlp: mlp_output
          moe_output: 'model.layers.{layer}.mlp.output'   # {tag}: the target's tag value
        patterns:                    # regex on the target name -> replacement (\\1 groups)
          - {target: '^vllm\\.(.*)$', baseline: '\\1'}
        tags:                        # target tag -> baseline tag
          layer_id: layer
        ignore_tags: [recompute_status]   # dropped on both sides before matching
    """

    names: dict[str, str] = field(default_factory=dict)
    patterns: tuple[tuple[UserRegex, str], ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    ignore_tags: frozenset[str] = frozenset()

    def baseline_name(self, target_name: str, tags: dict[str, Any] | None = None) -> str:
        """The baseline's name; ``{tag}`` in a mapped name is the target's tag value
        (baselines that keep the layer in the name: ``model.layers.{layer}.mlp``)."""
        mapped = target_name
        if target_name in self.names:
            mapped = self.names[target_name]
        else:
            for pattern, replacement in self.patterns:
                if pattern.search(target_name):
                    mapped = pattern.sub(replacement, target_name)
                    break
        if mapped is target_name or tags is None or "{" not in mapped:
            return mapped
        # NOTE: plain substitution, never str.format: names are user text.
        return _TAG_FIELD.sub(lambda m: str(tags[m.group(1)]) if m.group(1) in tags else m.group(0), mapped)

    def baseline_tags(self, tags: dict[str, Any]) -> dict[str, Any]:
        return {self.tags.get(k, k): v for k, v in tags.items() if k not in self.ignore_tags}


def load_name_map(path: str | os.PathLike[str] | None) -> NameMap:
    if path is None:
        return NameMap()
    import yaml

    path = os.fspath(path)
    from dumper import yamlsafe

    try:
        data = yamlsafe.safe_load(read_text(path, what="name map", error=NameMapError))
    except OSError as exc:
        raise NameMapError(f"{path}: cannot read name map ({exc.strerror})") from None
    except yamlsafe.YamlLimitError as exc:
        raise NameMapError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise NameMapError(f"{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if data is None:
        return NameMap()
    if not isinstance(data, dict):
        raise NameMapError(f"{path}: expected a mapping with names, patterns, tags, ignore_tags")
    unknown = [k for k in data if k not in ("names", "patterns", "tags", "ignore_tags")]
    if unknown:
        raise NameMapError(f"{path}: unknown key {unknown[0]!r}; valid keys: names, patterns, tags, ignore_tags")
    names = data.get("names") or {}
    tags = data.get("tags") or {}
    if not isinstance(names, dict) or not isinstance(tags, dict):
        raise NameMapError(f"{path}: 'names' and 'tags' must map target names to baseline names")
    patterns = []
    for entry in data.get("patterns") or []:
        if not isinstance(entry, dict) or set(entry) != {"target", "baseline"}:
            raise NameMapError(f"{path}: each pattern is {{target: REGEX, baseline: REPLACEMENT}}, got {entry!r}")
        regex = compile_user_regex(str(entry["target"]), f"{path}: pattern", NameMapError)
        check_replacement(regex, str(entry["baseline"]), f"{path}: replacement", NameMapError)
        patterns.append((regex, str(entry["baseline"])))
    ignore = data.get("ignore_tags") or []
    if not isinstance(ignore, list):
        raise NameMapError(f"{path}: ignore_tags must be a list of tag names")
    return NameMap(
        names={str(k): str(v) for k, v in names.items()},
        patterns=tuple(patterns),
        tags={str(k): str(v) for k, v in tags.items()},
        ignore_tags=frozenset(str(t) for t in ignore),
    )


MAX_JOBS = 256


def _installed(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules (import blocked)
        return False


@dataclass(frozen=True, kw_only=True)
class CompareOptions:
    """What ``compare`` is told, validated: every field holds a parsed object, never text to re-read."""

    aligner: AlignerName = "auto"  # the token aligner (aligners/); auto picks one from the token metadata
    aligner_metadata: "MetadataNames | None" = None  # token metadata dump names (--aligner-meta); None: the defaults
    thresholds: Thresholds = Thresholds()  # parsed rules and defaults (--thresholds FILE; comparator/judge/thresholds.py)
    allow_fail: UserRegex | None = None  # names whose failures and errors do not fail the gate
    allow_skip: UserRegex | None = None  # names that may be missing on one side
    steps: StepRange = StepRange()  # target steps compared
    baseline_steps: StepRange | None = None  # defaults to ``steps``
    names: UserRegex | None = None  # only names this regex finds
    exclude: UserRegex | None = None  # leave out names this regex finds
    name_map: NameMap = NameMap()  # target names and tags -> the baseline's
    override_dims: tuple[DimsOverride, ...] = ()  # dims annotations that replace the dumped ones
    jobs: int = 1  # worker processes (1: compare in this process); local executor only
    # Where the per-tensor work runs: this machine (``jobs`` processes), or the tasks of a
    # Ray cluster, each on the node holding its shards (comparator/ray_executor.py).
    executor: ExecutorName = "local"
    # The Ray cluster (``--address``); None: RAY_ADDRESS, else the cluster ``ray start``
    # started on this machine, else a new Ray instance on this machine alone.
    address: str | None = None
    verify_checksums: bool = False  # check every shard's checksum while loading
    routing: RoutingOptions = RoutingOptions()  # routing-aware MoE comparison (comparator/judge/routing.py)
    # The gate fails when fewer rows than this fraction were compared overall (rows left out
    # after benign routing flips; a tensor without a row dim counts as one row).
    min_compared: float = 0.5

    def __post_init__(self) -> None:
        if self.aligner not in ALIGNER_NAMES:
            raise OptionError(f"unknown aligner {self.aligner!r}; valid aligners: {', '.join(ALIGNER_NAMES)}")
        if not 1 <= self.jobs <= MAX_JOBS:
            # NOTE: each job is a process; 100000 of them would bring the machine down first.
            raise OptionError(f"--jobs {self.jobs}: must be between 1 and {MAX_JOBS} (e.g. the number of cores)")
        if self.executor not in EXECUTOR_NAMES:
            raise OptionError(f"unknown executor {self.executor!r}; valid executors: {', '.join(EXECUTOR_NAMES)}")
        if self.executor != "ray" and self.address is not None:
            raise OptionError(f"--address {self.address}: names a Ray cluster, for --executor ray only")
        if self.executor == "ray" and self.jobs != 1:
            # NOTE: on a cluster the nodes' CPUs decide how many tasks run at once.
            raise OptionError(f"--jobs {self.jobs}: for the local executor only; with --executor ray each node "
                              "runs as many tasks as Ray gives it CPUs")
        if self.executor == "ray" and not _installed("ray"):
            # NOTE: found, not imported: importing Ray takes seconds; comparator/ray_executor.py does it.
            raise ClusterError("--executor ray needs Ray, which is not installed: pip install 'dumpcmp[ray]'")
        if not 0.0 <= self.min_compared <= 1.0:
            raise OptionError(f"--min-compared {self.min_compared:g}: must be a fraction from 0 to 1, e.g. 0.5 "
                              "(half of the rows compared), 0 to turn the gate off")
        if not isinstance(self.thresholds, Thresholds):
            raise TypeError("CompareOptions.thresholds takes load_thresholds(path); "
                            "CompareOptions.from_values(thresholds=path) reads the file")

    def make_aligner(self) -> "Aligner":
        """A fresh aligner as configured (planning and every executor each make their own).

        ``auto`` is resolved by comparator.plan from the runs' metadata first (its executors get the choice).
        """
        from aligners import get_aligner

        if self.aligner == "auto":
            raise OptionError("--aligner auto is chosen from the runs' token metadata: plan the comparison first")

        return get_aligner(self.aligner, metadata=self.aligner_metadata)

    @property
    def baseline_range(self) -> StepRange:
        return self.baseline_steps if self.baseline_steps is not None else self.steps

    @property
    def step_offset(self) -> int:
        """baseline step = target step + offset."""
        return self.baseline_range.origin - self.steps.origin

    def dims_for(self, name: str, side: str) -> str | None:
        for override in self.override_dims:
            if override.applies(name, side):
                return override.dims
        return None

    @classmethod
    def from_values(
        cls, *, aligner: str = "auto", aligner_metadata: str | None = None, thresholds: str | os.PathLike[str] | None = None, allow_fail: str | None = None,
        allow_skip: str | None = None, steps: str | None = None, baseline_steps: str | None = None,
        names: str | None = None, exclude: str | None = None, name_map: str | os.PathLike[str] | None = None,
        override_dims: list[str] | tuple[str, ...] = (), jobs: int = 1, verify_checksums: bool = False,
        routing: bool = True, moe_outputs: str | None = None, min_compared: float = 0.5, executor: str = "local",
        address: str | None = None,
    ) -> "CompareOptions":
        """Build from plain strings (CLI values); raises OptionError (or AlignerError) naming the bad one."""
        from aligners import MetadataNames

        return cls(
            aligner=aligner,  # type: ignore[arg-type]  # checked in __post_init__
            aligner_metadata=MetadataNames.parse(aligner_metadata) if aligner_metadata else None,
            thresholds=load_thresholds(thresholds),
            allow_fail=compile_regex(allow_fail, "--allow-fail"),
            allow_skip=compile_regex(allow_skip, "--allow-skip"),
            steps=parse_steps(steps),
            baseline_steps=parse_steps(baseline_steps) if baseline_steps is not None else None,
            names=compile_regex(names, "--names"),
            exclude=compile_regex(exclude, "--exclude"),
            name_map=load_name_map(name_map),
            override_dims=tuple(parse_override_dims(o) for o in override_dims),
            jobs=jobs,
            verify_checksums=verify_checksums,
            routing=RoutingOptions(enabled=routing) if moe_outputs is None else RoutingOptions(
                enabled=routing, moe_outputs=compile_pattern(moe_outputs, "--moe-outputs")),
            min_compared=min_compared,
            executor=executor,  # type: ignore[arg-type]  # checked in __post_init__
            address=address,
        )
