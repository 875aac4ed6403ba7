"""A policy to sample from: one of our run directories or an HF Qwen2 directory, loaded with its
model config and tokenizer.

* a run dir (``lineage.json`` + orbax checkpoints, latest or a given step): the model is the one the
  run recorded (an RL run inherits its parent's); its tokenizer is the one its config names;
* an HF directory (``config.json`` + safetensors / pytorch_model.bin + ``tokenizer.json``), e.g. the
  study's released checkpoints: the architecture comes from its config.json.
A missing or wrong-shaped checkpoint is one ConfigError line; a corrupt one (unreadable, or failing
its digest) one CorruptCheckpoint line naming it.

The same two kinds of parent serve the training stages' ``init_from``: ``parent_model_config`` (the
parent's architecture), ``init_model_config`` (the model a pretrain / midtrain stage builds) and
``load_params`` (the parent's params, placed with the stage's shardings).
"""
from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
from flax import nnx

from interplay_jax import checkpoint as ckpt
from interplay_jax.errors import ConfigError, UserError
from interplay_jax.model import hf
from interplay_jax.model.qwen2 import RUNTIME_FIELDS, ModelConfig, abstract_model, model_config_from_dict
from interplay_jax.task.tokenizer import Tokenizer, default_tokenizer_path


@dataclasses.dataclass
class Policy:
    name: str
    graphdef: object
    params: object
    cfg: ModelConfig
    tokenizer: Tokenizer
    source: str  # "hf" | "run"
    step: int | None = None


def is_hf_dir(p) -> bool:
    p = pathlib.Path(p)
    return (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin")))


def run_model_config(run_dir, **overrides) -> ModelConfig:
    """The model a run recorded in its lineage: the resolved model (an RL run inherits its parent's)
    or the run config's ``model`` block."""
    lineage = ckpt.read_lineage(run_dir)
    if lineage.get("model"):
        return ModelConfig(**{**lineage["model"], **overrides}).validate()
    spec = dict((lineage.get("config") or {}).get("model") or {})
    if not spec.get("preset"):
        raise ConfigError(f"{run_dir}/lineage.json records no model config")
    return model_config_from_dict({**spec, **overrides})


def parent_model_config(path, **overrides) -> ModelConfig:
    """The architecture of a parent checkpoint: an HF directory's config.json, or the model a run
    dir (or one of its checkpoints) recorded in its lineage; ``overrides`` set fields."""
    if is_hf_dir(path):
        return hf.read_config(path, **overrides)
    run_dir, _ = ckpt.resolve_checkpoint(path)
    return run_model_config(run_dir, **overrides)


def init_model_config(spec, init_from: str = "") -> ModelConfig:
    """The model a pre-/mid-training stage builds from its ``model`` block ``spec``. When
    ``init_from`` is an HF directory the architecture is that checkpoint's (its config.json, so a
    released checkpoint of either shape trains without naming a preset) and only the block's
    runtime fields (dtype, param_dtype, remat, attention) apply; otherwise the block as given."""
    if init_from and is_hf_dir(init_from):
        block = spec.to_dict() if hasattr(spec, "to_dict") else dict(spec)
        return hf.read_config(init_from, **{k: block[k] for k in RUNTIME_FIELDS if block.get(k) is not None})
    return model_config_from_dict(spec)


def load_params(path, target, step: int | None = None):
    """``(params, run_dir, step)`` of a parent: an HF directory (step 0) or a run dir / one of its
    checkpoints (latest or ``step``), shaped, typed and sharded like ``target`` (a tree of
    ``jax.ShapeDtypeStruct`` with shardings, e.g. ``checkpoint.abstract_target(...)["params"]``)."""
    if not is_hf_dir(path):
        return ckpt.restore_params(path, target=target, step=step)
    model, _ = hf.load(path)
    params = nnx.split(model, nnx.Param)[1]
    _check_shapes(target, params, f"HF checkpoint {path}")
    placed = jax.tree.map(lambda t, x: jax.device_put(np.asarray(x, t.dtype), t.sharding), target, params)
    return placed, pathlib.Path(path).absolute(), 0


def load_policy(path, tokenizer: str | None = None, name: str | None = None, step: int | None = None,
                **model_overrides) -> Policy:
    """Load an HF Qwen2 directory or one of our run dirs (latest or given step); ``model_overrides``
    set ModelConfig fields (e.g. dtype)."""
    p = pathlib.Path(path)
    name = name or (p.name if p.name not in ("", ".") else str(p))
    if not p.exists():
        raise ConfigError(f"checkpoint {p} does not exist")
    if p.is_dir() and is_hf_dir(p):
        model, cfg = hf.load(p, **model_overrides)
        graphdef, params = nnx.split(model, nnx.Param)
        return Policy(name, graphdef, params, cfg, Tokenizer.load(tokenizer or p / "tokenizer.json"), "hf")
    run_dir, step = ckpt.resolve_checkpoint(p, step)
    cfg = run_model_config(run_dir, **model_overrides)
    graphdef, abstract = nnx.split(abstract_model(cfg), nnx.Param)
    where = f"checkpoint {run_dir} step {step}"
    try:
        params, _, _ = ckpt.restore_params(run_dir, target=abstract, step=step)
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 — orbax raises many types for a shape/structure mismatch
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(f"{where} does not fit its recorded model: {msg}") from None
    _check_shapes(abstract, params, where)
    return Policy(name, graphdef, params, cfg, Tokenizer.load(tokenizer or run_tokenizer(run_dir)), "run", step)


def run_tokenizer(run_dir) -> pathlib.Path:
    """The tokenizer.json a run trained with (recorded in its lineage), or the default tokenizer."""
    lineage = ckpt.read_lineage(run_dir)
    recorded = (lineage.get("tokenizer") or {}).get("path") or (lineage.get("config") or {}).get("tokenizer") or ""
    if recorded and pathlib.Path(recorded).exists():
        return pathlib.Path(recorded)
    if (pathlib.Path(run_dir) / "tokenizer.json").is_file():
        return pathlib.Path(run_dir) / "tokenizer.json"
    if recorded:
        raise ConfigError(f"{run_dir} was trained with tokenizer {recorded}, which no longer exists: "
                          f"set --config.tokenizer")
    return default_tokenizer_path()


def _check_shapes(abstract, params, where: str) -> None:
    want = jax.tree_util.tree_flatten_with_path(abstract)[0]
    got = jax.tree.leaves(params)
    if len(want) != len(got):
        raise ConfigError(f"{where} has {len(got)} parameter arrays; its model expects {len(want)}")
    for (path, w), g in zip(want, got):
        if tuple(w.shape) != tuple(np.shape(g)):
            raise ConfigError(f"{where}: parameter {jax.tree_util.keystr(path)} has shape {tuple(np.shape(g))}, "
                              f"the model expects {tuple(w.shape)} (wrong model shape)")
