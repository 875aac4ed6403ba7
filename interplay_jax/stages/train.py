"""Stage runner for next-token training: ``pretrain`` and ``midtrain`` (SPEC §3-§4).

``run(config)``:
1. mesh, model config, optimizer/schedule (total steps = total_tokens // (batch_size * seq_len));
2. state: resume from ``WORKDIR/checkpoints`` if any (params, optimizer, step, data-iterator
   state: rerunning the same command continues the same run); else ``init_from`` (a parent run dir
   [+ ``init_step``]): the parent's params with a fresh optimizer and schedule; else from scratch;
3. data: the grain pipeline (generator on the fly, or JSONL in the published layout with a token
   budget per op from the mixture), minus every held-out record (by content hash);
4. the shared loop (interplay_jax.train.loop) with held-out loss per op bucket as eval;
5. ``WORKDIR/lineage.json`` (stage, config, parent) and ``WORKDIR/summary.json``.
"""
from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np

from interplay_jax import checkpoint as ck
from interplay_jax.data import pipeline as dp
from interplay_jax.errors import ConfigError


# ---------------------------------------------------------------------------- config helpers


def total_steps(config) -> int:
    """Optimizer steps of a run: ``total_steps`` if > 0, else total_tokens // tokens per batch."""
    if int(config.get("total_steps", 0) or 0) > 0:
        return int(config.total_steps)
    return int(config.total_tokens) // (int(config.batch_size) * int(config.seq_len))


def parse_buckets(spec: str) -> list[tuple[str, list[int]]]:
    """"ID:2-10,OOD-edge:11-14" -> [("ID", [2..10]), ("OOD-edge", [11..14])]."""
    out = []
    for part in [p.strip() for p in str(spec).split(",") if p.strip()]:
        name, sep, rng = part.partition(":")
        try:
            lo, _, hi = rng.partition("-")
            lo, hi = int(lo), int(hi or lo)
        except ValueError:
            raise ConfigError(f"eval.buckets entry {part!r} must look like NAME:LO-HI (e.g. ID:2-10)") from None
        if not sep or not name or lo > hi:
            raise ConfigError(f"eval.buckets entry {part!r} must look like NAME:LO-HI (e.g. ID:2-10)")
        out.append((name, list(range(lo, hi + 1))))
    return out


def load_tokenizer(path):
    """The task layer's tokenizer wrapper for a tokenizer.json."""
    from interplay_jax.task.tokenizer import load_tokenizer as load
    p = pathlib.Path(str(path))
    if not p.is_file():
        raise ConfigError(f"tokenizer file {p} does not exist (train one with configs/tokenizer.py)")
    return load(str(p))


def mixture_of(config):
    """The config's mixture: a preset name, or a JSON list/dict of components
    (e.g. ``'[{"ops": [2, 3], "weight": 1, "contexts": ["A"]}]'``)."""
    import json as json_lib

    from interplay_jax.task.mixture import get_mixture
    modes = [m.strip() for m in str(config.get("modes", "normalforward")).split(",") if m.strip()]
    spec = config.mixture
    if isinstance(spec, str) and spec.strip()[:1] in ("[", "{"):
        try:
            spec = json_lib.loads(spec)
        except json_lib.JSONDecodeError as e:
            raise ConfigError(f"mixture is not valid JSON ({e.msg}): {config.mixture}") from None
    return get_mixture(spec, modes=modes)


# ---------------------------------------------------------------------------- data


def heldout_records(config, mixture) -> dict[str, list[dict]]:
    """Held-out records per op bucket (never trained on): JSONL ``heldout/`` (else ``val/``) split
    when the data are files, else generated with the held-out split seed."""
    from interplay_jax.task.mixture import get_mixture
    from interplay_jax.task.writer import split_seed
    buckets = parse_buckets(config.eval.buckets)
    n = int(config.eval.per_bucket)
    out = {}
    if config.data.source == "jsonl":
        recs = []
        for split in ("heldout", "val"):
            recs = [r for f in dp.split_files(config.data.data_dir, split) for r in dp._read_jsonl(f)]
            if recs:
                break
        for name, ops in buckets:
            sel = [r for r in recs if r["op"] in ops][:n]
            if sel:
                out[name] = sel
        return out
    if n <= 0:
        return out
    seed = split_seed(int(config.seed), "heldout")
    for name, ops in buckets:
        m = get_mixture({"ops": ops, "contexts": sorted({c for comp in mixture.components for c in comp.contexts})})
        out[name] = [m.record(seed, i) for i in range(n)]
    return out


def build_train_data(config, tokenizer, mixture, exclude: set[str], steps: int):
    if str(config.data.get("exclude", "")):
        exclude |= dp.hashes_of_paths(str(config.data.exclude))
    pc = jax.process_count()
    local_batch = int(config.batch_size) // pc
    kwargs = dict(seq_len=int(config.seq_len), batch_size=local_batch, pad_id=int(tokenizer.pad_id),
                  exclude_hashes=exclude, buffer_docs=int(config.data.buffer_docs),
                  num_threads=int(config.data.num_threads))
    if config.data.source == "jsonl":
        from interplay_jax.task.formats import format_document
        exclude |= dp.heldout_hashes(config.data.data_dir)
        total = int(config.batch_size) * int(config.seq_len) * steps
        budgets = {op: int(np.ceil(p * total)) for op, p in mixture.op_probs().items()}
        count = lambda r: len(tokenizer.encode(format_document(r))) + 1  # noqa: E731
        records = dp.load_train_records(config.data.data_dir, budgets, count)
        return dp.build_dataset(records, tokenizer.encode_document, shuffle_seed=int(config.seed),
                                num_epochs=None, **{**kwargs, "exclude_hashes": exclude})
    from interplay_jax.task.writer import split_seed
    source = dp.GeneratorSource(mixture, split_seed(int(config.seed), "train"))
    return dp.build_dataset(source, tokenizer.encode_document, **kwargs)


# ---------------------------------------------------------------------------- the stage


def quiet_logs():
    """orbax / absl log every checkpoint step at INFO: keep the console to our own lines."""
    import logging

    from absl import logging as absl_logging
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)


def _optimizer_config(config, steps):
    o = config.optimizer.to_dict() if hasattr(config.optimizer, "to_dict") else dict(config.optimizer)
    o["total_steps"] = steps
    import ml_collections
    return ml_collections.ConfigDict(o)


def run(config):
    from interplay_jax.model.qwen2 import model_config_from_dict
    from interplay_jax.train import lm_step, optim
    from interplay_jax.train import sharding as shd
    from interplay_jax.train.loop import ScalarWriter, run_loop

    t0 = time.time()
    quiet_logs()
    stage = str(config.stage)
    workdir = pathlib.Path(str(config.workdir)).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    shd.initialize_distributed(config.get("distributed"))
    mesh = shd.mesh_from_config(config.get("mesh"))
    model_cfg = model_config_from_dict(config.model)
    steps = total_steps(config)
    shd.check_divisibility(model_cfg, mesh, int(config.batch_size), int(config.grad_accum_steps))
    shd.check_divisibility(model_cfg, mesh, int(config.eval.batch_size))
    ocfg = _optimizer_config(config, steps)
    schedule = optim.make_schedule(ocfg)
    tx = optim.make_optimizer(ocfg, schedule)
    tokenizer = load_tokenizer(config.tokenizer)
    mixture = mixture_of(config)

    checkpointer = ck.Checkpointer(workdir, max_to_keep=int(config.keep_checkpoints))
    graphdef, state = lm_step.init_state(model_cfg, tx, int(config.seed), mesh)
    state_sh = lm_step.shardings_of(state)
    start, data_state, parent = 0, None, None
    lineage_path = workdir / ck.LINEAGE_FILE
    if checkpointer.latest_step() is not None:
        state, data_state, meta = checkpointer.restore(target=ck.abstract_target(state))
        start = int(checkpointer.latest_step())
        parent = meta.get("parent")
        print(f"{stage}: resuming {workdir} from step {start}/{steps}")
    elif str(config.init_from):
        init_step = int(config.init_step) if int(config.init_step) >= 0 else None
        params, prun, pstep = ck.restore_params(str(config.init_from), target=state["params"], step=init_step)
        state = {**state, "params": params, "opt_state": tx.init(params)}
        state = jax.device_put(state, state_sh)
        parent = {"run_dir": str(prun), "step": int(pstep)}
        print(f"{stage}: starting from {prun} step {pstep} (params; fresh optimizer and schedule)")
    elif lineage_path.exists():
        parent = ck.read_lineage(workdir).get("parent")
    if start >= steps and (workdir / "summary.json").is_file():
        checkpointer.close()
        print(f"{stage}: {workdir} already finished ({start}/{steps} steps); nothing to do")
        return json.loads((workdir / "summary.json").read_text())
    if jax.process_index() == 0 and (not lineage_path.exists() or start == 0):
        ck.write_lineage(workdir, stage, config, parent, model_params=model_cfg.num_params())

    heldout = heldout_records(config, mixture)
    exclude = {dp.record_hash(r) for recs in heldout.values() for r in recs}
    dataset = build_train_data(config, tokenizer, mixture, set(exclude), steps)
    iterator = iter(dataset)
    if data_state is not None:
        iterator.set_state(data_state)

    step_fn = lm_step.make_lm_step(graphdef, tx, schedule, mesh=mesh, state_shardings=state_sh,
                                   grad_accum_steps=int(config.grad_accum_steps),
                                   document_mask=bool(config.document_mask))
    put = lambda b: shd.make_global_batch(b, mesh)  # noqa: E731
    eval_fn = _make_eval_fn(config, graphdef, mesh, state_sh, tokenizer, heldout)

    is_main = jax.process_index() == 0
    tb_dir = workdir / "tb"
    writer = ScalarWriter(tb_dir) if is_main else None
    meta = {"stage": stage, "config": ck.config_to_dict(config), "parent": parent}
    peak = float(config.peak_flops) * jax.device_count()
    result = run_loop(step_fn=step_fn, state=state, batches=iterator, total_steps=steps, start_step=start,
                      checkpointer=checkpointer, log_every=int(config.log_every),
                      ckpt_every=int(config.ckpt_every), eval_every=int(config.eval_every), eval_fn=eval_fn,
                      writer=writer, flops_per_token=model_cfg.flops_per_token(int(config.seq_len)),
                      peak_flops=peak, meta=meta, desc=stage, put_batch=put)
    checkpointer.close()
    if writer is not None:
        writer.close()
    last = result.history[-1] if result.history else {}
    summary = {
        "stage": stage, "run_dir": str(workdir), "steps": result.step, "total_steps": steps,
        "reason": result.reason, "checkpoint": result.last_checkpoint,
        "checkpoints_dir": str(checkpointer.directory), "tensorboard_dir": str(tb_dir),
        "model_params": model_cfg.num_params(), "mixture": str(config.mixture),
        "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
        "dropped_long_documents": dp.dropped_documents(iterator),
        "params_digest": (ck.params_digest(result.state["params"]) if result.reason == "done"
                          and jax.process_count() == 1 else None),  # multi-host: python -m interplay_jax.lineage --digest
        "parent": parent, "wall_s": round(time.time() - t0, 1),
    }
    if result.reason == "interrupted":   # checkpoint saved; main prints "interrupted..." and exits 130
        raise KeyboardInterrupt(f"{stage} interrupted at step {result.step}")
    if is_main:
        (workdir / "summary.json").write_text(json.dumps(summary, indent=2))
        loss = summary["final"].get("loss")
        print(f"{stage}: {result.reason} at step {result.step}/{steps}"
              + (f", loss {loss:.4f}" if loss is not None else "")
              + f"; checkpoints {checkpointer.directory}; tensorboard {tb_dir}")
    return summary


def _make_eval_fn(config, graphdef, mesh, state_sh, tokenizer, heldout):
    """Held-out loss per op bucket (token-weighted mean), or None when eval is off."""
    if not heldout:
        return None
    from interplay_jax.train import lm_step
    from interplay_jax.train import sharding as shd
    eval_step = lm_step.make_eval_step(graphdef, mesh=mesh, param_shardings=state_sh["params"],
                                       document_mask=bool(config.document_mask))
    bs = int(config.eval.batch_size)
    rows = shd.local_batch_slice(bs, mesh)
    batches = {name: dp.eval_batches(recs, tokenizer.encode_document, seq_len=int(config.seq_len),
                                     batch_size=bs, pad_id=int(tokenizer.pad_id))
               for name, recs in heldout.items()}

    sampled = _make_sampled_eval(config, graphdef, heldout)

    def eval_fn(state):
        out = sampled(state) if sampled else {}
        for name, bl in batches.items():
            loss_sum, tokens = 0.0, 0
            for b in bl:
                r = eval_step(state["params"], shd.make_global_batch({k: v[rows] for k, v in b.items()}, mesh))
                loss_sum += float(np.asarray(r["loss_sum"]).sum())
                tokens += int(np.asarray(r["tokens"]).sum())
            if tokens:
                out[f"heldout_loss/{name}"] = loss_sum / tokens
        return out

    return eval_fn


def _make_sampled_eval(config, graphdef, heldout):
    """Small-n pass@k on held-out prompts (``eval.sample_prompts`` per bucket, ``eval.sample_n``
    samples each, strict and answer-only), logged beside the held-out loss; None when off."""
    import jax

    from interplay_jax import config as config_lib
    from interplay_jax.eval.evalset import eval_item
    from interplay_jax.eval.evaluate import Tok, make_eval_fn
    from interplay_jax.model.qwen2 import model_config_from_dict

    per_bucket = int(config.eval.get("sample_prompts", 0) or 0)
    if per_bucket <= 0 or jax.process_count() > 1:
        return None
    items = [eval_item(r) for recs in heldout.values() for r in recs[:per_bucket]]
    fn = make_eval_fn(graphdef, Tok(str(config.tokenizer)), items, cfg=model_config_from_dict(config.model),
                      n=int(config.eval.get("sample_n", 4)), max_new_tokens=int(config.eval.get("sample_max_new_tokens", 256)),
                      buckets=config_lib.parse_buckets(str(config.eval.buckets)))
    return lambda state: {f"sampled/{k}": v for k, v in fn(state).items()}
