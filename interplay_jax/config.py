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
    from interplay_jax.task.mixture import get_mixture

    for key in ("workdir", "seed", "mixture", "splits", "shard_size"):
        require(key in config, f"generate config has no {key!r} field")
    require(bool(str(config.workdir)), "generate: workdir must be a non-empty path")
    require(isinstance(config.seed, int), f"generate: seed must be an integer, got {config.seed!r}")
    require(isinstance(config.shard_size, int) and config.shard_size > 0,
            f"generate: shard_size must be a positive integer, got {config.shard_size!r}")
    splits = config.splits.to_dict() if hasattr(config.splits, "to_dict") else dict(config.splits)
    require(len(splits) > 0, "generate: splits is empty; give e.g. {'train': 1000}")
    for name, size in splits.items():
        require(isinstance(size, int) and size >= 0, f"generate: split {name!r} size must be an integer >= 0, got {size!r}")
    mixture = config.mixture.to_dict() if hasattr(config.mixture, "to_dict") else config.mixture
    get_mixture(mixture, modes=tuple(config.get("modes", ("normalforward",))))


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
