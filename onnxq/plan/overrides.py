"""The overrides file (``--overrides FILE``): TOML rules that change annotation's decisions
for the nodes or tensors they match, each error naming its line.

    [[override]]
    node = "/blocks/blocks.3/*"   # glob on node names      } one or more matchers;
    op = "Conv"                   # glob on op types        } a node must match all given
    tensor = "x*"                 # glob on tensor names (instead of node/op)
    weights = "int8"              # the matched weights' type
    activations = "uint16"        # the type of the activations the matched nodes read
    granularity = "per-tensor"    # weights per tensor, per channel, or per block along K
                                  # (rank-2 MatMul/Gemm weights; --block-size, else 32)
    skip = true                   # the matched nodes stay float

Rules apply in file order; a later rule wins over an earlier one.  An activation shares its
grid with its qparams group (pass-through ops, Concat), so retyping one retypes the group.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import tomllib
from pathlib import Path
from typing import NoReturn

from onnxq.errors import OnnxqError
from onnxq.numerics.affine import QTYPES

MATCHERS = ("node", "op", "tensor")
ACTIONS = ("weights", "activations", "granularity", "skip")
GRANULARITY = ("per-channel", "per-tensor", "per-block")
TABLE = "override"


@dataclasses.dataclass(frozen=True)
class OverrideRule:
    """One ``[[override]]`` table: what it matches, what it sets, and where it was written."""

    source: str
    line: int
    node: str | None = None
    op: str | None = None
    tensor: str | None = None
    weights: str | None = None
    activations: str | None = None
    granularity: str | None = None
    skip: bool = False

    @property
    def where(self) -> str:
        """``FILE line N``, as messages and the report name the rule."""
        return f"{self.source} line {self.line}"

    def matches_node(self, name: str, op_type: str) -> bool:
        """Whether the rule's node/op globs match a node (a tensor rule matches none)."""
        if self.tensor is not None:
            return False
        return ((self.node is None or fnmatch.fnmatchcase(name, self.node))
                and (self.op is None or fnmatch.fnmatchcase(op_type, self.op)))

    def matches_tensor(self, name: str) -> bool:
        """Whether the rule's tensor glob matches ``name``."""
        return self.tensor is not None and fnmatch.fnmatchcase(name, self.tensor)

    def describe(self) -> str:
        """The rule as one line of TOML-like text (for the report)."""
        parts = [f"{key} = {value!r}" for key in (*MATCHERS, *ACTIONS[:3])
                 if (value := getattr(self, key)) is not None]
        return ", ".join([*parts, *(["skip = true"] if self.skip else [])])

    def to_toml(self) -> str:
        """The rule as an ``[[override]]`` table."""
        lines = [f"[[{TABLE}]]"]
        for key in (*MATCHERS, *ACTIONS[:3]):
            value = getattr(self, key)
            if value is not None:
                lines.append(f"{key} = {toml_string(value)}")
        if self.skip:
            lines.append("skip = true")
        return "\n".join(lines)


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped) + '"'


RULE_HEADER = re.compile(rf"\[\[\s*{TABLE}\s*\]\]\s*(#.*)?")
KEY = re.compile(r"([A-Za-z_][\w-]*)\s*=")


def _rule_lines(text: str) -> list[tuple[int, dict[str, int]]]:
    """For each ``[[override]]`` header in order: its line and the line of each key in it."""
    rules: list[tuple[int, dict[str, int]]] = []
    current: dict[str, int] | None = None
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if RULE_HEADER.fullmatch(stripped):
            current = {}
            rules.append((number, current))
        elif stripped.startswith("["):
            current = None  # another table: its keys belong to no rule
        elif current is not None and (key := KEY.match(stripped)):
            current.setdefault(key.group(1), number)
    return rules


def _rule(source: str, entries: object, line: int, keys: dict[str, int]) -> OverrideRule:
    def fail(message: str, key: str | None = None) -> NoReturn:
        raise OnnxqError(f"{source} line {keys.get(key, line)}: {message}")

    if not isinstance(entries, dict):
        fail(f"each [[{TABLE}]] must be a table")
    for key in entries:
        if key not in (*MATCHERS, *ACTIONS):
            fail(f"unknown key {key!r}; a rule takes {', '.join(MATCHERS)} (what it "
                 f"matches) and {', '.join(ACTIONS)} (what it sets)", key)
    for key in (*MATCHERS, *ACTIONS[:3]):
        if key in entries and not isinstance(entries[key], str):
            fail(f"{key} must be a string (got {entries[key]!r})", key)
    if "skip" in entries and not isinstance(entries["skip"], bool):
        fail(f"skip must be true or false (got {entries['skip']!r})", "skip")
    if not any(key in entries for key in MATCHERS):
        fail("the rule matches nothing: give node = \"GLOB\", op = \"OP\" or tensor = "
             "\"GLOB\"")
    if "tensor" in entries and ("node" in entries or "op" in entries):
        fail("tensor matches weights and activations by name; give it alone, without "
             "node or op", "tensor")
    if not any(entries.get(key) for key in ACTIONS):
        fail("the rule sets nothing: give weights, activations, granularity or skip = true")
    if entries.get("skip") and any(key in entries for key in ACTIONS[:3]):
        fail("skip keeps the nodes float; it cannot also set types or granularity", "skip")
    if entries.get("skip") and "tensor" in entries:
        fail("skip keeps nodes float: match them with node or op, not tensor", "skip")
    for key in ("weights", "activations"):
        if key in entries and (entries[key] not in QTYPES or entries[key] == "int32"):
            fail(f"{key} = {entries[key]!r} is no type; use one of "
                 f"{', '.join(k for k in QTYPES if k != 'int32')}", key)
    if "granularity" in entries and entries["granularity"] not in GRANULARITY:
        fail(f"granularity = {entries['granularity']!r}; use {' or '.join(GRANULARITY)}",
             "granularity")
    return OverrideRule(source, line, **entries)


def parse_overrides(text: str, source: str) -> tuple[OverrideRule, ...]:
    """The rules of an overrides file's ``text``; a bad one is an OnnxqError naming its
    line."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise OnnxqError(f"{source}: {str(exc).splitlines()[0]}: fix the TOML there") from None
    unknown = sorted(set(data) - {TABLE})
    if unknown:
        line = next((n for n, line in enumerate(text.splitlines(), 1)
                     if line.strip().lstrip("[").startswith(unknown[0])), 1)
        raise OnnxqError(f"{source} line {line}: unknown entry {unknown[0]!r}; write each "
                         f"rule as an [[{TABLE}]] table")
    rules = data.get(TABLE, [])
    if not isinstance(rules, list):
        raise OnnxqError(f"{source}: write each rule as an [[{TABLE}]] table (double "
                         "brackets)")
    headers = _rule_lines(text)  # inline tables have no header: their line is the first
    return tuple(_rule(source, entries, *(headers[index] if index < len(headers) else (1, {})))
                 for index, entries in enumerate(rules))


def read_overrides(path: str | Path) -> tuple[OverrideRule, ...]:
    """The rules of the overrides file at ``path`` (``--overrides``), or one error line."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise OnnxqError(f"cannot read --overrides {path}: {reason}") from None
    return parse_overrides(text, Path(path).name)
