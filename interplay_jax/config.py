"""Config validation: the one place that decides whether a config can run.

``validate(config)`` runs before any compute. Every failed check raises
:class:`interplay_jax.errors.ConfigError` with one line naming the clashing values.
Each stage has one ``_validate_<stage>`` function below; shared pieces are plain helpers.
"""
from __future__ import annotations

from interplay_jax.errors import ConfigError

STAGES = ("generate", "tokenizer", "pretrain", "midtrain", "rl", "eval", "pipeline")


def require(cond: bool, message: str) -> None:
    """Raise ConfigError(message) unless ``cond``."""
    if not cond:
        raise ConfigError(message)


# ---------------------------------------------------------------------------- per stage


def _validate_generate(config) -> None:
    pass


def _validate_tokenizer(config) -> None:
    pass


def _validate_pretrain(config) -> None:
    pass


def _validate_midtrain(config) -> None:
    pass


def _validate_rl(config) -> None:
    pass


def _validate_eval(config) -> None:
    pass


def _validate_pipeline(config) -> None:
    pass


def validate(config) -> None:
    require("stage" in config, "config has no 'stage' field")
    require(config.stage in STAGES, f"unknown stage {config.stage!r}; expected one of {', '.join(STAGES)}")
    globals()[f"_validate_{config.stage}"](config)
