"""The ``eval`` stage: score one or more checkpoints on one eval set; write results, tables, figures.

``python -m interplay_jax.main --config=configs/eval.py[:cpu] --config.checkpoints=DIR1,DIR2``.
See configs/eval.py for the options and interplay_jax/eval/report.py for the results.json schema.
Every checkpoint is loaded (and its shape checked) before any sampling, so a bad one fails at once.
"""
from __future__ import annotations

import json
import pathlib
import re

import jax

from interplay_jax import checkpoint as ck
from interplay_jax.config import parse_buckets, parse_list, parse_ops, require
from interplay_jax.errors import ConfigError
from interplay_jax.eval import evalset, report
from interplay_jax.eval.evaluate import evaluate_items, gold_nll
from interplay_jax.sampling.policy import load_policy
from interplay_jax.sampling.sampler import Sampler
from interplay_jax.stages.skeleton import quiet_logs
from interplay_jax.task.contexts import get_context
from interplay_jax.task.writer import hashes_of_paths


def build_items(config) -> list[dict]:
    e = config.eval
    ops = parse_ops(e.ops)
    if e.source == "jsonl":
        return evalset.load_eval_files(str(e.files), ops=ops, per_op=e.per_op)
    return evalset.generate_evalset(ops=ops, contexts=parse_list(e.contexts), modes=parse_list(e.modes),
                                    per_op=e.per_op, seed=config.seed, exclude_hashes=hashes_of_paths(e.exclude))


EXAMPLE_PROMPTS, EXAMPLE_SAMPLES = 2, 2   # per op: prompts whose gold + first responses are stored


def example_texts(config, items) -> dict:
    """{item id: responses to store} for the first ``example_prompts`` prompts of each op (config
    fields ``example_prompts`` / ``example_samples`` when a config carries them; 0 turns it off)."""
    per_op = int(config.get("example_prompts", EXAMPLE_PROMPTS))
    keep = int(config.get("example_samples", EXAMPLE_SAMPLES))
    out, seen = {}, {}
    for it in items:
        seen[it["op"]] = seen.get(it["op"], 0) + 1
        if seen[it["op"]] <= per_op and keep > 0:
            out[it["id"]] = keep
    return out


def _names(config, paths) -> list[str]:
    names = parse_list(config.get("names", ""))
    if not names:
        names = [pathlib.Path(p).name or "ckpt" for p in paths]
    names = [re.sub(r"[^A-Za-z0-9_.+-]", "_", n) for n in names]
    seen: dict = {}
    out = []
    for n in names:  # make names unique (two runs may share a dir name)
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return out


def run(config) -> dict:
    """Evaluate every checkpoint of ``config.checkpoints`` into ``WORKDIR/<name>/``.

    One process per checkpoint output (``samples.jsonl`` is appended to and resumed from), not per
    workdir: evaluations of different checkpoints into one workdir may run side by side, as the
    experiment runner does (one process per checkpoint, benchmarks/run_experiment.py); each writes the
    combined report of its own checkpoints."""
    quiet_logs()
    workdir = pathlib.Path(config.workdir)
    paths = parse_list(config.checkpoints)
    names = _names(config, paths)
    locks = []
    try:
        for n in names:
            locks.append(ck.lock_workdir(workdir / n, "eval run"))
        return _run(config, workdir, paths, names)
    finally:
        for lock in locks:
            lock.release()


def _run(config, workdir: pathlib.Path, paths: list[str], names: list[str]) -> dict:
    overrides = {"dtype": config.model_dtype} if str(config.get("model_dtype", "")) else {}
    step = None if int(config.get("step", -1)) < 0 else int(config.step)
    loaded = [load_policy(p, tokenizer=str(config.tokenizer) or None, name=n, step=step, **overrides)
              for p, n in zip(paths, names)]
    for ld in loaded:
        if ld.tokenizer.answer_close_id >= ld.cfg.vocab_size:
            raise ConfigError(f"checkpoint {ld.name}: tokenizer id {ld.tokenizer.answer_close_id} of </answer> "
                              f"is outside the model vocabulary ({ld.cfg.vocab_size})")
    items = build_items(config)
    buckets = parse_buckets(config.buckets)
    s = config.sampling
    report.write_json(workdir / "eval_items.json", {"n_items": len(items), "ids": [it["id"] for it in items]})
    summaries, timings = {}, {}
    texts = example_texts(config, items)
    for ld in loaded:
        out = workdir / ld.name
        out.mkdir(exist_ok=True)
        sampler = Sampler(ld.graphdef, ld.cfg, pad_id=ld.tokenizer.pad_id)
        timing: dict = {}
        prompts = evaluate_items(
            sampler, ld.params, ld.tokenizer, items, n=s.n, max_new_tokens=s.max_new_tokens,
            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, batch_prompts=s.batch_prompts,
            max_prompt_len=s.max_prompt_len, key=jax.random.key(config.seed),
            samples_path=out / "samples.jsonl", progress=config.get("progress", True), timing=timing, texts=texts)
        nll = None
        if config.get("gold_nll", True):
            nll_file = out / "gold_nll.json"
            nll = json.loads(nll_file.read_text()) if nll_file.is_file() else {}
            todo = [it for it in items if it["id"] not in nll]
            if todo:
                nll.update(gold_nll(ld.graphdef, ld.params, ld.tokenizer, todo))
                report.write_json(nll_file, nll)
        summary = report.summarize(prompts, checkpoint=ld.name, buckets=buckets, nll=nll)
        summary["source"] = {"path": paths[names.index(ld.name)], "kind": ld.source, "step": ld.step}
        summary["timing"] = timing
        report.write_json(out / "results.json", summary)
        summaries[ld.name] = summary
        timings[ld.name] = timing
        _print_summary(ld.name, summary, timing)
    paths_out = report.write_report(workdir, summaries)
    print(f"eval: wrote {paths_out['results']} and {paths_out['markdown']}")
    return {"summaries": summaries, "paths": paths_out}


def _print_summary(name, summary, timing) -> None:
    parts = []
    for b, e in summary["pass_at_k"].items():
        ver = e["verified"]
        parts.append(f"{b} pass@1 {100 * ver[1]:.1f} pass@{max(ver)} {100 * ver[max(ver)]:.1f}")
    t = f" | sampling {timing.get('sampling', 0):.1f}s verification {timing.get('verification', 0):.1f}s"
    print(f"eval {name}: " + " | ".join(parts) + t)


def validate(config, check_files: bool = True) -> None:
    for key in ("workdir", "seed", "checkpoints", "eval", "sampling", "buckets"):
        require(key in config, f"eval config has no {key!r} field")
    ckpts = parse_list(config.checkpoints)
    require(bool(ckpts), "eval: no checkpoints; pass --config.checkpoints=DIR1[,DIR2,...]")
    names = parse_list(config.get("names", ""))
    require(not names or len(names) == len(ckpts),
            f"eval: {len(names)} names for {len(ckpts)} checkpoints (names={config.names!r})")
    e, s = config.eval, config.sampling
    require(e.source in ("generator", "jsonl"), f"eval.source={e.source!r}; expected generator or jsonl")
    require(e.source != "jsonl" or bool(str(e.files).strip()), "eval.source=jsonl needs --config.eval.files=PATH")
    parse_ops(e.ops)
    require(isinstance(e.per_op, int) and e.per_op >= 1, f"eval.per_op={e.per_op!r} must be an integer >= 1")
    for ctx in parse_list(e.contexts):
        get_context(ctx)
    for mode in parse_list(e.modes):
        require(mode in ("normalforward", "forwardreverse"),
                f"eval.modes: unknown mode {mode!r}; expected normalforward or forwardreverse")
    require(isinstance(s.n, int) and s.n >= 1, f"sampling.n={s.n!r} must be an integer >= 1")
    require(s.temperature >= 0, f"sampling.temperature={s.temperature} must be >= 0 (0 = greedy)")
    require(0 < s.top_p <= 1, f"sampling.top_p={s.top_p} must be in (0, 1]")
    require(isinstance(s.top_k, int) and s.top_k >= 0, f"sampling.top_k={s.top_k!r} must be an integer >= 0")
    for k in ("max_new_tokens", "max_prompt_len", "batch_prompts"):
        require(isinstance(s[k], int) and s[k] >= 1, f"sampling.{k}={s[k]!r} must be an integer >= 1")
    parse_buckets(config.buckets)
