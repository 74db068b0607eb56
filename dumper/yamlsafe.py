"""The one YAML loader for user files (patches, thresholds, name maps).

``yaml.SafeLoader`` never constructs Python objects, but it still expands
aliases: a few hundred bytes of nested ``&a [*a, *a, ...]`` ("billion laughs")
make any code that walks the result run for ever. This loader refuses more than
a handful of aliases, deep nesting and huge documents, so that every bad file
ends in a clean, typed error. yaml is imported only when a file is read: this
module is safe to import from inside an engine.
"""

from __future__ import annotations

from typing import Any

from dumper.errors import DumpcmpError

MAX_ALIASES = 32
MAX_NODES = 200_000
MAX_DEPTH = 64
MAX_BYTES = 8 << 20


class YamlLimitError(DumpcmpError):
    """A YAML document exceeds what a configuration file reasonably needs."""


def guarded_loader_class() -> type:
    import yaml

    class GuardedSafeLoader(yaml.SafeLoader):
        def __init__(self, stream: Any) -> None:
            if isinstance(stream, (str, bytes)) and len(stream) > MAX_BYTES:
                raise YamlLimitError(f"YAML document of {len(stream)} bytes is larger than {MAX_BYTES} bytes")
            super().__init__(stream)
            self._aliases = 0
            self._nodes = 0
            self._depth = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                self._aliases += 1
                if self._aliases > MAX_ALIASES:
                    mark = self.peek_event().start_mark
                    raise YamlLimitError(
                        f"line {mark.line + 1}: more than {MAX_ALIASES} YAML aliases (*name); "
                        "write the values out instead"
                    )
            self._nodes += 1
            if self._nodes > MAX_NODES:
                raise YamlLimitError(f"more than {MAX_NODES} YAML nodes")
            self._depth += 1
            try:
                if self._depth > MAX_DEPTH:
                    mark = self.peek_event().start_mark
                    raise YamlLimitError(f"line {mark.line + 1}: YAML nested deeper than {MAX_DEPTH} levels")
                return super().compose_node(parent, index)
            finally:
                self._depth -= 1

    return GuardedSafeLoader


_LOADER: type | None = None


def loader_class() -> type:
    global _LOADER
    if _LOADER is None:
        _LOADER = guarded_loader_class()
    return _LOADER


def safe_load(text: str) -> Any:
    """``yaml.safe_load`` with the limits above (raises yaml.YAMLError or YamlLimitError)."""
    import yaml

    return yaml.load(text, Loader=loader_class())  # noqa: S506 - a SafeLoader subclass


def compose(text: str) -> Any:
    import yaml

    return yaml.compose(text, Loader=loader_class())


def load_document(text: str, path: str, error: type[DumpcmpError]) -> tuple[Any, Any]:
    """``(data, root node)`` of a user's YAML file (the node keeps line numbers for messages).

    Every problem becomes ``error`` with one line: ``path:line: invalid YAML (...)`` or the
    limit that was hit.
    """
    import yaml

    try:
        return safe_load(text), compose(text)
    except YamlLimitError as exc:
        raise error(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        raise error(f"{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})") from None
