"""HF Qwen2 interop: load the study's released checkpoints, export ours for `transformers`.

``load(path)`` reads an HF Qwen2 directory (config.json + model.safetensors, a sharded
model.safetensors.index.json, or pytorch_model.bin when torch is importable) into a :class:`Qwen2`
whose architecture is the one its config.json gives (``read_config``: no preset needed; the
release's two model configs map to the presets paper100m and release45m).
``save(model, cfg, path, tokenizer=None)`` writes config.json (Qwen2ForCausalLM), model.safetensors
(fp32, HF names and [out, in] layouts, no lm_head when tied) and optionally the tokenizer, so
``transformers.AutoModelForCausalLM.from_pretrained(path)`` loads it. No torch needed to save.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax.numpy as jnp
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from interplay_jax.errors import ConfigError
from interplay_jax.model.qwen2 import ModelConfig, Qwen2, abstract_model

_SUPPORTED_ACT = ("silu", "swish")


# ----------------------------------------------------------------------------------------- config


def config_from_hf(hf: dict, **overrides) -> ModelConfig:
    """Our ModelConfig from an HF Qwen2 config.json dict (``overrides`` e.g. dtype="bfloat16")."""
    model_type = hf.get("model_type", "qwen2")
    if model_type not in ("qwen2", "llama"):
        raise ConfigError(f"config.json has model_type={model_type!r}; only Qwen2 checkpoints are supported")
    act = hf.get("hidden_act", "silu")
    if act not in _SUPPORTED_ACT:
        raise ConfigError(f"config.json has hidden_act={act!r}; only silu (SwiGLU) is supported")
    rope = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise ConfigError(f"config.json has rope scaling {rope_type!r}; only plain RoPE is supported")
    if hf.get("use_sliding_window", False):
        raise ConfigError("config.json has use_sliding_window=true; sliding-window attention is not supported")
    theta = hf.get("rope_theta", rope.get("rope_theta", 10000.0) if isinstance(rope, dict) else 10000.0)
    heads = int(hf["num_attention_heads"])
    fields = dict(
        vocab_size=int(hf["vocab_size"]),
        hidden_size=int(hf["hidden_size"]),
        intermediate_size=int(hf["intermediate_size"]),
        num_layers=int(hf["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or int(hf["hidden_size"]) // heads),
        rope_theta=float(theta),
        rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        init_std=float(hf.get("initializer_range", 0.02)),
    )
    fields.update(overrides)
    return ModelConfig(**fields).validate()


def config_to_hf(cfg: ModelConfig, bos_token_id: int = 2, eos_token_id: int = 3, pad_token_id: int = 1) -> dict:
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": bos_token_id,
        "eos_token_id": eos_token_id,
        "pad_token_id": pad_token_id,
        "hidden_act": "silu",
        "hidden_size": cfg.hidden_size,
        "head_dim": cfg.head_dim,
        "initializer_range": cfg.init_std,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_position_embeddings,
        "max_window_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_hidden_layers": cfg.num_layers,
        "num_key_value_heads": cfg.num_kv_heads,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": cfg.tie_embeddings,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": cfg.vocab_size,
    }


# ----------------------------------------------------------------------------------------- weights


def _read_tensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    index = path / "model.safetensors.index.json"
    single = path / "model.safetensors"
    if single.is_file() or index.is_file():
        files = [single] if single.is_file() else sorted(
            {path / f for f in json.loads(index.read_text())["weight_map"].values()})
        out = {}
        for f in files:
            if not f.is_file():
                raise ConfigError(f"{index} names {f.name}, which is missing")
            out.update(load_file(str(f)))
        return out
    bin_file = path / "pytorch_model.bin"
    if bin_file.is_file():
        try:
            import torch  # optional: only for pytorch_model.bin checkpoints
        except ImportError:
            raise ConfigError(f"{bin_file} needs torch to read; install torch or convert it to safetensors") from None
        state = torch.load(str(bin_file), map_location="cpu", weights_only=True)
        return {k: v.detach().to(torch.float32).numpy() for k, v in state.items()}
    raise ConfigError(f"{path} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def _hf_to_ours(cfg: ModelConfig, t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Our parameter paths ("layers.3.q_kernel") -> arrays, from HF names and [out, in] layouts."""
    d, dh, h, k = cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    t = {n[len("model."):] if n.startswith("model.") else n: v for n, v in t.items()}

    def get(name):
        if name not in t:
            raise ConfigError(f"checkpoint has no tensor {name!r} (expected by its config.json)")
        return np.asarray(t[name])

    out = {"embed": get("embed_tokens.weight"), "final_norm": get("norm.weight")}
    if cfg.tie_embeddings:
        if "lm_head.weight" in t and not np.array_equal(t["lm_head.weight"], out["embed"]):
            raise ConfigError("config.json says tie_word_embeddings=true but lm_head.weight differs from embed_tokens")
    else:
        out["lm_head"] = get("lm_head.weight").T
    for i in range(cfg.num_layers):
        p = f"layers.{i}."
        out[p + "attn_norm"] = get(p + "input_layernorm.weight")
        out[p + "mlp_norm"] = get(p + "post_attention_layernorm.weight")
        for name, heads in (("q", h), ("k", k), ("v", k)):
            w = get(f"{p}self_attn.{name}_proj.weight")
            if w.shape != (heads * dh, d):
                raise ConfigError(f"{p}self_attn.{name}_proj.weight has shape {w.shape}, expected {(heads * dh, d)}")
            out[p + f"{name}_kernel"] = w.T.reshape(d, heads, dh)
            out[p + f"{name}_bias"] = get(f"{p}self_attn.{name}_proj.bias").reshape(heads, dh)
        w = get(p + "self_attn.o_proj.weight")
        if w.shape != (d, h * dh):
            raise ConfigError(f"{p}self_attn.o_proj.weight has shape {w.shape}, expected {(d, h * dh)}")
        out[p + "o_kernel"] = w.T.reshape(h, dh, d)
        for name in ("gate", "up", "down"):
            out[p + f"{name}_kernel"] = get(f"{p}mlp.{name}_proj.weight").T
    return out


def _ours_to_hf(cfg: ModelConfig, params: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    d = cfg.hidden_size
    out = {"model.embed_tokens.weight": params["embed"], "model.norm.weight": params["final_norm"]}
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["lm_head"].T
    for i in range(cfg.num_layers):
        p, q = f"layers.{i}.", f"model.layers.{i}."
        out[q + "input_layernorm.weight"] = params[p + "attn_norm"]
        out[q + "post_attention_layernorm.weight"] = params[p + "mlp_norm"]
        for name in ("q", "k", "v"):
            out[q + f"self_attn.{name}_proj.weight"] = params[p + f"{name}_kernel"].reshape(d, -1).T
            out[q + f"self_attn.{name}_proj.bias"] = params[p + f"{name}_bias"].reshape(-1)
        out[q + "self_attn.o_proj.weight"] = params[p + "o_kernel"].reshape(-1, d).T
        for name in ("gate", "up", "down"):
            out[q + f"mlp.{name}_proj.weight"] = params[p + f"{name}_kernel"].T
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items()}


def _flat_params(model: nnx.Module) -> dict[str, nnx.Variable]:
    """{"layers.0.q_kernel": Param, ...} for a Qwen2 module."""
    out = {}
    for path, var in nnx.iter_graph(model):
        if isinstance(var, nnx.Param):
            out[".".join(str(p) for p in path)] = var
    return out


# ----------------------------------------------------------------------------------------- public


def read_config(path, **overrides) -> ModelConfig:
    """The ModelConfig of an HF Qwen2 directory, from its config.json alone (no weights read):
    the architecture is the checkpoint's; ``overrides`` set other fields (dtype, remat...)."""
    path = pathlib.Path(path)
    if not path.is_dir():
        raise ConfigError(f"HF checkpoint directory {path} does not exist")
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise ConfigError(f"{path} has no config.json")
    try:
        hf_cfg = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{cfg_file}: invalid JSON ({e})") from None
    try:
        return config_from_hf(hf_cfg, **overrides)
    except (KeyError, TypeError, ValueError) as e:
        raise ConfigError(f"{cfg_file}: cannot read a Qwen2 config ({e!r})") from None


def load(path, **overrides) -> tuple[Qwen2, ModelConfig]:
    """(model, cfg) from an HF Qwen2 directory; the architecture comes from its config.json.
    ``overrides`` set ModelConfig fields (dtype, remat...)."""
    path = pathlib.Path(path)
    cfg = read_config(path, **overrides)
    arrays = _hf_to_ours(cfg, _read_tensors(path))
    model = abstract_model(cfg)
    pdt = jnp.dtype(cfg.param_dtype)
    for name, var in _flat_params(model).items():
        arr = arrays[name]
        if tuple(arr.shape) != tuple(var.shape):
            raise ConfigError(f"{path}: tensor for {name} has shape {tuple(arr.shape)}, expected {tuple(var.shape)}")
        var.set_value(jnp.asarray(np.asarray(arr, np.float32), pdt))
    return model, cfg


def save(model: Qwen2, cfg: ModelConfig, path, tokenizer=None) -> pathlib.Path:
    """Write an HF Qwen2 directory; ``tokenizer``: a tokenizer.json path, a directory holding one,
    a ``tokenizers.Tokenizer`` or an HF tokenizer (``save_pretrained``)."""
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    params = {name: np.asarray(var[...], np.float32) for name, var in _flat_params(model).items()}
    save_file(_ours_to_hf(cfg, params), str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2) + "\n")
    if tokenizer is not None:
        _save_tokenizer(tokenizer, path)
    return path


def _save_tokenizer(tokenizer, path: pathlib.Path) -> None:
    if isinstance(tokenizer, (str, os.PathLike)):
        src = pathlib.Path(tokenizer)
        if src.is_dir():
            src = src / "tokenizer.json"
        if not src.is_file():
            raise ConfigError(f"tokenizer file {src} does not exist")
        shutil.copyfile(src, path / "tokenizer.json")
    elif hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(str(path))
        return
    elif hasattr(tokenizer, "save"):
        tokenizer.save(str(path / "tokenizer.json"))
    else:
        raise ConfigError(f"cannot save a tokenizer of type {type(tokenizer).__name__}")
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "pad_token": "[PAD]",
              "bos_token": "[BOS]", "eos_token": "[EOS]", "model_max_length": 2048}
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
