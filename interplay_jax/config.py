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


def _validate_train(config, check_files: bool = True) -> None:
    """pretrain / midtrain: everything that can be checked before any compute.

    ``check_files=False`` (inside a pipeline, before earlier stages ran) skips the checks of
    files those stages make (tokenizer, parent checkpoint, JSONL data)."""
    import pathlib

    from interplay_jax import checkpoint as ck
    from interplay_jax.model.qwen2 import model_config_from_dict
    from interplay_jax.stages import train as train_stage
    from interplay_jax.train import optim

    stage = config.stage
    for key in ("workdir", "seed", "mixture", "tokenizer", "model", "seq_len", "batch_size", "total_tokens",
                "optimizer", "data", "eval", "init_from"):
        require(key in config, f"{stage} config has no {key!r} field")
    require(str(config.workdir) != "", f"{stage}: workdir is empty")
    train_stage.mixture_of(config)                       # unknown op / context / mode -> ConfigError
    train_stage.parse_buckets(config.eval.buckets)
    model_cfg = model_config_from_dict(config.model)
    seq_len, batch = int(config.seq_len), int(config.batch_size)
    require(seq_len > 1 and batch > 0, f"{stage}: seq_len={seq_len} and batch_size={batch} must be positive")
    require(seq_len <= model_cfg.max_position_embeddings,
            f"{stage}: seq_len={seq_len} exceeds model max_position_embeddings={model_cfg.max_position_embeddings}")
    accum = int(config.get("grad_accum_steps", 1))
    require(accum >= 1 and batch % accum == 0, f"{stage}: batch_size={batch} does not divide by grad_accum_steps={accum}")
    steps = train_stage.total_steps(config)
    require(steps >= 1, f"{stage}: budget total_tokens={int(config.total_tokens)} is smaller than one batch "
                        f"(batch_size {batch} x seq_len {seq_len} = {batch * seq_len} tokens)")
    ocfg = train_stage._optimizer_config(config, steps)
    optim.make_schedule(ocfg)                            # warmup >= total steps etc.
    for key in ("log_every", "ckpt_every", "eval_every", "keep_checkpoints"):
        require(int(config.get(key, 0)) >= 0, f"{stage}: {key}={config.get(key)} must be >= 0")
    require(int(config.log_every) >= 1, f"{stage}: log_every={config.log_every} must be >= 1")
    require(config.data.source in ("generator", "jsonl"),
            f"{stage}: data.source={config.data.source!r}; expected 'generator' or 'jsonl'")
    require(int(config.eval.batch_size) >= 1, f"{stage}: eval.batch_size must be >= 1")
    if not check_files:
        return
    tok = pathlib.Path(str(config.tokenizer))
    require(tok.is_file(), f"{stage}: tokenizer {tok} does not exist (make one with configs/tokenizer.py "
                           f"or set --config.tokenizer=PATH)")
    if config.data.source == "jsonl":
        train_dir = pathlib.Path(str(config.data.data_dir)) / "train"
        require(train_dir.is_dir(), f"{stage}: data.data_dir={config.data.data_dir!r} has no train/ directory "
                                    f"(expected the published layout train/op<N>/*.jsonl)")
    resuming = bool(ck.complete_steps(str(config.workdir)))
    if str(config.init_from) and not resuming:
        step = int(config.get("init_step", -1))
        ck.resolve_checkpoint(str(config.init_from), None if step < 0 else step)  # missing -> ConfigError
    if stage == "midtrain":
        require(bool(str(config.init_from)) or resuming,
                "midtrain: init_from is empty; set --config.init_from=<pretrain run dir> (mid-training "
                "continues a pre-trained model)")


def _validate_pretrain(config) -> None:
    _validate_train(config)


def _validate_midtrain(config) -> None:
    _validate_train(config)


def _validate_rl(config, check_files: bool = True) -> None:
    """GRPO stage: reward, data, sizes and divisibility, GRPO numbers, optimizer, parent checkpoint.

    ``check_files=False`` (inside a pipeline) skips the tokenizer / parent checkpoint / JSONL checks."""
    import pathlib

    from interplay_jax import checkpoint as ck
    from interplay_jax.rl.data import SOURCES, rl_mixture
    from interplay_jax.task.rewards import get_reward
    from interplay_jax.train import optim

    for key in ("workdir", "seed", "tokenizer", "init_from", "model", "data", "rl", "grpo", "optimizer"):
        require(key in config, f"rl config has no {key!r} field")
    require(str(config.workdir) != "", "rl: workdir is empty")
    get_reward(str(config.rl.reward))                    # unknown reward -> ConfigError (one line)
    d, r, g = config.data, config.rl, config.grpo
    require(d.source in SOURCES, f"rl: data.source={d.source!r}; expected one of {', '.join(SOURCES)}")
    modes = [m.strip() for m in str(d.get("modes", "normalforward")).split(",") if m.strip()]
    if str(d.mixture) == "edge":
        e = d.get("edge")
        require(e is not None, "rl: data.mixture=edge needs a data.edge block (see configs/rl.py)")
        parse_ops(str(e.ops))
        require(int(e.per_op) >= 1 and int(e.n) >= 1, f"rl: data.edge.per_op={e.per_op} and n={e.n} must be >= 1")
        require(0 <= float(e.pass1_max) <= 1 and 0 <= float(e.passk_min) <= 1,
                f"rl: data.edge.pass1_max={e.pass1_max} and passk_min={e.passk_min} must lie in [0, 1]")
    else:
        rl_mixture(d.mixture, modes=modes, ops=[int(o) for o in d.get("ops", None) or []] or None)
    ints = {k: r.get(k) for k in ("num_prompts", "n", "max_prompt_len", "max_response_len", "num_minibatches")}
    for k, v in ints.items():
        require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"rl: rl.{k}={v!r} must be an integer >= 1")
    require(r.n >= 2, f"rl: rl.n={r.n} rollouts per prompt; GRPO needs >= 2 (group-normalised advantages)")
    for k in ("prompt_budget", "total_steps", "micro_batch_size", "rollout_batch_prompts", "top_k"):
        require(int(r.get(k, 0) or 0) >= 0, f"rl: rl.{k}={r.get(k)!r} must be >= 0")
    buckets = str(r.get("prompt_buckets", "") or "").split(",")
    require(all(b.strip().isdigit() and int(b) > 0 for b in buckets if b.strip()),
            f"rl: rl.prompt_buckets={r.get('prompt_buckets')!r} must be comma-separated positive lengths")
    require(float(r.temperature) > 0, f"rl: rl.temperature={r.temperature} must be > 0 for GRPO rollouts")
    require(0 < float(r.top_p) <= 1, f"rl: rl.top_p={r.top_p} must be in (0, 1]")
    rows = r.num_prompts * r.n
    require(rows % r.num_minibatches == 0, f"rl: num_prompts x n = {rows} rollouts do not split into "
                                           f"rl.num_minibatches={r.num_minibatches}")
    mini = rows // r.num_minibatches
    micro = int(r.get("micro_batch_size", 0) or 0)
    require(micro == 0 or mini % micro == 0, f"rl: a mini-batch of {mini} rollouts does not split into "
                                             f"rl.micro_batch_size={micro}")
    budget, total = int(r.prompt_budget or 0), int(r.get("total_steps", 0) or 0)
    require(total > 0 or budget >= r.num_prompts or d.source == "jsonl",
            f"rl: rl.prompt_budget={budget} is smaller than rl.num_prompts={r.num_prompts} (no step to run)")
    from interplay_jax.rl.grpo import LOSS_AGGS
    require(g.loss_agg in LOSS_AGGS, f"rl: grpo.loss_agg={g.loss_agg!r}; expected one of {', '.join(LOSS_AGGS)}")
    require(0 < float(g.clip_eps) < 1, f"rl: grpo.clip_eps={g.clip_eps} must be in (0, 1)")
    require(float(g.dual_clip) == 0 or float(g.dual_clip) > 1,
            f"rl: grpo.dual_clip={g.dual_clip} must be > 1 (or 0 = off)")
    require(float(g.kl_coef) >= 0, f"rl: grpo.kl_coef={g.kl_coef} must be >= 0")
    require(float(g.get("dr_grpo_constant", 0) or 0) >= 0, f"rl: grpo.dr_grpo_constant must be >= 0")
    steps = total or max(budget // r.num_prompts, 1)
    ocfg = config.optimizer.to_dict()
    ocfg["total_steps"] = steps
    import ml_collections
    optim.make_schedule(ml_collections.ConfigDict(ocfg))
    for key in ("log_every", "ckpt_every", "keep_checkpoints"):
        require(int(config.get(key, 0)) >= 0, f"rl: {key}={config.get(key)} must be >= 0")
    require(int(config.get("log_every", 1)) >= 1, f"rl: log_every={config.get('log_every')} must be >= 1")
    if config.model.get("preset"):
        from interplay_jax.model.qwen2 import model_config_from_dict
        mc = model_config_from_dict(config.model)
        require(r.max_prompt_len + r.max_response_len <= mc.max_position_embeddings,
                f"rl: max_prompt_len + max_response_len = {r.max_prompt_len + r.max_response_len} exceeds "
                f"model max_position_embeddings={mc.max_position_embeddings}")
    if not check_files:
        return
    tok = pathlib.Path(str(config.tokenizer))
    require(tok.is_file(), f"rl: tokenizer {tok} does not exist (set --config.tokenizer=PATH)")
    if d.source == "jsonl":
        split_dir = pathlib.Path(str(d.data_dir)) / str(d.split)
        require(split_dir.is_dir(), f"rl: data.data_dir={d.data_dir!r} has no {d.split}/ directory")
    resuming = bool(ck.complete_steps(str(config.workdir)))
    if not resuming:
        require(bool(str(config.init_from)), "rl: init_from is empty; set --config.init_from=<pre-training or "
                                             "mid-training run dir> (GRPO starts from a trained model)")
        step = int(config.get("init_step", -1))
        ck.resolve_checkpoint(str(config.init_from), None if step < 0 else step)  # missing -> ConfigError


def parse_ops(spec) -> list[int]:
    """"2-20" / "2,5,11-14" / [2, 5] -> sorted ops; ConfigError on anything else."""
    if isinstance(spec, (list, tuple)):
        parts = [str(x) for x in spec]
    else:
        parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    ops = set()
    for part in parts:
        lo, sep, hi = part.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise ConfigError(f"bad op list {spec!r}: {part!r} is not an op or a range like 2-10") from None
        require(2 <= a <= b <= 30, f"bad op range {part!r} in {spec!r}: ops must be 2..30, low <= high")
        ops.update(range(a, b + 1))
    require(bool(ops), f"op list {spec!r} is empty")
    return sorted(ops)


def parse_buckets(spec) -> dict:
    """"ID:2-10,OOD-edge:11-14" -> {"ID": (2, 10), ...} (inclusive ranges, in the given order)."""
    out = {}
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
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


def _validate_eval(config) -> None:
    for key in ("workdir", "seed", "checkpoints", "eval", "sampling", "buckets"):
        require(key in config, f"eval config has no {key!r} field")
    ckpts = [c for c in str(config.checkpoints).split(",") if c.strip()]
    require(bool(ckpts), "eval: no checkpoints; pass --config.checkpoints=DIR1[,DIR2,...]")
    names = [n for n in str(config.get("names", "")).split(",") if n.strip()]
    require(not names or len(names) == len(ckpts),
            f"eval: {len(names)} names for {len(ckpts)} checkpoints (names={config.names!r})")
    e, s = config.eval, config.sampling
    require(e.source in ("generator", "jsonl"), f"eval.source={e.source!r}; expected generator or jsonl")
    require(e.source != "jsonl" or bool(str(e.files).strip()), "eval.source=jsonl needs --config.eval.files=PATH")
    parse_ops(e.ops)
    require(isinstance(e.per_op, int) and e.per_op >= 1, f"eval.per_op={e.per_op!r} must be an integer >= 1")
    from interplay_jax.task.contexts import get_context
    for ctx in [c for c in str(e.contexts).split(",") if c.strip()]:
        get_context(ctx.strip())
    for mode in [m for m in str(e.modes).split(",") if m.strip()]:
        require(mode.strip() in ("normalforward", "forwardreverse"),
                f"eval.modes: unknown mode {mode!r}; expected normalforward or forwardreverse")
    require(isinstance(s.n, int) and s.n >= 1, f"sampling.n={s.n!r} must be an integer >= 1")
    require(s.temperature >= 0, f"sampling.temperature={s.temperature} must be >= 0 (0 = greedy)")
    require(0 < s.top_p <= 1, f"sampling.top_p={s.top_p} must be in (0, 1]")
    require(isinstance(s.top_k, int) and s.top_k >= 0, f"sampling.top_k={s.top_k!r} must be an integer >= 0")
    require(isinstance(s.max_new_tokens, int) and s.max_new_tokens >= 1,
            f"sampling.max_new_tokens={s.max_new_tokens!r} must be an integer >= 1")
    require(isinstance(s.max_prompt_len, int) and s.max_prompt_len >= 1,
            f"sampling.max_prompt_len={s.max_prompt_len!r} must be an integer >= 1")
    require(isinstance(s.batch_prompts, int) and s.batch_prompts >= 1,
            f"sampling.batch_prompts={s.batch_prompts!r} must be an integer >= 1")
    parse_buckets(config.buckets)


def _validate_pipeline(config) -> None:
    """Every sub-stage's static checks (files made by earlier stages are checked when they run)."""
    require("stages" in config and "workdir" in config, "pipeline config needs 'stages' and 'workdir'")
    names = [s.strip() for s in str(config.stages).split(",") if s.strip()]
    require(bool(names), "pipeline: stages is empty")
    for name in names:
        require(name in config and hasattr(config[name], "get") and "stage" in config[name],
                f"pipeline: stage {name!r} has no sub-config (expected config.{name} with a 'stage' field)")
        sub = config[name]
        require(sub.stage in STAGES and sub.stage != "pipeline",
                f"pipeline: {name}.stage={sub.stage!r} is not a runnable stage")
        if sub.stage in ("pretrain", "midtrain"):
            _validate_train(sub, check_files=False)
        elif sub.stage == "rl":
            _validate_rl(sub, check_files=False)
        # other stages may need files made by earlier ones: validated when they start


def validate(config) -> None:
    require("stage" in config, "config has no 'stage' field")
    require(config.stage in STAGES, f"unknown stage {config.stage!r}; expected one of {', '.join(STAGES)}")
    globals()[f"_validate_{config.stage}"](config)
