"""Stage runner for GRPO post-training: ``python -m interplay_jax.main --config=configs/rl.py:<preset>``.

``run(config)``: the model is the parent's (from its lineage) unless the config names a preset; the
state resumes from ``WORKDIR/checkpoints``, else starts from the params of ``init_from`` (a pre- or
mid-training run, or one of its checkpoints) with a fresh optimizer. The frozen reference policy of
the k3 KL is the parent's params (never loaded when ``grpo.kl_coef = 0``). Each step t: the prompts
of step t (interplay_jax.rl.data, a pure function of t), rollouts -> verified rewards -> group
advantages (interplay_jax.rl.producer), then one jitted GRPO update (interplay_jax.rl.grpo:
``rl.num_minibatches`` optimizer steps), in the shared loop (progress bar, TensorBoard under
``WORKDIR/tb``, checkpoints). ``samples.jsonl`` gets a digest and an example per step.
"""
from __future__ import annotations

import pathlib

import jax
from tqdm.auto import tqdm

from interplay_jax import checkpoint as ck
from interplay_jax.config import parse_list, parse_ops, require
from interplay_jax.errors import ConfigError
from interplay_jax.model.qwen2 import ModelConfig, model_config_from_dict
from interplay_jax.rl import grpo, memory
from interplay_jax.rl.data import SOURCES, prompt_source_from_config, rl_mixture
from interplay_jax.rl.producer import RolloutProducer, RolloutSettings
from interplay_jax.sampling.policy import is_hf_dir, load_params, parent_model_config, run_model_config
from interplay_jax.sampling.sampler import DECODE_KERNELS
from interplay_jax.stages.edge import resolve_edge
from interplay_jax.stages.skeleton import StageRun, load_tokenizer
from interplay_jax.task.rewards import get_reward
from interplay_jax.train import lm_step, optim
from interplay_jax.train import sharding as shd
from interplay_jax.train.loop import Loop, LoopSettings


def run(config):
    reward = get_reward(str(config.rl.reward))
    run = StageRun(config, "rl")
    require(jax.process_count() == 1, f"the rl stage runs in one process (any number of local devices); got "
                                      f"{jax.process_count()} processes")
    tokenizer, tok_info = load_tokenizer(config)
    edge = resolve_edge(config, run.workdir)             # None unless data.mixture == "edge"
    prompts = prompt_source_from_config(config, edge)
    steps = total_steps(config, len(prompts))
    resuming = ck.complete_steps(run.workdir) and (run.workdir / ck.LINEAGE_FILE).exists()
    model_cfg = run_model_config(run.workdir) if resuming else model_config_for(config)  # as recorded on resume
    _check_sizes(config, run.mesh, model_cfg, tokenizer)

    schedule, tx = optim.optimizer_for(config.optimizer, steps)
    graphdef, abstract = lm_step.abstract_state(model_cfg, tx)   # shapes only: every leaf is restored
    shardings = shd.state_shardings(abstract, run.mesh)
    start = run.start(abstract, shardings, tx)
    if run.finished(start, steps):
        return run.previous_summary()
    edge_info = {} if edge is None else {"edge": {k: v for k, v in edge.items() if k != "prompts"}}
    run.write_lineage(start, model_cfg, tokenizer=tok_info, **edge_info)

    gcfg = grpo_config(config)
    bsh = shd.batch_sharding(run.mesh)
    target = ck.abstract_target(abstract, shardings)
    make_update = lambda micro: grpo.make_grpo_step(  # noqa: E731
        graphdef, tx, gcfg, num_minibatches=int(config.rl.num_minibatches), micro_batch_size=micro, mesh=run.mesh,
        state_shardings=shardings, batch_sharding=bsh)
    mb = _micro_batch(config, run.mesh, make_update, target, bsh)
    ref_params, logprob_fn = None, None
    if gcfg.kl_coef > 0:
        if start.parent is None:
            raise ConfigError(f"{run.workdir}: cannot find the parent run for the KL reference (no lineage parent)")
        ref_params, _, _ = load_params(start.parent["run_dir"], target["params"],  # run dir or HF dir
                                       step=int(start.parent["step"]))
        logprob_fn = grpo.make_logprob_fn(graphdef, temperature=gcfg.temperature, micro_batch_size=mb, mesh=run.mesh,
                                          param_shardings=shardings["params"], batch_sharding=bsh)
    update = make_update(mb)
    produce = RolloutProducer(RolloutSettings.from_config(config), graphdef=graphdef, model_cfg=model_cfg,
                              tokenizer=tokenizer, prompts=prompts, reward=reward, mesh=run.mesh, seed=int(config.seed),
                              ref_params=ref_params, logprob_fn=logprob_fn, samples_path=run.workdir / "samples.jsonl")
    with shd.tracing_mesh(run.mesh):   # the sampler is compiled as the producer calls it
        _preflight(config, update, produce, target, bsh, mb)

    def step_fn(state, batch):
        arrays, host = batch
        lr = float(schedule(int(state["step"])))
        state, metrics = update(state, arrays)
        return state, {**metrics, **host, "lr": lr}

    settings = LoopSettings(total_steps=steps, log_every=int(config.log_every), ckpt_every=int(config.ckpt_every),
                            desc="rl", progress=bool(config.get("progress", True)))
    result = Loop(settings, **run.hooks(start), on_log=_log_rl).run(step_fn, start.state, produce,
                                                                  start_step=start.step)
    f = result.history[-1] if result.history else {}
    headline = f", reward {f['reward_mean']:.3f}, verified {f['verified_acc']:.3f}" if "reward_mean" in f else ""
    return run.finish(result, steps, model_cfg, start, headline=headline, reward=reward.name,
                      mixture=str(config.data.mixture), filtered_prompts=produce.filtered_total,
                      history=[{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in result.history])


def _micro_batch(config, mesh, make_update, target, bsh) -> int | None:
    """``rl.micro_batch_size``, or (0) the largest micro-batch whose compiled update fits the device
    (the whole mini-batch where the device memory is unknown, e.g. on CPU)."""
    r = config.rl
    if int(r.micro_batch_size or 0):
        return int(r.micro_batch_size)
    budget = memory.device_bytes()
    if budget is None:
        return None
    rows = int(r.num_prompts) * int(r.n)
    choice = memory.pick_micro_batch(
        make_update, target, mini_rows=rows // int(r.num_minibatches), rows=rows,
        seq_len=int(r.max_prompt_len) + int(r.max_response_len), response_len=int(r.max_response_len),
        kl=float(config.grpo.kl_coef) > 0, sampler_old=str(config.grpo.old_logprobs) == "sampler", budget=budget,
        multiple=shd.batch_size_multiple(mesh), sharding=bsh)
    print(f"rl: micro-batch {choice.micro} rollouts (update {memory.gib(choice.bytes)} GiB of "
          f"{memory.gib(budget)} GiB)")
    return choice.micro


def _preflight(config, update, produce, target, bsh, micro) -> None:
    """Compile the update and the sampler at their largest shapes before the first rollout and stop
    with one line when either needs more memory than the device has (skipped where it is unknown)."""
    budget = memory.device_bytes()
    if budget is None:
        return
    r = config.rl
    rows = int(r.num_prompts) * int(r.n)
    need_update = memory.update_bytes(update, target, rows, int(r.max_prompt_len) + int(r.max_response_len),
                                      int(r.max_response_len), kl=float(config.grpo.kl_coef) > 0,
                                      sampler_old=str(config.grpo.old_logprobs) == "sampler", sharding=bsh)
    need_sampler = memory.sampler_bytes(produce.sampler, target["params"],
                                        prompts=int(r.rollout_batch_prompts or 0) or int(r.num_prompts),
                                        prompt_len=int(r.max_prompt_len), n=int(r.n),
                                        max_new_tokens=int(r.max_response_len), stop_ids=produce.tokenizer.stop_ids)
    print(f"rl: preflight: update {memory.gib(need_update)} GiB (micro-batch {micro or 'whole'}), sampler "
          f"{memory.gib(need_sampler)} GiB, device {memory.gib(budget)} GiB")
    now = micro or "the whole mini-batch"
    require(need_update <= budget, f"rl: the update needs {memory.gib(need_update)} GiB but the device has "
                                   f"{memory.gib(budget)} GiB: lower rl.micro_batch_size (now {now}) or set "
                                   f"--config.model.remat=True")
    require(need_sampler <= budget, f"rl: the sampler needs {memory.gib(need_sampler)} GiB but the device has "
                                    f"{memory.gib(budget)} GiB: lower rl.rollout_batch_prompts (prompts per "
                                    f"sampler call; now {int(r.rollout_batch_prompts or 0) or 'all'})")


def _log_rl(at, row) -> None:
    tqdm.write(f"  rl {at}: reward {row['reward_mean']:.3f} (std {row['reward_std']:.3f}) | verified "
               f"{row['verified_acc']:.3f} | answer {row['answer_acc']:.3f} | length {row['response_len']:.0f}"
               f" (cut {row['truncated_frac']:.2f}) | kl {row.get('kl', 0.0):.2e} | clip {row['clip_frac']:.3f}"
               f" | entropy {row['entropy']:.3f}")


def _check_sizes(config, mesh, model_cfg, tokenizer) -> None:
    rows = int(config.rl.num_prompts) * int(config.rl.n)
    micro = int(config.rl.micro_batch_size or 0) or rows // int(config.rl.num_minibatches)
    dp = shd.batch_size_multiple(mesh)
    require(micro % dp == 0, f"rl micro-batch of {micro} rollouts does not divide by mesh data x fsdp={dp}")
    span = int(config.rl.max_prompt_len) + int(config.rl.max_response_len)
    require(span <= model_cfg.max_position_embeddings, f"rl: max_prompt_len + max_response_len = {span} exceeds "
                                                       f"the model's max_position_embeddings="
                                                       f"{model_cfg.max_position_embeddings}")
    # the original tokenizer file has 2,201 entries for a 2,200-row model (its last id is never used)
    require(tokenizer.vocab_size <= model_cfg.vocab_size + 1,
            f"tokenizer has {tokenizer.vocab_size} entries but model.vocab_size={model_cfg.vocab_size}")
    shd.check_divisibility(model_cfg, mesh)


# ---------------------------------------------------------------------------- config


def total_steps(config, num_prompts_available: int | None = None) -> int:
    """``rl.total_steps`` if > 0, else prompt_budget // prompts per step (one epoch)."""
    if int(config.rl.get("total_steps", 0) or 0) > 0:
        return int(config.rl.total_steps)
    budget = int(config.rl.prompt_budget) or int(num_prompts_available or 0)
    steps = budget // int(config.rl.num_prompts)
    require(steps >= 1, f"rl.prompt_budget={budget} is smaller than rl.num_prompts={config.rl.num_prompts}: "
                        f"no step to run")
    return steps


def model_config_for(config) -> ModelConfig:
    """The config's model, or (when ``model.preset`` is empty) the parent's model (a run's lineage, or
    an HF directory's config.json), with the config's non-None fields as overrides."""
    m = config.model.to_dict()
    if m.get("preset"):
        return model_config_from_dict(m)
    overrides = {k: v for k, v in m.items() if k != "preset" and v is not None}
    return parent_model_config(str(config.init_from), **overrides)  # a run's lineage or an HF config.json


def grpo_config(config) -> grpo.GRPOConfig:
    g = config.grpo
    const = float(g.get("dr_grpo_constant", 0) or 0) or float(config.rl.max_response_len)
    return grpo.GRPOConfig(clip_eps=float(g.clip_eps), dual_clip=float(g.dual_clip), kl_coef=float(g.kl_coef),
                           entropy_coef=float(g.entropy_coef), loss_agg=str(g.loss_agg), dr_grpo_constant=const,
                           temperature=float(config.rl.temperature) if bool(g.get("logprob_temperature", False))
                           else 1.0)


def validate(config, check_files: bool = True) -> None:
    """Reward, data, sizes and divisibility, GRPO numbers, optimizer, parent checkpoint.
    ``check_files=False`` (inside a pipeline) skips the tokenizer / parent / JSONL checks."""
    for key in ("workdir", "seed", "tokenizer", "init_from", "model", "data", "rl", "grpo", "optimizer"):
        require(key in config, f"rl config has no {key!r} field")
    require(str(config.workdir) != "", "rl: workdir is empty")
    get_reward(str(config.rl.reward))                    # unknown reward -> ConfigError (one line)
    d, r, g = config.data, config.rl, config.grpo
    require(d.source in SOURCES, f"rl: data.source={d.source!r}; expected one of {', '.join(SOURCES)}")
    if str(d.mixture) == "edge":
        e = d.get("edge")
        require(e is not None, "rl: data.mixture=edge needs a data.edge block (see configs/rl.py)")
        parse_ops(str(e.ops))
        require(int(e.per_op) >= 1 and int(e.n) >= 1, f"rl: data.edge.per_op={e.per_op} and n={e.n} must be >= 1")
        require(0 <= float(e.pass1_max) <= 1 and 0 <= float(e.passk_min) <= 1,
                f"rl: data.edge.pass1_max={e.pass1_max} and passk_min={e.passk_min} must lie in [0, 1]")
    else:
        rl_mixture(d.mixture, modes=parse_list(d.get("modes", "normalforward")),
                   ops=[int(o) for o in d.get("ops", None) or []] or None)
    for k in ("num_prompts", "n", "max_prompt_len", "max_response_len", "num_minibatches"):
        v = r.get(k)
        require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"rl: rl.{k}={v!r} must be an integer >= 1")
    require(r.n >= 2, f"rl: rl.n={r.n} rollouts per prompt; GRPO needs >= 2 (group-normalised advantages)")
    for k in ("prompt_budget", "total_steps", "micro_batch_size", "rollout_batch_prompts", "top_k", "decode_chunk"):
        require(int(r.get(k, 0) or 0) >= 0, f"rl: rl.{k}={r.get(k)!r} must be >= 0")
    require(str(r.get("decode_kernel", "xla")) in DECODE_KERNELS,
            f"rl: rl.decode_kernel={r.get('decode_kernel')!r}; expected one of {', '.join(DECODE_KERNELS)}")
    buckets = parse_list(r.get("prompt_buckets", ""))
    require(all(b.isdigit() and int(b) > 0 for b in buckets),
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
    require(g.loss_agg in grpo.LOSS_AGGS, f"rl: grpo.loss_agg={g.loss_agg!r}; expected one of "
                                          f"{', '.join(grpo.LOSS_AGGS)}")
    require(0 < float(g.clip_eps) < 1, f"rl: grpo.clip_eps={g.clip_eps} must be in (0, 1)")
    require(float(g.dual_clip) == 0 or float(g.dual_clip) > 1,
            f"rl: grpo.dual_clip={g.dual_clip} must be > 1 (or 0 = off)")
    require(float(g.kl_coef) >= 0, f"rl: grpo.kl_coef={g.kl_coef} must be >= 0")
    require(float(g.get("dr_grpo_constant", 0) or 0) >= 0, "rl: grpo.dr_grpo_constant must be >= 0")
    require(g.get("old_logprobs", "recompute") in ("recompute", "sampler"),
            f"rl: grpo.old_logprobs={g.get('old_logprobs')!r}; expected recompute or sampler")
    require(g.get("old_logprobs", "recompute") != "sampler" or not bool(g.get("logprob_temperature", False)),
            "rl: grpo.old_logprobs=sampler gives temperature-1 log-probs; it cannot be combined with "
            "grpo.logprob_temperature=True")
    optim.optimizer_for(config.optimizer, total or max(budget // r.num_prompts, 1))
    for key in ("log_every", "ckpt_every", "keep_checkpoints"):
        require(int(config.get(key, 0)) >= 0, f"rl: {key}={config.get(key)} must be >= 0")
    require(int(config.get("log_every", 1)) >= 1, f"rl: log_every={config.get('log_every')} must be >= 1")
    if config.model.get("preset"):
        mc = model_config_from_dict(config.model)
        require(r.max_prompt_len + r.max_response_len <= mc.max_position_embeddings,
                f"rl: max_prompt_len + max_response_len = {r.max_prompt_len + r.max_response_len} exceeds "
                f"model max_position_embeddings={mc.max_position_embeddings}")
    if not check_files:
        return
    tok = str(config.tokenizer)
    require(not tok or pathlib.Path(tok).is_file(), f"rl: tokenizer {tok} does not exist (set --config.tokenizer="
                                                    f"PATH, or leave it empty for the default one)")
    if d.source == "jsonl":
        split_dir = pathlib.Path(str(d.data_dir)) / str(d.split)
        require(split_dir.is_dir(), f"rl: data.data_dir={d.data_dir!r} has no {d.split}/ directory")
    if not ck.complete_steps(str(config.workdir)):
        require(bool(str(config.init_from)), "rl: init_from is empty; set --config.init_from=<pre-training or "
                                             "mid-training run dir> (GRPO starts from a trained model)")
        step = int(config.get("init_step", -1))
        if not is_hf_dir(str(config.init_from)):
            ck.resolve_checkpoint(str(config.init_from), None if step < 0 else step)  # missing -> ConfigError
