"""Stage runner for GRPO post-training (SPEC §5): ``python -m interplay_jax.main --config=configs/rl.py:<preset>``.

``run(config)``:
1. mesh, model config (inherited from the parent run's lineage unless the config names a preset),
   AdamW (constant lr 1e-6, wd 0.01, clip 1.0 at paper scale);
2. state: resume from ``WORKDIR/checkpoints`` if any (params, optimizer, step); else the params of
   ``init_from`` (a pre-training or mid-training run dir, or one of its checkpoints) with a fresh
   optimizer. The frozen reference policy for the k3 KL is the parent's params (restored again on
   resume); with ``grpo.kl_coef = 0`` it is never loaded and its forward is skipped;
3. each step t (0-based): the prompts of step t (:mod:`interplay_jax.rl.data`, a pure function of
   t); prompts longer than ``rl.max_prompt_len`` tokens are dropped and counted; ``rl.n`` rollouts
   per prompt with the KV-cache sampler, key ``fold_in(PRNGKey(seed), t)`` (so a resumed run samples
   the same rollouts); rollouts that never stop are cut at ``rl.max_response_len`` and scored;
   rewards from the task layer's verifier; group advantages; one jitted GRPO update
   (``rl.num_minibatches`` optimizer steps);
4. the shared loop (progress bar, TensorBoard under ``WORKDIR/tb``: reward mean/std, verified and
   answer accuracy, ProcessAcc, response length, KL, clip fraction, entropy, tokens/s...), checkpoints,
   ``WORKDIR/samples.jsonl`` (per step: a digest of the rollouts and one example), ``lineage.json``
   and ``summary.json``.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time

import jax
import numpy as np

from interplay_jax import checkpoint as ck
from interplay_jax.errors import ConfigError

STOP_TOKENS = ("[EOS]", "</answer>")


def _optimizer_config(config, steps):
    import ml_collections
    o = config.optimizer.to_dict() if hasattr(config.optimizer, "to_dict") else dict(config.optimizer)
    o["total_steps"] = steps
    return ml_collections.ConfigDict(o)


def total_steps(config, num_prompts_available: int | None = None) -> int:
    """``rl.total_steps`` if > 0, else prompt_budget // prompts per step (one epoch)."""
    if int(config.rl.get("total_steps", 0) or 0) > 0:
        return int(config.rl.total_steps)
    budget = int(config.rl.prompt_budget) or int(num_prompts_available or 0)
    steps = budget // int(config.rl.num_prompts)
    if steps < 1:
        raise ConfigError(f"rl.prompt_budget={budget} is smaller than rl.num_prompts={config.rl.num_prompts}: no step to run")
    return steps


def model_config_for(config):
    """The config's model, or (when ``model.preset`` is empty) the parent run's model from its lineage."""
    from interplay_jax.model.qwen2 import model_config_from_dict
    m = config.model.to_dict() if hasattr(config.model, "to_dict") else dict(config.model)
    if m.get("preset"):
        return model_config_from_dict(m)
    from interplay_jax.model.qwen2 import ModelConfig
    run_dir, _ = ck.resolve_checkpoint(str(config.init_from))
    lineage = ck.read_lineage(run_dir)
    overrides = {k: v for k, v in m.items() if k != "preset" and v is not None}
    if lineage.get("model"):          # an RL parent records its resolved model
        return ModelConfig(**{**lineage["model"], **overrides}).validate()
    parent_model = dict(lineage.get("config", {}).get("model") or {})
    if not parent_model.get("preset"):
        raise ConfigError(f"parent run {run_dir} records no model config; set --config.model.preset")
    parent_model.update(overrides)
    return model_config_from_dict(parent_model)


def grpo_config(config):
    from interplay_jax.rl.grpo import GRPOConfig
    g = config.grpo
    const = float(g.get("dr_grpo_constant", 0) or 0) or float(config.rl.max_response_len)
    return GRPOConfig(clip_eps=float(g.clip_eps), dual_clip=float(g.dual_clip), kl_coef=float(g.kl_coef),
                      entropy_coef=float(g.entropy_coef), loss_agg=str(g.loss_agg), dr_grpo_constant=const,
                      temperature=float(config.rl.temperature) if bool(g.get("logprob_temperature", False)) else 1.0)


class RolloutProducer:
    """``produce(state, step) -> (device rollouts, host metrics)`` for the shared loop."""

    def __init__(self, config, *, graphdef, model_cfg, tokenizer, prompts, reward, mesh, ref_params,
                 logprob_fn, samples_path=None):
        from interplay_jax.model.qwen2 import abstract_model
        from interplay_jax.rl.sampler import DEFAULT_BUCKETS, Sampler
        self.c = config.rl
        self.seed = int(config.seed)
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.reward = reward
        self.mesh = mesh
        self.ref_params = ref_params
        self.logprob_fn = logprob_fn
        self.std_normalize = bool(config.grpo.std_normalize)
        self.samples_path = samples_path
        self.stop_ids = [tokenizer.token_to_id(t) for t in STOP_TOKENS]
        self.pad_id = int(tokenizer.pad_id)
        buckets = [int(b) for b in str(self.c.get("prompt_buckets", "") or "").split(",") if b.strip()]
        self.buckets = tuple(buckets) or DEFAULT_BUCKETS
        self.sampler = Sampler(abstract_model(model_cfg), pad_id=self.pad_id, prompt_buckets=self.buckets)
        self.rows = int(self.c.num_prompts) * int(self.c.n)
        self.filtered_total = 0

    def __call__(self, state, step: int):
        from interplay_jax.rl import grpo
        from interplay_jax.rl.sampler import bucket_length, rollout
        from interplay_jax.task.verify import verify
        from interplay_jax.train import sharding as shd

        c, n = self.c, int(self.c.n)
        t0 = time.perf_counter()
        records = self.prompts.step_records(step, int(c.num_prompts))
        prompt_ids = [self.tokenizer.encode_prompt(r) for r in records]
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), int(step))
        out = rollout(self.sampler, state["params"], prompt_ids, max_prompt_len=int(c.max_prompt_len),
                      batch_prompts=int(c.rollout_batch_prompts) or None, n=n,
                      max_new_tokens=int(c.max_response_len), temperature=float(c.temperature),
                      top_p=float(c.top_p), top_k=int(c.top_k), key=key, stop_ids=self.stop_ids)
        res, kept = out.result, out.kept
        self.filtered_total += out.num_filtered
        t_sample = time.perf_counter() - t0

        responses = self.tokenizer.decode_batch(res.completions())
        golds = [records[kept[int(i)]]["solution"] for i in res.prompt_index]
        verdicts = [verify(g, r) for g, r in zip(golds, responses)]
        rewards = np.array([self.reward.from_verdict(v) for v in verdicts], np.float32)
        adv = grpo.group_advantages(rewards, n, std_normalize=self.std_normalize) if len(rewards) else rewards
        kept_prompts = [prompt_ids[i] for i in kept]
        p_len = bucket_length(max((len(p) for p in kept_prompts), default=1), self.buckets)
        batch = grpo.assemble_rollouts(kept_prompts, res.tokens, res.lengths, res.prompt_index, prompt_len=p_len,
                                       pad_id=self.pad_id, num_rows=self.rows)
        batch["advantages"] = np.zeros((self.rows,), np.float32)
        batch["advantages"][:len(adv)] = adv
        batch = shd.make_global_batch(batch, self.mesh)
        if self.ref_params is not None:
            batch["ref_logprobs"] = self.logprob_fn(self.ref_params, batch["tokens"], batch["valid_mask"])
        t_score = time.perf_counter() - t0 - t_sample

        lengths = res.lengths.astype(np.float64)
        groups = rewards.reshape(-1, n) if len(rewards) else np.zeros((0, n))
        host = {
            "reward_mean": float(rewards.mean()) if len(rewards) else 0.0,
            "reward_std": float(rewards.std()) if len(rewards) else 0.0,
            "verified_acc": float(np.mean([v.verified_correct for v in verdicts])) if verdicts else 0.0,
            "answer_acc": float(np.mean([v.answer_correct for v in verdicts])) if verdicts else 0.0,
            "process_acc": float(np.mean([v.process_acc for v in verdicts])) if verdicts else 0.0,
            "response_len": float(lengths.mean()) if len(lengths) else 0.0,
            "response_len_max": float(lengths.max()) if len(lengths) else 0.0,
            "truncated_frac": float(np.mean(~res.done)) if len(res.done) else 0.0,
            "zero_adv_group_frac": float(np.mean(groups.std(axis=1) == 0)) if len(groups) else 0.0,
            "filtered_prompts": float(out.num_filtered),
            "prompt_len": float(np.mean([len(p) for p in kept_prompts])) if kept_prompts else 0.0,
            "tokens": float(lengths.sum()),
            "sample_s": t_sample,
            "score_s": t_score,
        }
        if self.samples_path is not None and jax.process_index() == 0:
            digest = hashlib.sha256(np.ascontiguousarray(res.tokens).tobytes()).hexdigest()[:16]
            example = {}
            if len(responses):
                r0 = records[kept[int(res.prompt_index[0])]]
                example = {"op": r0.get("op"), "template": r0.get("template"), "response": responses[0],
                           "gold": r0.get("solution"), "reward": float(rewards[0])}
            line = {"step": int(step) + 1, "rollout_digest": digest, "reward_mean": host["reward_mean"],
                    "verified_acc": host["verified_acc"], "filtered_prompts": out.num_filtered, "example": example}
            with open(self.samples_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")
        return batch, host


def run(config):
    from interplay_jax.rl import grpo
    from interplay_jax.rl.data import prompt_source_from_config
    from interplay_jax.rl.edge import resolve_edge
    from interplay_jax.stages.train import load_tokenizer, quiet_logs
    from interplay_jax.task.rewards import get_reward
    from interplay_jax.train import lm_step, optim
    from interplay_jax.train import sharding as shd
    from interplay_jax.train.loop import ScalarWriter, run_loop

    t0 = time.time()
    quiet_logs()
    reward = get_reward(str(config.rl.reward))       # unknown name: ConfigError before any compute
    workdir = pathlib.Path(str(config.workdir)).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    shd.initialize_distributed(config.get("distributed"))
    if jax.process_count() > 1:
        raise ConfigError(f"the rl stage runs in one process (any number of local devices); got "
                          f"{jax.process_count()} processes")
    mesh = shd.mesh_from_config(config.get("mesh"))
    rows = int(config.rl.num_prompts) * int(config.rl.n)
    dp = shd.batch_size_multiple(mesh)
    k = int(config.rl.num_minibatches)
    micro = int(config.rl.micro_batch_size or 0) or rows // k
    if micro % dp:
        raise ConfigError(f"rl micro-batch of {micro} rollouts does not divide by mesh data x fsdp={dp}")

    tokenizer = load_tokenizer(config.tokenizer)
    edge = resolve_edge(config, workdir)             # None unless data.mixture == "edge"
    prompts = prompt_source_from_config(config, edge)
    steps = total_steps(config, len(prompts))
    lineage_path = workdir / ck.LINEAGE_FILE
    if ck.complete_steps(workdir) and lineage_path.exists():  # resuming: the model this run recorded
        from interplay_jax.model.qwen2 import ModelConfig
        model_cfg = ModelConfig(**ck.read_lineage(workdir)["model"]).validate()
    else:
        model_cfg = model_config_for(config)
    checkpointer = ck.Checkpointer(workdir, max_to_keep=int(config.keep_checkpoints))
    span = int(config.rl.max_prompt_len) + int(config.rl.max_response_len)
    if span > model_cfg.max_position_embeddings:
        raise ConfigError(f"rl: max_prompt_len + max_response_len = {span} exceeds the model's "
                          f"max_position_embeddings={model_cfg.max_position_embeddings}")
    # the original tokenizer file has 2,201 entries for a 2,200-row model (its last id is never used)
    if tokenizer.vocab_size > model_cfg.vocab_size + 1:
        raise ConfigError(f"tokenizer has {tokenizer.vocab_size} entries but model.vocab_size={model_cfg.vocab_size}")
    shd.check_divisibility(model_cfg, mesh)

    ocfg = _optimizer_config(config, steps)
    schedule = optim.make_schedule(ocfg)
    tx = optim.make_optimizer(ocfg, schedule)
    # shapes only: every state leaf comes from a checkpoint (no random init to compile)
    graphdef, abstract = lm_step.abstract_state(model_cfg, tx)
    state_sh = shd.state_shardings(abstract, mesh)
    target = ck.abstract_target(abstract, state_sh)
    gcfg = grpo_config(config)

    start, parent = 0, None
    if checkpointer.latest_step() is not None:
        state, _, meta = checkpointer.restore(target=target)
        start = int(checkpointer.latest_step())
        parent = meta.get("parent")
        print(f"rl: resuming {workdir} from step {start}/{steps}")
    else:
        init_step = int(config.init_step) if int(config.init_step) >= 0 else None
        params, prun, pstep = ck.restore_params(str(config.init_from), target=target["params"], step=init_step)
        opt_state = jax.jit(tx.init, out_shardings=state_sh["opt_state"])(params)
        state = {"step": jax.device_put(np.zeros((), np.int32), state_sh["step"]), "params": params,
                 "opt_state": opt_state}
        parent = {"run_dir": str(prun), "step": int(pstep)}
        print(f"rl: starting from {prun} step {pstep} (params; fresh optimizer)")
    if start == 0 or not lineage_path.exists():
        extra = {} if edge is None else {"edge": {k: v for k, v in edge.items() if k != "prompts"}}
        ck.write_lineage(workdir, "rl", config, parent, model_params=model_cfg.num_params(),
                         model=dataclasses.asdict(model_cfg), **extra)

    ref_params = None
    if gcfg.kl_coef > 0:
        if parent is None:
            raise ConfigError(f"{workdir}: cannot find the parent run for the KL reference (no lineage parent)")
        ref_params, _, _ = ck.restore_params(parent["run_dir"], target=target["params"], step=int(parent["step"]))
    mb = int(config.rl.micro_batch_size or 0) or None
    logprob_fn = grpo.make_logprob_fn(graphdef, temperature=gcfg.temperature, micro_batch_size=mb, mesh=mesh,
                                      param_shardings=state_sh["params"], batch_sharding=shd.batch_sharding(mesh))
    grpo_step = grpo.make_grpo_step(graphdef, tx, gcfg, num_minibatches=k, micro_batch_size=mb, mesh=mesh,
                                    state_shardings=state_sh, batch_sharding=shd.batch_sharding(mesh))
    produce = RolloutProducer(config, graphdef=graphdef, model_cfg=model_cfg, tokenizer=tokenizer, prompts=prompts,
                              reward=reward, mesh=mesh, ref_params=ref_params, logprob_fn=logprob_fn,
                              samples_path=workdir / "samples.jsonl")

    def step_fn(state, batch):
        arrays, host = batch
        lr = float(schedule(int(state["step"])))
        state, metrics = grpo_step(state, arrays)
        return state, {**metrics, **host, "lr": lr}

    is_main = jax.process_index() == 0
    tb_dir = workdir / "tb"
    writer = ScalarWriter(str(tb_dir)) if is_main else None
    meta = {"stage": "rl", "config": ck.config_to_dict(config), "parent": parent}
    def on_log(at, row):
        from tqdm.auto import tqdm
        tqdm.write(f"  rl {at}: reward {row['reward_mean']:.3f} (std {row['reward_std']:.3f}) | verified "
                   f"{row['verified_acc']:.3f} | answer {row['answer_acc']:.3f} | length {row['response_len']:.0f}"
                   f" (cut {row['truncated_frac']:.2f}) | kl {row.get('kl', 0.0):.2e} | clip {row['clip_frac']:.3f}"
                   f" | entropy {row['entropy']:.3f}")

    result = run_loop(step_fn=step_fn, state=state, batches=produce, total_steps=steps, start_step=start,
                      checkpointer=checkpointer, log_every=int(config.log_every), ckpt_every=int(config.ckpt_every),
                      writer=writer, meta=meta, desc="rl", progress=bool(config.get("progress", True)),
                      on_log=on_log)
    checkpointer.close()
    if writer is not None:
        writer.close()
    last = result.history[-1] if result.history else {}
    summary = {
        "stage": "rl", "run_dir": str(workdir), "steps": result.step, "total_steps": steps,
        "reason": result.reason, "checkpoint": result.last_checkpoint,
        "checkpoints_dir": str(checkpointer.directory), "tensorboard_dir": str(tb_dir),
        "model_params": model_cfg.num_params(), "reward": reward.name, "mixture": str(config.data.mixture),
        "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "history": [{k: v for k, v in row.items() if isinstance(v, (int, float))} for row in result.history],
        "filtered_prompts": produce.filtered_total,
        "params_digest": ck.params_digest(result.state["params"]) if result.reason == "done" else None,
        "parent": parent, "wall_s": round(time.time() - t0, 1),
    }
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        f = summary["final"]
        print(f"rl: {result.reason} at step {result.step}/{steps}"
              + (f", reward {f['reward_mean']:.3f}, verified {f['verified_acc']:.3f}" if "reward_mean" in f else "")
              + f"; checkpoints {checkpointer.directory}; tensorboard {tb_dir}")
    return summary
