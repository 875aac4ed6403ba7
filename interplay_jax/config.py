"""Config helpers every layer may use: parsing, presets, loading config files.

This is the bottom floor (it imports only ``errors`` and ml_collections). What a stage's config must
satisfy is checked by that stage's ``validate(config)`` (``interplay_jax/stages/<stage>.py``), which
runs before any compute; the shared parsing it relies on lives here:

- :func:`require` raises :class:`ConfigError` (one line) unless a condition holds;
- :func:`parse_ops` ("2-20", "2,5,11-14"), :func:`parse_buckets` ("ID:2-10,OOD-edge:11-14"),
  :func:`parse_list` ("a, b" or a tuple);
- :func:`parse_preset`: the ONE preset syntax of ``configs/*.py`` (``--config=configs/x.py:word,word``);
  every word must belong to a group, unknown words are errors that list the valid ones;
- :func:`load_config` (``"pretrain.py:base,cpu"`` with overrides, as the command line builds it) and
  :func:`load_module` (a Python file by path: configs/ and experiments/ files).
"""
from __future__ import annotations

import contextlib
import importlib.util
import pathlib
import sys
from typing import Any, Mapping, Sequence

import ml_collections

from interplay_jax.errors import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO / "configs"
MIN_OP, MAX_OP = 2, 30


def require(cond: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``cond``."""
    if not cond:
        raise ConfigError(message)


def as_dict(value) -> Any:
    """A ConfigDict (or anything with ``to_dict``) as plain Python; other values unchanged."""
    return value.to_dict() if hasattr(value, "to_dict") else value


def parse_list(spec) -> list[str]:
    """``"a, b,c"`` or ``("a", "b")`` -> ["a", "b", "c"] (blank entries dropped)."""
    parts = spec if isinstance(spec, (list, tuple)) else str(spec or "").split(",")
    return [str(p).strip() for p in parts if str(p).strip()]


def parse_ops(spec) -> list[int]:
    """``"2-20"`` / ``"2,5,11-14"`` / ``[2, 5]`` -> sorted ops; ConfigError on anything else."""
    ops = set()
    for part in parse_list(spec):
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ConfigError(f"bad op list {spec!r}: {part!r} is not an op or a range like 2-10") from None
        require(MIN_OP <= a <= b <= MAX_OP, f"bad op range {part!r} in {spec!r}: ops must be "
                                            f"{MIN_OP}..{MAX_OP}, low <= high")
        ops.update(range(a, b + 1))
    require(bool(ops), f"op list {spec!r} is empty")
    return sorted(ops)


def parse_buckets(spec) -> dict[str, tuple[int, int]]:
    """``"ID:2-10,OOD-edge:11-14"`` -> {"ID": (2, 10), ...} (inclusive op ranges, in the given order)."""
    out = {}
    for part in parse_list(spec):
        name, sep, rng = part.rpartition(":")
        lo, sep2, hi = rng.partition("-")
        try:
            a, b = int(lo), int(hi) if sep2 else int(lo)
        except ValueError:
            a = b = None
        require(bool(sep) and bool(name) and a is not None and a <= b,
                f"bad bucket {part!r} in buckets={spec!r}; expected NAME:LO-HI, e.g. ID:2-10")
        require(name not in out, f"bucket {name!r} given twice in buckets={spec!r}")
        out[name] = (a, b)
    require(bool(out), f"buckets={spec!r} is empty")
    return out


# ----------------------------------------------------------------------------------------- presets


def parse_preset(arg: str | None, what: str, **groups: tuple[Sequence, Any]) -> dict[str, Any]:
    """The preset words of ``--config=configs/<what>:<word>,<word>`` -> {group: word}.

    ``groups``: ``name=(choices, default)``; ``choices`` holds words and/or compiled regular
    expressions (a word matches a pattern when the whole word matches). Every word must match exactly
    one group, each group at most once; a group not named takes its default. An unknown word is a
    ConfigError listing the valid words, e.g.::

        parse_preset("hard5,paper", "pretrain.py", mixture=(MIXTURES, "base"), scale=(SCALES, "cpu"))
        -> {"mixture": "hard5", "scale": "paper"}
    """
    out = {name: default for name, (_, default) in groups.items()}
    named: dict[str, str] = {}
    for word in parse_list(arg or ""):
        hits = [name for name, (choices, _) in groups.items() if _matches(word, choices)]
        if not hits:
            valid = "; ".join(f"{name}: {_describe(choices)}" for name, (choices, _) in groups.items())
            raise ConfigError(f"{what}: unknown preset word {word!r}; valid words are {valid}")
        name = hits[0]
        require(name not in named, f"{what}: preset words {named.get(name)!r} and {word!r} both set {name}")
        named[name] = word
        out[name] = word
    return out


def _matches(word: str, choices: Sequence) -> bool:
    return any(word == c if isinstance(c, str) else bool(c.fullmatch(word)) for c in choices)


def _describe(choices: Sequence) -> str:
    return ", ".join(c if isinstance(c, str) else f"<{c.pattern}>" for c in choices)


# ----------------------------------------------------------------------------------------- loading


def load_module(path, name: str | None = None):
    """Import a Python file by path (configs/, experiments/): a fresh module object each call."""
    path = pathlib.Path(path)
    require(path.is_file(), f"no such file {path}")
    module_name = name or f"_interplay_{path.parent.name}_{path.stem}".replace("-", "_").replace(".", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module          # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def config_path(name: str) -> pathlib.Path:
    """``"pretrain.py"`` -> the repo's configs/pretrain.py; a path with a directory part is taken as is."""
    p = pathlib.Path(name)
    if p.parent != pathlib.Path(".") or p.is_file():
        return p
    return CONFIGS_DIR / p


def load_config(spec: str, overrides: Mapping[str, Any] | None = None, lock: bool = True):
    """Build a config as ``--config=<spec> --config.key=value ...`` would.

    ``spec``: ``"pretrain.py:base,cpu"`` (a file of configs/) or ``"path/to/x.py[:preset]"``.
    ``overrides``: dotted keys -> values (see :func:`override`).
    """
    file, _, arg = str(spec).partition(":")
    module = load_module(config_path(file))
    config = module.get_config(arg or None)
    for key, value in (overrides or {}).items():
        override(config, key, value)
    if lock:
        config.lock()
    return config


def override(config, key: str, value, where: str = "") -> None:
    """Set a dotted field of an existing config (an unknown key is a ConfigError). A number given
    for a float field becomes a float; a list / tuple given for a string field is joined with commas."""
    node = config
    parts = key.split(".")
    for p in parts[:-1]:
        require(p in node and isinstance(node[p], ml_collections.ConfigDict),
                f"{where}config has no field {key!r}")
        node = node[p]
    require(parts[-1] in node, f"{where}config has no field {key!r}")
    old = node[parts[-1]]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    elif isinstance(old, str) and not isinstance(value, str):
        value = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else str(value)
    with config.unlocked() if config.is_locked else contextlib.nullcontext():
        node[parts[-1]] = value
