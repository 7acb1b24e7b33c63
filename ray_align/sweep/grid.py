"""`--grid KEY=V1,V2,...`: the axes of a sweep and the points they span.

A value is read as YAML, exactly like a `run` override (`dual.constraints.0.margin=0.1`), so lists and
booleans work; commas inside brackets or quotes do not split (`--grid sacpo.merge_q=[0.25,0.5],[0.75]`).
Several axes span their Cartesian product, first axis slowest. Each point is named by its values with the
shortest key suffixes that tell the axes apart: `margin=0.1`, or `margin=0.1,beta=0.5` for two axes. The name
is the point's folder under `<sweep>/points/`.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ray_align.config.load import ConfigError, parse_override
from ray_align.errors import UserError

_OPEN, _CLOSE = "[{(", "]})"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=,-]")


@dataclass(frozen=True)
class Axis:
    """One --grid option: a dotted config key and its values (parsed, and as typed)."""

    key: str
    values: tuple[Any, ...]
    texts: tuple[str, ...]


@dataclass(frozen=True)
class Point:
    """One combination of axis values: its folder name, {key: value}, and the `key=text` overrides."""

    name: str
    values: dict[str, Any]
    overrides: tuple[str, ...]


def split_values(text: str) -> list[str]:
    """Split on the commas that are not inside brackets, braces, parentheses or quotes."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return parts


def parse_axis(text: str) -> Axis:
    """``dual.constraints.0.margin=0.05,0.1`` → Axis; a malformed option is a UserError naming it."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not raw.strip():
        raise UserError(
            f"sweep: --grid {text!r}: expected KEY=V1,V2,..., e.g. dual.constraints.0.margin=0.05,0.1"
        )
    texts = split_values(raw)
    if any(t == "" for t in texts):
        raise UserError(f"sweep: --grid {text!r}: an empty value (two commas in a row, or a trailing comma)")
    values = []
    for value_text in texts:
        try:
            values.append(parse_override(f"{key}={value_text}")[1])
        except ConfigError as e:
            raise UserError(f"sweep: --grid {key}: {e}") from None
    seen = [t for i, t in enumerate(texts) if values[i] in values[:i]]
    if seen:
        raise UserError(f"sweep: --grid {key}: the value {seen[0]} is listed twice")
    return Axis(key, tuple(values), tuple(texts))


def parse_grid(texts: Sequence[str]) -> list[Axis]:
    """Every --grid option; at least one, and each key once."""
    if not texts:
        raise UserError(
            "sweep: give at least one --grid KEY=V1,V2,... (e.g. --grid dual.constraints.0.margin=0.05,0.1)"
        )
    axes = [parse_axis(t) for t in texts]
    keys = [a.key for a in axes]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise UserError(f"sweep: --grid {twice[0]} is given twice; list all its values in one option")
    return axes


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with: margin, 0.margin, ..."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(o != key and (o == suffix or o.endswith("." + suffix)) for o in keys):
                break
        out[key] = suffix
    return out


def expand(axes: Sequence[Axis]) -> list[Point]:
    """The Cartesian product of the axes (first axis slowest), each point named for its folder."""
    short = short_keys([a.key for a in axes])
    points = []
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        picks = [(a, i) for a, i in zip(axes, combo)]
        name = ",".join(f"{short[a.key]}={a.texts[i]}" for a, i in picks)
        points.append(
            Point(
                name=_UNSAFE.sub("_", name),
                values={a.key: a.values[i] for a, i in picks},
                overrides=tuple(f"{a.key}={a.texts[i]}" for a, i in picks),
            )
        )
    names = [p.name for p in points]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise UserError(f"sweep: two points would share the folder name {clash[0]!r}; write the values apart")
    return points
