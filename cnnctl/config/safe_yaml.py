"""The one YAML reader for files cnnctl is given (configs, tune spaces, a run folder's config.yaml) and ``--set`` values.

Safe loading, plus limits checked while composing, before anything walks the expanded structure: size, alias
expansion (the "billion laughs"), nesting, recursive aliases and a key given twice. Errors carry line and column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cnnctl.config.text import clip, short_repr
from cnnctl.errors import ConfigError

# Limits on a YAML file (config or tune space). The largest bundled config is a few hundred values; these leave
# room for any hand-written file while refusing the "billion laughs" alias bomb (536 bytes that expand to 387
# million values) before anything walks the expanded structure.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_VALUES = 100_000  # scalars, lists and mappings, counting each alias as a copy of what it refers to
MAX_YAML_CHARS = 4 * MAX_YAML_BYTES  # characters of all scalars, aliases expanded
MAX_YAML_DEPTH = 100


class _LimitedLoader(yaml.SafeLoader):
    """The safe loader, plus what a config never needs refused while composing, before anything is built:
    alias expansion past MAX_YAML_VALUES / MAX_YAML_CHARS, nesting past MAX_YAML_DEPTH, recursive aliases and a key
    given twice in one mapping (where the last would silently win)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, characters) once aliases are expanded
        self._path: list[str] = []
        self._aliased = False  # whether an alias (*name) was met: a too-large value then says so

    def _refuse(self, problem: str, mark: Any) -> yaml.MarkedYAMLError:
        return yaml.composer.ComposerError(None, None, problem, mark)

    def _where(self) -> str:
        return ".".join(self._path[1:]).replace(".[", "[")

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            node = super().compose_node(parent, index)
            self._aliased = True
            if id(node) not in self._expanded:
                raise self._refuse("this alias refers to a list or mapping that contains it (a recursive structure); "
                                   "a config is a tree: write the values out", mark)
            return node
        if isinstance(index, yaml.ScalarNode):  # the key of a mapping value; an int: the position in a list
            self._path.append(clip(index.value, 40))
        else:
            self._path.append(f"[{index}]" if isinstance(index, int) else "?")
        if len(self._path) > MAX_YAML_DEPTH:
            raise self._refuse(f"nested more than {MAX_YAML_DEPTH} levels deep; a config is a shallow tree",
                               self.peek_event().start_mark)
        try:
            node = super().compose_node(parent, index)
            values, chars = 1, len(node.value) if isinstance(node, yaml.ScalarNode) else 0
            children = (node.value if isinstance(node, yaml.SequenceNode)
                        else [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else [])
            for child in children:
                v, c = self._expanded[id(child)]
                values, chars = values + v, chars + c
            if values > MAX_YAML_VALUES or chars > MAX_YAML_CHARS:
                size = f"{values:,} values" if values > MAX_YAML_VALUES else f"{chars:,} characters"
                where = f" ({self._where()})" if self._where() else ""
                aliases = " once its aliases (*name) are expanded" if self._aliased else ""
                mend = "; write the values out instead of nesting aliases" if self._aliased else ""
                raise self._refuse(f"this value{where} holds {size}{aliases}, more than a config may hold "
                                   f"({MAX_YAML_VALUES:,} values, {MAX_YAML_CHARS:,} characters){mend}",
                                   node.start_mark)
            self._expanded[id(node)] = (values, chars)
            return node
        finally:
            self._path.pop()

    def compose_mapping_node(self, anchor: Any) -> Any:
        node = super().compose_mapping_node(anchor)
        first: dict[tuple[str, str], Any] = {}
        for key, _ in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *base' merges may be overridden by the mapping's own keys: that is what they are for
            seen = first.setdefault((key.tag, key.value), key)
            if seen is not key:
                dotted = ".".join([*self._path[1:], clip(key.value, 40)]).replace(".[", "[")
                same_line = seen.start_mark.line == key.start_mark.line
                at = [f"line {k.start_mark.line + 1}" + (f", column {k.start_mark.column + 1}" if same_line else "")
                      for k in (seen, key)]
                raise self._refuse(f"key {dotted!r} is given twice ({at[0]} and {at[1]}); the second would silently "
                                   "replace the first: keep one", key.start_mark)
        return node

    def construct_yaml_int(self, node: Any) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # more digits than Python converts (4300)
            raise yaml.constructor.ConstructorError(
                None, None, f"an integer of {len(node.value):,} digits is too long to be a config value",
                node.start_mark) from None


_LimitedLoader.add_constructor("tag:yaml.org,2002:int", _LimitedLoader.construct_yaml_int)


def load_limited(text: str) -> Any:
    """One YAML document from ``text``, within the limits of ``_LimitedLoader``."""
    loader = _LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def yaml_problem(e: yaml.YAMLError, text: str) -> str:
    """A YAML error in ``text`` as 'line L, column C: problem'."""
    if isinstance(e, yaml.reader.ReaderError) and isinstance(e.character, int):  # a character YAML never allows
        before = text[:e.position]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        return (f"line {line}, column {column}: a control character (#x{e.character:04x}) that YAML does not allow; "
                "remove it")
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = e.problem or e.context or "invalid YAML"
        if isinstance(e, yaml.constructor.ConstructorError) and "tag" in problem:
            problem += " (cnnctl loads YAML safely: tags such as !!python/object are refused; use plain values)"
        return where + problem
    return f"invalid YAML: {short_repr(str(e), 200)}"


def read_yaml(path: Path) -> dict[str, Any]:
    """Safe-load one YAML mapping (a config or a tune space) within the limits above; errors carry line and column."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)  # read no more than the limit: the file may be huge, or endless
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read: {e}", file=str(path)) from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"larger than {MAX_YAML_BYTES:,} bytes, far more than any config or space file; "
                          "is this the right file?", file=str(path))
    try:
        data = load_limited(text)
    except yaml.YAMLError as e:  # nesting too deep among them: refused at MAX_YAML_DEPTH, far from Python's limit
        raise ConfigError(yaml_problem(e, text), file=str(path)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping (key: value), not a {type(data).__name__}", file=str(path))
    return data
