"""Stage runner for next-token training: ``pretrain`` and ``midtrain``.

``run(config)``: mesh, model, optimizer (total steps = total_tokens // (batch_size * seq_len)); the
state resumes from ``WORKDIR/checkpoints`` (params, optimizer, step and data-iterator state: rerunning
the same command continues the same run), else starts from ``init_from``'s params with a fresh
optimizer and schedule, else from scratch; data from the grain pipeline (the generator on the fly,
or JSONL in the published layout with a token budget per op), minus every held-out record (by
content hash); the shared loop with held-out loss per op bucket (and optionally sampled pass@k) as
its eval; ``lineage.json`` and ``summary.json``.
"""
from __future__ import annotations

import json
import pathlib

import jax
import numpy as np

from interplay_jax import checkpoint as ck
from interplay_jax.config import parse_buckets, parse_list, require
from interplay_jax.data import pipeline as dp
from interplay_jax.data.shards import MANIFEST as SHARD_MANIFEST
from interplay_jax.data.shards import TokenShardSource, TokenStream, check_shards
from interplay_jax.errors import ConfigError
from interplay_jax.eval.evalset import eval_item
from interplay_jax.eval.evaluate import make_eval_fn
from interplay_jax.sampling.policy import init_model_config, is_hf_dir
from interplay_jax.stages.skeleton import StageRun, load_tokenizer
from interplay_jax.task.mixture import get_mixture
from interplay_jax.task.writer import (check_jsonl_shards, hashes_of_paths, read_jsonl, record_hash, split_files,
                                      split_seed)
from interplay_jax.train import lm_step, optim
from interplay_jax.train import sharding as shd
from interplay_jax.train.loop import DevicePrefetch, Loop, LoopSettings


def run(config):
    run = StageRun(config)
    model_cfg = init_model_config(config.model, str(config.init_from))  # an HF parent: its config.json
    steps = total_steps(config)
    accum = grad_accum_steps(config, run.mesh)
    shd.check_divisibility(model_cfg, run.mesh, int(config.batch_size), accum)
    shd.check_divisibility(model_cfg, run.mesh, int(config.eval.batch_size))
    schedule, tx = optim.optimizer_for(config.optimizer, steps)
    tokenizer, tok_info = load_tokenizer(config)
    mixture = mixture_of(config)

    graphdef, abstract = lm_step.abstract_state(model_cfg, tx)
    shardings = shd.state_shardings(abstract, run.mesh)
    start = run.start(abstract, shardings, tx,
                      fresh=lambda: lm_step.init_state(model_cfg, tx, int(config.seed), run.mesh)[1])
    if run.finished(start, steps):
        return run.previous_summary()
    run.write_lineage(start, model_cfg, tokenizer=tok_info)

    heldout = heldout_records(config, mixture)
    exclude = {record_hash(r) for recs in heldout.values() for r in recs}
    iterator = iter(build_train_data(config, tokenizer, tok_info, mixture, exclude, steps))
    if start.data_state is not None:
        iterator.set_state(_iterator_state(config, start.data_state))
    batches = DevicePrefetch(iterator, lambda b: shd.make_global_batch(b, run.mesh), int(config.data.prefetch))
    step_fn = lm_step.make_lm_step(graphdef, tx, schedule, mesh=run.mesh, state_shardings=shardings,
                                   grad_accum_steps=accum, document_mask=bool(config.document_mask))
    settings = LoopSettings(total_steps=steps, log_every=int(config.log_every), ckpt_every=int(config.ckpt_every),
                            eval_every=int(config.eval_every), desc=run.stage,
                            progress=bool(config.get("progress", True)),
                            flops_per_token=model_cfg.flops_per_token(int(config.seq_len)),
                            peak_flops=float(config.peak_flops) * jax.device_count())
    eval_fn = make_heldout_eval(config, graphdef, model_cfg, run.mesh, shardings, tokenizer, heldout)
    loop = Loop(settings, **run.hooks(start), eval_fn=eval_fn)
    try:
        result = loop.run(step_fn, start.state, batches, start_step=start.step,
                          data_state_fn=lambda: {**_data_settings(config), "iterator": batches.get_state()})
    finally:
        batches.close()
        if hasattr(iterator, "close"):
            iterator.close()
    loss = (result.history[-1] if result.history else {}).get("loss")
    return run.finish(result, steps, model_cfg, start, headline=f", loss {loss:.4f}" if loss is not None else "",
                      mixture=str(config.mixture), dropped_long_documents=dp.dropped_documents(iterator),
                      seconds={k: round(v, 1) for k, v in loop.seconds.items()})


# ---------------------------------------------------------------------------- config


def total_steps(config) -> int:
    """Optimizer steps of a run: ``total_steps`` if > 0, else total_tokens // tokens per batch."""
    if int(config.get("total_steps", 0) or 0) > 0:
        return int(config.total_steps)
    return int(config.total_tokens) // (int(config.batch_size) * int(config.seq_len))


def grad_accum_steps(config, mesh) -> int:
    """Micro-steps per optimizer step: ``batch_size`` / (``per_device_batch`` x data-parallel devices)
    when ``per_device_batch`` is set (the global batch stays as configured on 1 or 1,000 devices),
    else ``grad_accum_steps``."""
    per_device = int(config.get("per_device_batch", 0) or 0)
    if not per_device:
        return int(config.grad_accum_steps)
    rows = per_device * shd.batch_size_multiple(mesh)
    require(int(config.batch_size) % rows == 0,
            f"{config.stage}: batch_size={config.batch_size} is not a multiple of per_device_batch={per_device} x "
            f"{shd.batch_size_multiple(mesh)} data-parallel devices")
    return int(config.batch_size) // rows


def _data_settings(config) -> dict:
    """What the data iterator's checkpointed state depends on: resuming needs the same values."""
    return {"source": str(config.data.source), "workers": int(config.data.workers),
            "buffer_docs": int(config.data.buffer_docs)}


def _iterator_state(config, saved):
    """The iterator state of a checkpoint's data state, after checking it was made with this data
    setting (a state saved by an older version is the bare iterator state, made in-process)."""
    if not (isinstance(saved, dict) and "iterator" in saved):
        saved = {"source": str(config.data.source), "workers": 0, "buffer_docs": int(config.data.buffer_docs),
                 "iterator": saved}
    now = _data_settings(config)
    for key, value in now.items():
        require(saved.get(key) == value, f"{config.stage}: the checkpoint's data stream was made with data.{key}="
                                         f"{saved.get(key)}, this run has {value}: resume with "
                                         f"--config.data.{key}={saved.get(key)} (the stream depends on it)")
    return saved["iterator"]


def mixture_of(config):
    """The config's mixture: a preset name, or a JSON list/dict of components
    (e.g. ``'[{"ops": [2, 3], "weight": 1, "contexts": ["A"]}]'``)."""
    spec = config.mixture
    if isinstance(spec, str) and spec.strip()[:1] in ("[", "{"):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ConfigError(f"mixture is not valid JSON ({e.msg}): {config.mixture}") from None
    return get_mixture(spec, modes=parse_list(config.get("modes", "normalforward")))


def validate(config, check_files: bool = True) -> None:
    """Everything that can be checked before any compute. ``check_files=False`` (inside a pipeline,
    before earlier stages ran) skips the files those stages make (tokenizer, parent, JSONL data)."""
    stage = config.stage
    for key in ("workdir", "seed", "mixture", "tokenizer", "model", "seq_len", "batch_size", "total_tokens",
                "optimizer", "data", "eval", "init_from"):
        require(key in config, f"{stage} config has no {key!r} field")
    require(str(config.workdir) != "", f"{stage}: workdir is empty")
    mixture_of(config)                                   # unknown op / context / mode -> ConfigError
    parse_buckets(config.eval.buckets)
    model_cfg = init_model_config(config.model, str(config.init_from))
    seq_len, batch = int(config.seq_len), int(config.batch_size)
    require(seq_len > 1 and batch > 0, f"{stage}: seq_len={seq_len} and batch_size={batch} must be positive")
    require(seq_len <= model_cfg.max_position_embeddings,
            f"{stage}: seq_len={seq_len} exceeds model max_position_embeddings={model_cfg.max_position_embeddings}")
    accum = int(config.get("grad_accum_steps", 1))
    require(accum >= 1 and batch % accum == 0, f"{stage}: batch_size={batch} does not divide by grad_accum_steps={accum}")
    steps = total_steps(config)
    require(steps >= 1, f"{stage}: budget total_tokens={int(config.total_tokens)} is smaller than one batch "
                        f"(batch_size {batch} x seq_len {seq_len} = {batch * seq_len} tokens)")
    optim.optimizer_for(config.optimizer, steps)         # warmup >= total steps etc.
    for key in ("log_every", "ckpt_every", "eval_every", "keep_checkpoints"):
        require(int(config.get(key, 0)) >= 0, f"{stage}: {key}={config.get(key)} must be >= 0")
    require(int(config.log_every) >= 1, f"{stage}: log_every={config.log_every} must be >= 1")
    require(config.data.source in ("generator", "jsonl", "tokens"),
            f"{stage}: data.source={config.data.source!r}; expected generator, jsonl or tokens")
    for key in ("workers", "num_threads", "prefetch", "worker_buffer", "buffer_docs"):
        require(int(config.data.get(key, 0)) >= 0, f"{stage}: data.{key}={config.data.get(key)} must be >= 0")
    require(int(config.get("per_device_batch", 0) or 0) >= 0, f"{stage}: per_device_batch must be >= 0")
    require(int(config.eval.batch_size) >= 1, f"{stage}: eval.batch_size must be >= 1")
    if not check_files:
        return
    tok = str(config.tokenizer)
    require(not tok or pathlib.Path(tok).is_file(), f"{stage}: tokenizer {tok} does not exist (make one with "
                                                    f"configs/tokenizer.py, or leave it empty for the default one)")
    if config.data.source == "jsonl":
        train_dir = pathlib.Path(str(config.data.data_dir)) / "train"
        require(train_dir.is_dir(), f"{stage}: data.data_dir={config.data.data_dir!r} has no train/ directory "
                                    f"(expected the published layout train/op<N>/*.jsonl)")
        check_jsonl_shards(str(config.data.data_dir))    # a shard cut short -> DataError naming it
    if config.data.source == "tokens":
        check_shards(token_dir(config.data.data_dir))   # truncated / missing shard -> one DataError line
    resuming = bool(ck.complete_steps(str(config.workdir)))
    if str(config.init_from) and not resuming and not is_hf_dir(str(config.init_from)):
        step = int(config.get("init_step", -1))
        ck.resolve_checkpoint(str(config.init_from), None if step < 0 else step)  # missing -> ConfigError
    if stage == "midtrain":
        require(bool(str(config.init_from)) or resuming,
                "midtrain: init_from is empty; set --config.init_from=<pretrain run dir> (mid-training "
                "continues a pre-trained model)")


# ---------------------------------------------------------------------------- data


def heldout_records(config, mixture) -> dict[str, list[dict]]:
    """Held-out records per op bucket (never trained on): JSONL ``heldout/`` (else ``val/``) split
    when the data are files, else generated with the held-out split seed."""
    buckets = parse_buckets(config.eval.buckets)
    n = int(config.eval.per_bucket)
    out = {}
    if config.data.source in ("jsonl", "tokens"):
        recs = []
        for split in ("heldout", "val"):
            recs = [r for f in split_files(config.data.data_dir, split) for r in read_jsonl(f)]
            if recs:
                break
        for name, (lo, hi) in buckets.items():
            sel = [r for r in recs if lo <= r["op"] <= hi][:n]
            if sel:
                out[name] = sel
        return out
    if n <= 0:
        return out
    seed = split_seed(int(config.seed), "heldout")
    contexts = sorted({c for comp in mixture.components for c in comp.contexts})
    for name, (lo, hi) in buckets.items():
        m = get_mixture({"ops": list(range(lo, hi + 1)), "contexts": contexts})
        out[name] = [m.record(seed, i) for i in range(n)]
    return out


def build_train_data(config, tokenizer, tok_info, mixture, exclude: set[str], steps: int):
    """This host's training batches: the generator on the fly, the JSONL train split with a token
    budget per op (mixture probability x total tokens), or token shards, minus ``exclude`` and
    ``data.exclude`` (token shards: excluded when they were generated)."""
    d = config.data
    kwargs = dict(seq_len=int(config.seq_len), batch_size=int(config.batch_size) // jax.process_count(),
                  pad_id=int(tokenizer.pad_id), buffer_docs=int(d.buffer_docs), num_threads=int(d.num_threads),
                  workers=int(d.workers), worker_buffer=int(d.worker_buffer), process_index=jax.process_index(),
                  process_count=jax.process_count())
    if d.source == "tokens":
        root = token_dir(d.data_dir)
        manifest = check_shards(root, tokenizer_sha256=tok_info["sha256"], verify_contents=True)
        source = TokenShardSource(root, manifest)
        need = int(config.batch_size) * int(config.seq_len) * steps
        if source.tokens < need:
            msg = f"{root} holds {source.tokens:,} tokens, fewer than this run's {need:,}"
            require(not bool(d.get("strict", False)), f"{config.stage}: {msg}")
            print(f"note: {msg}; the data repeat (more than one epoch)")
        stream = TokenStream(source, int(config.seed), jax.process_index(), jax.process_count())
        return dp.build_dataset(stream, None, **kwargs)
    exclude = set(exclude) | hashes_of_paths(parse_list(d.get("exclude", "")))
    if d.source == "jsonl":
        exclude |= dp.heldout_hashes(d.data_dir)
        total = int(config.batch_size) * int(config.seq_len) * steps
        budgets = {op: int(np.ceil(p * total)) for op, p in mixture.op_probs().items()}
        records = dp.load_train_records(d.data_dir, budgets, lambda r: len(tokenizer.encode_document(r)))
        return dp.build_dataset(records, tokenizer.encode_documents, shuffle_seed=int(config.seed),
                                num_epochs=None, exclude_hashes=exclude, **kwargs)
    source = dp.GeneratorSource(mixture, split_seed(int(config.seed), "train"))
    return dp.build_dataset(source, tokenizer.encode_documents, exclude_hashes=exclude, **kwargs)


def token_dir(data_dir) -> pathlib.Path:
    """The token-shard directory of ``data_dir``: its ``tokens/`` (the generate stage's), or itself."""
    p = pathlib.Path(str(data_dir))
    return p / "tokens" if (p / "tokens" / SHARD_MANIFEST).is_file() else p


# ---------------------------------------------------------------------------- eval


def make_heldout_eval(config, graphdef, model_cfg, mesh, state_shardings, tokenizer, heldout):
    """``eval_fn(state)``: held-out loss per op bucket (token-weighted mean) and, with
    ``eval.sample_prompts > 0``, small-n sampled pass@k on held-out prompts. None when eval is off."""
    if not heldout:
        return None
    eval_step = lm_step.make_eval_step(graphdef, mesh=mesh, param_shardings=state_shardings["params"],
                                       document_mask=bool(config.document_mask))
    bs = int(config.eval.batch_size)
    rows = shd.local_batch_slice(bs, mesh)
    batches = {name: dp.eval_batches(recs, tokenizer.encode_document, seq_len=int(config.seq_len),
                                     batch_size=bs, pad_id=int(tokenizer.pad_id))
               for name, recs in heldout.items()}
    sampled = _sampled_eval(config, graphdef, model_cfg, tokenizer, heldout)

    def eval_fn(state):
        with shd.tracing_mesh(mesh):   # the sampler's inputs live on the mesh
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


def _sampled_eval(config, graphdef, model_cfg, tokenizer, heldout):
    """Small-n pass@k on held-out prompts (``eval.sample_prompts`` per bucket, ``eval.sample_n``
    samples each, strict and answer-only), logged beside the held-out loss; None when off."""
    per_bucket = int(config.eval.get("sample_prompts", 0) or 0)
    if per_bucket <= 0 or jax.process_count() > 1:
        return None
    items = [eval_item(r) for recs in heldout.values() for r in recs[:per_bucket]]
    fn = make_eval_fn(graphdef, model_cfg, tokenizer, items, n=int(config.eval.get("sample_n", 4)),
                      max_new_tokens=int(config.eval.get("sample_max_new_tokens", 256)),
                      buckets=parse_buckets(config.eval.buckets))
    return lambda state: {f"sampled/{k}": v for k, v in fn(state).items()}
