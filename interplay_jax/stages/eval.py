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

from interplay_jax import config as config_lib
from interplay_jax.errors import ConfigError
from interplay_jax.eval import evalset, report
from interplay_jax.eval.evaluate import evaluate_items, gold_nll, load_checkpoint
from interplay_jax.rl.sampler import Sampler


def build_items(config) -> list[dict]:
    e = config.eval
    ops = config_lib.parse_ops(e.ops)
    if e.source == "jsonl":
        return evalset.load_eval_files(str(e.files), ops=ops, per_op=e.per_op)
    exclude = evalset.hashes_of(str(e.exclude)) if str(e.exclude).strip() else set()
    return evalset.generate_evalset(ops=ops, contexts=[c.strip() for c in str(e.contexts).split(",") if c.strip()],
                                    modes=[m.strip() for m in str(e.modes).split(",") if m.strip()],
                                    per_op=e.per_op, seed=config.seed, exclude_hashes=exclude)


def _names(config, paths) -> list[str]:
    names = [n.strip() for n in str(config.get("names", "")).split(",") if n.strip()]
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
    from interplay_jax.stages.train import quiet_logs
    quiet_logs()
    workdir = pathlib.Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    paths = [p.strip() for p in str(config.checkpoints).split(",") if p.strip()]
    names = _names(config, paths)
    overrides = {"dtype": config.model_dtype} if str(config.get("model_dtype", "")) else {}
    step = None if int(config.get("step", -1)) < 0 else int(config.step)
    loaded = [load_checkpoint(p, tokenizer=str(config.tokenizer) or None, name=n, step=step, **overrides)
              for p, n in zip(paths, names)]
    for ld in loaded:
        if ld.tokenizer.answer_close_id >= ld.cfg.vocab_size:
            raise ConfigError(f"checkpoint {ld.name}: tokenizer id {ld.tokenizer.answer_close_id} of </answer> "
                              f"is outside the model vocabulary ({ld.cfg.vocab_size})")
    items = build_items(config)
    buckets = config_lib.parse_buckets(config.buckets)
    s = config.sampling
    (workdir / "eval_items.json").write_text(json.dumps(
        {"n_items": len(items), "ids": [it["id"] for it in items]}))
    summaries, timings = {}, {}
    for ld in loaded:
        out = workdir / ld.name
        out.mkdir(exist_ok=True)
        sampler = Sampler(ld.graphdef, ld.cfg, pad_id=ld.tokenizer.pad_id)
        timing: dict = {}
        prompts = evaluate_items(
            sampler, ld.params, ld.tokenizer, items, n=s.n, max_new_tokens=s.max_new_tokens,
            temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, batch_prompts=s.batch_prompts,
            max_prompt_len=s.max_prompt_len, key=jax.random.key(config.seed),
            samples_path=out / "samples.jsonl", progress=config.get("progress", True), timing=timing)
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
