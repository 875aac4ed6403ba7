"""Qwen2-style decoder (Flax NNX) with KV cache, and HF Qwen2 import/export (``interplay_jax.model.hf``)."""
from interplay_jax.model.qwen2 import (
    PRESETS,
    ModelConfig,
    Qwen2,
    abstract_model,
    count_params,
    forward,
    init_cache,
    init_model,
    model_config,
    model_config_from_dict,
)

__all__ = [
    "PRESETS", "ModelConfig", "Qwen2", "abstract_model", "count_params", "forward", "init_cache",
    "init_model", "model_config", "model_config_from_dict",
]
