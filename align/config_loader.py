"""Typed configs from YAML presets plus `key.sub=value` overrides.

A config is a tree of dataclasses. Loading is strict: an unknown key is an error that names
the file and line (or the override) and suggests the closest known key; a wrong type is an
error naming the field. Nothing heavy is imported here, so a bad config fails in milliseconds,
before any model loads.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml

from rank import typed
from rank.plugins import suggest
from rank.records import write_atomic

T = TypeVar("T")


class ConfigError(ValueError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads 1e-5 as a float (PyYAML follows YAML 1.1, which needs '1.0e-5')."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _safe_load(text: str):
    return yaml.load(text, Loader=_Loader)


def _lines(node: Any, prefix: str = "", out: dict | None = None) -> dict[str, int]:
    """Map dotted key paths to 1-based line numbers from a composed YAML node."""
    out = {} if out is None else out
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            path = f"{prefix}{k.value}"
            out[path] = k.start_mark.line + 1
            _lines(v, path + ".", out)
    return out


def load_yaml(path: str | Path) -> tuple[dict, dict[str, int]]:
    """Read a YAML mapping and the line of every key."""
    text = Path(path).read_text()
    try:
        data = _safe_load(text) or {}
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data, _lines(node) if node is not None else {}


def build(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass `cls` from a mapping (rank.typed); unknown keys are errors with a suggestion."""
    try:
        return typed.build(cls, data, where=where)
    except typed.FieldError as e:
        raise ConfigError(str(e)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'train.args.learning_rate=1e-5' -> (['train', 'args', 'learning_rate'], 1e-05)."""
    key, eq, raw = text.partition("=")
    if not eq or not key.strip():
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    try:
        value = _safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def apply_override(data: dict, path: list[str], value: Any) -> None:
    """Set `value` at `path`; a number indexes a list (`models.teachers.0.sample.n=8`)."""
    node: Any = data
    for i, p in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"override {'.'.join(path)}: {p!r} is not an index of a list of {len(node)}")
            if last:
                node[int(p)] = value
                return
            node = node[int(p)]
        elif isinstance(node, dict):
            if last:
                node[p] = value
                return
            node = node.setdefault(p, {})
        else:
            raise ConfigError(f"override {'.'.join(path)}: {path[i - 1]} is not a mapping")


def merge(base: dict, top: dict) -> dict:
    """Deep merge: mappings merge key by key, everything else is replaced."""
    out = dict(base)
    for k, v in top.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load(cls: type[T], files: list[str | Path], overrides: list[str] = (), base: dict | None = None) -> T:
    """Load `cls` from `base`, then YAML files (later ones win), then overrides; errors name file:line or
    the override."""
    data: dict = dict(base or {})
    for f in expand_defaults(files):
        layer, lines = load_yaml(f)
        layer.pop("defaults", None)
        try:
            build(cls, merge(data, layer))
        except ConfigError as e:
            key = str(e).split(":", 1)[0]
            line = lines.get(key.split("[")[0])
            raise ConfigError(f"{f}:{line}: {e}" if line else f"{f}: {e}") from None
        data = merge(data, layer)
    for o in overrides:
        path, value = parse_override(o)
        apply_override(data, path, value)
        try:
            build(cls, data)
        except ConfigError as e:
            raise ConfigError(f"override {o!r}: {e}") from None
    return build(cls, data)


def expand_defaults(files: list[str | Path], _seen: tuple = ()) -> list[Path]:
    """A file may start with `defaults: [other.yaml, ...]` (relative to itself): those load first."""
    out: list[Path] = []
    for f in map(Path, files):
        if f.resolve() in _seen:
            raise ConfigError(f"{f}: 'defaults' loop through {' -> '.join(map(str, _seen))}")
        data, _ = load_yaml(f)
        parents = data.get("defaults") or []
        if not isinstance(parents, list):
            raise ConfigError(f"{f}: 'defaults' must be a list of YAML paths")
        out += expand_defaults([f.parent / p for p in parents], _seen + (f.resolve(),))
        out.append(f)
    return out


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump(cfg: Any, path: str | Path) -> None:
    write_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def check_keys(target: type, data: dict, where: str) -> None:
    """Check a pass-through mapping against another library's dataclass (TrainingArguments, DPOConfig...)."""
    names = {f.name for f in dataclasses.fields(target)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}.{key}: not a field of {target.__name__}{suggest(key, names)}")
