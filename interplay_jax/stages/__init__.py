"""The stages (thin runners over the layers below) and the one registry behind ``run_config``.

Each stage module has ``validate(config, check_files=True)`` (everything checkable before any
compute; one ConfigError line) and ``run(config)``. ``pretrain`` and ``midtrain`` share one runner.
``run_config`` turns on the persistent compilation cache first (``stages/compile_cache.py``).
"""
from __future__ import annotations

import importlib

from interplay_jax.config import require

STAGES = {"generate": "generate", "tokenizer": "tokenizer", "pretrain": "train", "midtrain": "train",
          "rl": "rl", "eval": "eval", "pipeline": "pipeline"}


def stage_module(stage: str):
    """The module of ``stage`` (imported on first use: each stage pulls in only what it needs)."""
    require(stage in STAGES, f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return importlib.import_module(f"interplay_jax.stages.{STAGES[stage]}")


def validate(config, check_files: bool = True) -> None:
    require("stage" in config, "config has no 'stage' field")
    stage_module(config.stage).validate(config, check_files=check_files)


def run_config(config):
    """Validate ``config``, turn on the persistent compilation cache and run the stage; returns
    whatever the stage returns (a line after the stage says what the cache saved)."""
    validate(config)
    from interplay_jax.stages import compile_cache     # imports JAX: not at package import
    path = compile_cache.enable(config)
    before = compile_cache.stats()
    out = stage_module(config.stage).run(config)
    if path and config.stage not in ("pipeline", "generate", "tokenizer"):
        print(compile_cache.summary_line(path, before))
    return out
