"""Patch files: YAML in, typed and validated specs out (nothing is imported or executed).

The schema (see docs/patches.md) is SGLang's source-patcher schema plus a few keys::

    description: optional free text
    patches:
      - target: package.module.Class.method
        tags: {layer: self.layer_id}        # dumps made during each call carry these
        step: true                          # each call advances the dumper's step when it ends
        preamble: "..."                     # SGLang: code run first in the function
        edits:
          - match: "exact line(s)"          # stripped line-by-line comparison, must occur once
            prepend: CODE | append: CODE | replacement: CODE
          - at: entry | return              # function entry / before every return (``__ret__``)
            prepend: CODE

CODE is a string of Python statements, a ``dump:`` mapping, or a list of both; a dump
mapping (``dump: NAME``, ``expr:``, ``dims:``, ``tags:``) becomes a ``dumper.dump`` call;
with ``graft: true`` it becomes ``EXPR = dumper.graft_point(...)``, a site that
``dumpcmp run --graft`` may replace with the baseline's value.
Every location kept here is the YAML file's line and column, so that errors in
injected code point at the patch file.
"""

from __future__ import annotations

import ast
import difflib
import keyword
import os
import textwrap
from typing import Any

from dumper.safeio import read_text
from patches.errors import PatchFileError

from patches.spec_types import (  # noqa: F401 - re-exported: callers import the records from patches.spec
    AT_ANCHORS,
    AtAnchor,
    DIMS_CHOICE_KEYS,
    DUMPER_GLOBAL,
    DUMP_KEYS,
    EDIT_KEYS,
    Edit,
    Location,
    Mode,
    PATCH_KEYS,
    PatchFile,
    RETURN_VALUE_NAME,
    Snippet,
    TOP_KEYS,
    Tag,
    TargetPatch,
)


def load_patch_file(path: str | os.PathLike[str]) -> PatchFile:
    """Read and validate one patch file; raises PatchFileError with file:line:column."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise PatchFileError(f"patch file {path} is a directory; pass the YAML files in it")
    try:
        text = read_text(path, what="patch file", error=PatchFileError)
    except FileNotFoundError:
        raise PatchFileError(f"patch file {path} does not exist") from None
    return parse_patch_text(text, path=path)


def parse_patch_text(text: str, *, path: str = "<string>") -> PatchFile:
    """Validate patch YAML given as text (``path`` is used in messages)."""
    import yaml

    from dumper import yamlsafe

    try:
        loader = yamlsafe.loader_class()(text)
        root = loader.get_single_node()
    except yamlsafe.YamlLimitError as exc:
        raise PatchFileError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise PatchFileError(_yaml_error_message(path, exc)) from None
    else:
        loader.dispose()
    return _Parser(path, loader).file(root)


def _yaml_error_message(path: str, exc: Exception) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc)
    context = getattr(exc, "context", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
    detail = f"{problem} ({context})" if context else problem
    return f"{where}: YAML error: {detail}"


class _Parser:
    """Walks the composed YAML nodes (which keep their marks) into specs."""

    def __init__(self, path: str, loader: Any) -> None:
        self.path = path
        self.loader = loader

    # ----------------------------------------------------------- helpers
    def loc(self, node: Any) -> Location:
        return Location(file=self.path, line=node.start_mark.line + 1, column=node.start_mark.column + 1)

    def fail(self, node: Any, message: str) -> PatchFileError:
        return PatchFileError(f"{self.loc(node)}: {message}")

    def mapping(self, node: Any, what: str, valid: tuple[str, ...]) -> dict[str, tuple[Any, Any]]:
        """``{key: (key_node, value_node)}``; unknown or repeated keys are errors."""
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping with keys {', '.join(valid)}")
        result: dict[str, tuple[Any, Any]] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            if key not in valid:
                hint = difflib.get_close_matches(str(key), valid, n=1)
                did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.fail(key_node, f"unknown key {key!r} in {what}{did_you_mean}; valid keys: {', '.join(valid)}")
            if key in result:
                raise self.fail(key_node, f"key {key!r} appears twice in {what}")
            result[key] = (key_node, value_node)
        return result

    def scalar(self, node: Any) -> Any:
        import yaml

        if not isinstance(node, yaml.ScalarNode):
            return None
        return self.loader.construct_object(node, deep=True)

    def string(self, node: Any, what: str, *, allow_empty: bool = False) -> str:
        value = self.scalar(node)
        if not isinstance(value, str):
            kind = type(value).__name__ if value is not None or _is_scalar(node) else "a list or mapping"
            raise self.fail(node, f"{what} must be a string, not {kind}")
        if not allow_empty and not value.strip():
            raise self.fail(node, f"{what} is empty")
        return value

    def snippet(self, node: Any, what: str, *, allow_empty: bool = False) -> Snippet:
        text = self.string(node, what, allow_empty=allow_empty)
        style = getattr(node, "style", None)
        # A block scalar's text starts on the line after its indicator.
        literal = style == "|"
        first_line = node.start_mark.line + 1 + (1 if style in ("|", ">") else 0)
        return Snippet(text=text, location=Location(file=self.path, line=first_line, column=node.start_mark.column + 1), literal=literal)

    # ----------------------------------------------------------- schema
    def file(self, root: Any) -> PatchFile:
        import yaml

        if root is None:
            raise PatchFileError(f"{self.path}: the file is empty; expected a 'patches:' list")
        keys = self.mapping(root, "the top level", TOP_KEYS)
        if "patches" not in keys:
            raise self.fail(root, "missing key 'patches' (a list of targets to patch)")
        description = None
        if "description" in keys:
            description = self.string(keys["description"][1], "description", allow_empty=True)
        patches_node = keys["patches"][1]
        if not isinstance(patches_node, yaml.SequenceNode) or not patches_node.value:
            raise self.fail(patches_node, "'patches' must be a non-empty list of {target: ..., edits: [...]} entries")
        patches = tuple(self.target_patch(node) for node in patches_node.value)
        return PatchFile(path=self.path, description=description, patches=patches)

    def target_patch(self, node: Any) -> TargetPatch:
        import yaml

        keys = self.mapping(node, "a patch", PATCH_KEYS)
        if "target" not in keys:
            raise self.fail(node, "a patch needs 'target: package.module.Class.method'")
        target_node = keys["target"][1]
        target = self.string(target_node, "target").strip()
        parts = target.split(".")
        if len(parts) < 2 or not all(part.isidentifier() for part in parts):
            raise self.fail(target_node, f"target {target!r} must be a dotted path module.function or module.Class.method")
        edits: tuple[Edit, ...] = ()
        if "edits" in keys:
            edits_node = keys["edits"][1]
            if not isinstance(edits_node, yaml.SequenceNode):
                raise self.fail(edits_node, "'edits' must be a list of {match: ..., prepend/append/replacement: ...} entries")
            edits = tuple(self.edit(item, index + 1, target) for index, item in enumerate(edits_node.value))
        tags: tuple[Tag, ...] = ()
        if "tags" in keys:
            tags = self.tags(keys["tags"][1], f"tags of {target}")
        step = False
        if "step" in keys:
            value = self.scalar(keys["step"][1])
            if not isinstance(value, bool):
                raise self.fail(keys["step"][1], "'step' must be true or false")
            step = value
        preamble = None
        if "preamble" in keys:
            preamble = self.snippet(keys["preamble"][1], "preamble")
            self.check_statements(preamble, f"preamble of {target}")
        if not (edits or tags or step or preamble):
            raise self.fail(node, f"patch of {target} does nothing; give 'edits', 'tags', 'step' or 'preamble'")
        return TargetPatch(target=target, edits=edits, tags=tags, step=step, preamble=preamble, location=self.loc(node))

    def edit(self, node: Any, index: int, target: str) -> Edit:
        keys = self.mapping(node, "an edit", EDIT_KEYS)
        where = f"edit {index} of {target}"
        if ("match" in keys) == ("at" in keys):
            raise self.fail(node, f"{where} needs exactly one anchor: 'match: <exact line(s)>' or 'at: entry|return'")
        modes = [mode for mode in ("prepend", "append", "replacement") if mode in keys]
        if len(modes) > 1:
            raise self.fail(node, f"{where} sets {' and '.join(modes)}; only one of prepend, append, replacement may be set")
        match = at = None
        if "match" in keys:
            match = self.string(keys["match"][1], f"'match' of {where}")
            # SGLang's schema: an edit with no mode replaces the match with nothing.
            mode = modes[0] if modes else "replacement"
        else:
            at_value = self.scalar(keys["at"][1])
            if at_value not in AT_ANCHORS:
                raise self.fail(keys["at"][1], f"'at' must be one of {', '.join(AT_ANCHORS)}, not {at_value!r}")
            at = at_value
            if modes != ["prepend"]:
                raise self.fail(
                    node,
                    f"{where} (at: {at}) takes 'prepend': the code to run "
                    + ("before the function's first statement" if at == "entry" else f"before every return, with the value in {RETURN_VALUE_NAME}"),
                )
            mode = "prepend"
        code: tuple[Snippet, ...]
        if mode == "replacement":
            code = (self.snippet(keys["replacement"][1], f"'replacement' of {where}", allow_empty=True),) if "replacement" in keys else ()
            # A replacement may be part of a statement; it is checked in place when applied.
        else:
            code = self.code(keys[mode][1], where, at_return=at == "return")
        return Edit(match=match, at=at, mode=mode, code=code, location=self.loc(node), index=index)

    def code(self, node: Any, where: str, *, at_return: bool) -> tuple[Snippet, ...]:
        import yaml

        items = node.value if isinstance(node, yaml.SequenceNode) else [node]
        if not items:
            raise self.fail(node, f"the code of {where} is an empty list")
        snippets = []
        for item in items:
            if isinstance(item, yaml.MappingNode):
                snippet = self.dump_entry(item, where, at_return=at_return)
            else:
                snippet = self.snippet(item, f"code of {where}")
                self.check_statements(snippet, where)
            snippets.append(snippet)
        return tuple(snippets)

    def dump_entry(self, node: Any, where: str, *, at_return: bool) -> Snippet:
        keys = self.mapping(node, "a dump entry", DUMP_KEYS)
        if "dump" not in keys:
            raise self.fail(node, "a dump entry needs 'dump: <name>' (and optionally expr, dims, tags)")
        name = self.string(keys["dump"][1], "'dump' (the dumped tensor's name)").strip()
        if "expr" in keys:
            expr = self.string(keys["expr"][1], f"'expr' of dump {name!r}").strip()
            self.check_expression(expr, keys["expr"][1], f"'expr' of dump {name!r}")
        elif at_return:
            expr = RETURN_VALUE_NAME
        elif name.isidentifier() and not keyword.iskeyword(name):
            expr = name
        else:
            raise self.fail(node, f"dump {name!r} needs 'expr:' (the name is not a variable name)")
        arguments = [repr(name), expr]
        if "dims" in keys:
            arguments.append(f"dims={self.dims(keys['dims'][1], name)}")
        if "tags" in keys:
            for tag in self.tags(keys["tags"][1], f"tags of dump {name!r}"):
                if tag.name == "dims":
                    raise PatchFileError(f"{tag.location}: 'dims' is not a tag; put it beside 'dump:'")
                arguments.append(f"{tag.name}={tag.expr}")
        # NOTE: the arguments (expr, tags, dims) are evaluated only while dumping is on,
        # inside dumper.dump_site: an expression the engine object cannot evaluate (an
        # attribute it does not have) warns once and turns this site off, instead of
        # raising in the engine on every call.
        site = repr(str(self.loc(node)))
        text = f"dumper.enabled and dumper.dump_site({site}, lambda: dumper.dump({', '.join(arguments)}))"
        if "graft" in keys and self.graft_flag(keys["graft"][1], name, expr):
            # The engine goes on with what graft_point returns: the baseline's value when
            # `dumpcmp run --graft` names this site, else the value itself.
            text = (f"{expr} = dumper.graft_site({site}, lambda: dumper.graft_point({', '.join(arguments)}), {expr}) "
                    f"if dumper.enabled else {expr}")
        return Snippet(text=text, location=self.loc(node))

    def dims(self, node: Any, name: str) -> str:
        """The code of a dump's ``dims=`` argument: a string, or a choice on the engine's state.

        ``{when: PATH, then: DIMS, else: DIMS}`` picks the dims at the dump site from
        the truth of PATH, a variable or attribute path (``self._fused_output_is_reduced``,
        ``fused_output_is_reduced``): its first name is injected as code, the rest is
        looked up with getattr by ``dumper.dims_when``; no call, operator or other code.
        """
        import yaml

        what = f"'dims' of dump {name!r}"
        if not isinstance(node, yaml.MappingNode):
            return repr(self.string(node, what).strip())
        keys = self.mapping(node, f"{what} (a choice on the engine's state)", DIMS_CHOICE_KEYS)
        missing = [key for key in DIMS_CHOICE_KEYS if key not in keys]
        if missing:
            raise self.fail(node, f"{what} needs when, then and else (missing: {', '.join(missing)}), e.g. "
                            "{when: self._fused_output_is_reduced, then: 't h # tp:replicated', else: 't h # tp:partial'}")
        path = self.string(keys["when"][1], f"'when' of {what}").strip()
        parts = path.split(".")
        if not all(part.isidentifier() and not keyword.iskeyword(part) for part in parts):
            raise self.fail(keys["when"][1], f"'when' of {what} must be a variable or attribute path such as "
                            f"self._fused_output_is_reduced (names joined by dots), not {path!r}")
        from dumper.dims import parse_dims
        from dumper.errors import DimsSyntaxError

        choices = []
        for key in ("then", "else"):
            text = self.string(keys[key][1], f"'{key}' of {what}").strip()
            try:
                parse_dims(text)
            except DimsSyntaxError as exc:
                raise self.fail(keys[key][1], f"'{key}' of {what}: {exc}") from None
            choices.append(text)
        return f"dumper.dims_when({parts[0]}, {'.'.join(parts[1:])!r}, {choices[0]!r}, {choices[1]!r})"

    def graft_flag(self, node: Any, name: str, expr: str) -> bool:
        value = self.scalar(node)
        if not isinstance(value, bool):
            raise self.fail(node, f"'graft' of dump {name!r} must be true or false")
        target = ast.parse(expr, mode="eval").body
        if value and not isinstance(target, (ast.Name, ast.Attribute, ast.Subscript)):
            raise self.fail(node, f"dump {name!r} has graft: true but its expr {expr!r} cannot be assigned to; "
                            "a graftable site dumps a variable (e.g. expr: hidden), so the engine can go on with the graft")
        return value

    def tags(self, node: Any, what: str) -> tuple[Tag, ...]:
        import yaml

        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} must be a mapping of tag name to Python expression, e.g. {{layer: self.layer_id}}")
        tags = []
        for key_node, value_node in node.value:
            name = self.scalar(key_node)
            if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
                raise self.fail(key_node, f"tag name {name!r} in {what} must be a Python identifier")
            value = self.scalar(value_node)
            if isinstance(value, str):
                expr = value.strip()
                self.check_expression(expr, value_node, f"tag {name!r}")
            elif isinstance(value, (bool, int, float)):
                expr = repr(value)
            else:
                raise self.fail(value_node, f"tag {name!r} must be a Python expression (string) or a number")
            tags.append(Tag(name=name, expr=expr, location=self.loc(value_node)))
        return tuple(tags)

    # ----------------------------------------------------------- code checks
    def check_expression(self, expr: str, node: Any, what: str) -> None:
        try:
            ast.parse(expr, mode="eval")
        except SyntaxError as exc:
            raise self.fail(node, f"syntax error in {what} {expr!r}: {exc.msg}") from None

    def check_statements(self, snippet: Snippet, where: str) -> None:
        try:
            ast.parse(textwrap.dedent(snippet.text))
        except SyntaxError as exc:
            line = snippet.yaml_line((exc.lineno or 1) - 1)
            raise PatchFileError(f"{self.path}:{line}: syntax error in injected code ({where}): {exc.msg}") from None


def _is_scalar(node: Any) -> bool:
    import yaml

    return isinstance(node, yaml.ScalarNode)
