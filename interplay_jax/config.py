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
    import glob
    import pathlib

    for key in ("workdir", "seed", "vocab_size", "min_frequency", "source", "num_docs"):
        require(key in config, f"tokenizer config has no {key!r} field")
    require(bool(str(config.workdir)), "tokenizer: workdir must be a non-empty path")
    require(isinstance(config.seed, int), f"tokenizer: seed must be an integer, got {config.seed!r}")
    require(isinstance(config.vocab_size, int) and config.vocab_size >= 266,
            f"tokenizer: vocab_size must be an integer >= 266 (10 special + 256 byte entries), got {config.vocab_size!r}")
    require(isinstance(config.min_frequency, int) and config.min_frequency >= 1,
            f"tokenizer: min_frequency must be an integer >= 1, got {config.min_frequency!r}")
    require(isinstance(config.num_docs, int) and config.num_docs >= 0,
            f"tokenizer: num_docs must be an integer >= 0, got {config.num_docs!r}")
    source = config.source
    require(source in ("mixture", "jsonl", "file"),
            f"tokenizer: unknown source {source!r}; expected mixture, jsonl or file")
    if source == "mixture":
        from interplay_jax.task.mixture import get_mixture

        require(config.num_docs > 0, "tokenizer: num_docs must be > 0 with source=mixture")
        modes = config.get("modes", "normalforward")
        modes = modes.split(",") if isinstance(modes, str) else list(modes)
        mixture = config.mixture.to_dict() if hasattr(config.get("mixture"), "to_dict") else config.get("mixture")
        get_mixture(mixture, modes=tuple(m.strip() for m in modes if m.strip()))
    elif source == "jsonl":
        pattern = str(config.get("jsonl", ""))
        require(bool(pattern), "tokenizer: source=jsonl needs --config.jsonl=GLOB")
        require(bool(glob.glob(pattern, recursive=True)), f"tokenizer: jsonl pattern {pattern!r} matches no file")
    else:
        path = pathlib.Path(str(config.get("file", "")))
        require(path.is_file(), f"tokenizer: file {str(path)!r} does not exist")


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
