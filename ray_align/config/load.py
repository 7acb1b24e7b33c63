"""Load a job file, apply dotted command-line overrides, validate, and explain errors by key path.

The reader is stricter than plain YAML: a key given twice is refused (YAML keeps the last one silently), an
empty file is refused (it would run every default), and a file that is not UTF-8 text gets a message.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ray_align.config.schema import JobConfig

QUICKSTART = Path(__file__).resolve().parents[1] / "assets" / "quickstart.yaml"


class ConfigError(ValueError):
    """A job configuration that cannot run. The message lists every problem with its key path."""


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, key: Any, line: int, first: int):
        super().__init__(f"line {line}: key '{key}' is given twice (first on line {first}); keep one")


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        first: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                seen = first.setdefault(key, key_node)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if seen is not key_node:
                raise _DuplicateKey(key, key_node.start_mark.line + 1, seen.start_mark.line + 1)
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML text, refusing duplicate keys; ``source`` names the text in the message."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except _DuplicateKey as e:
        raise ConfigError(f"{source}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {e}") from None


def read_text_file(path: Path, what: str = "job file") -> str:
    """The UTF-8 text of ``path``; a missing, unreadable or binary file is a ConfigError naming it."""
    if path.is_dir():
        raise ConfigError(f"{what} {path} is a directory; give a YAML file")
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
            "save it as UTF-8 YAML"
        ) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """``dual.lr=0.05`` -> (["dual", "lr"], 0.05). The value is read as YAML, so lists and booleans work."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}': expected KEY.PATH=VALUE, for example dual.lr=0.05")
    try:
        value = yaml.load(raw, Loader=_StrictLoader) if raw != "" else ""
    except _DuplicateKey as e:
        raise ConfigError(f"override '{text}': {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{text}': value is not valid YAML ({e.__class__.__name__})") from None
    return key.split("."), value


def apply_override(tree: dict[str, Any], path: list[str], value: Any) -> None:
    """Set ``value`` at ``path``, creating sections; list items are addressed by index (dual.constraints.0.margin)."""
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        if isinstance(node, list):
            node = node[_index(node, part, path[: i + 1])]
            continue
        if node.get(part) is None:
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        node[_index(node, last, path)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"override {'.'.join(path)}: '{'.'.join(path[:-1])}' is a value, not a section")


def _index(items: list, part: str, path: list[str]) -> int:
    if not part.isdigit() or int(part) >= len(items):
        raise ConfigError(
            f"override {'.'.join(path)}: '{part}' is not an index of a list of {len(items)} items"
        )
    return int(part)


def _accepted_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """Field names of the section that holds ``loc`` (for 'unknown key' messages)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _section_type(field.annotation)
        if current is None:
            return []
    return sorted(getattr(current, "model_fields", {}))


def _section_type(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _section_type(arg)
        if found is not None:
            return found
    return None


def format_errors(error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
        path = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            accepted = ", ".join(_accepted_keys(JobConfig, loc))
            lines.append(f"{path}: unknown key; accepted keys here: {accepted}")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            got = "" if err["type"] in {"value_error", "missing"} else f" (got {err.get('input')!r})"
            lines.append(f"{path}: {msg}{got}")
    return "invalid job configuration:\n" + "\n".join(f"  - {line}" for line in lines)


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> JobConfig:
    """Read ``path`` (or the built-in quickstart job when None), apply overrides, validate. Raises ConfigError."""
    path = Path(QUICKSTART if path is None else path)
    tree = load_yaml(read_text_file(path), str(path))
    if tree is None or tree == {}:
        raise ConfigError(
            f"job file {path} is empty; write the settings that differ from the defaults "
            "(at least `algorithm:` and `models:`), or run without a file for the built-in job"
        )
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(tree).__name__}")
    for text in overrides:
        key_path, value = parse_override(text)
        apply_override(tree, key_path, value)
    try:
        return JobConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None


def dump_config(config: JobConfig) -> str:
    """The resolved configuration as YAML (what `ray-align check` prints and what a run saves beside its outputs)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
