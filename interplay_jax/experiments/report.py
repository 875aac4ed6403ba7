"""``python -m interplay_jax.experiments.report E1 [--scale=mini] [--root=runs/experiments]``.

Gathers the per-checkpoint ``results.json`` of an experiment's eval runs into one directory
(``<root>/<E>_<scale>/report/``): the combined results.json, report.md (our tables, then the study's
published numbers (docs/experiments.md) beside ours where a cell matches), and the figures of
``interplay_jax.eval.report`` (pass@k curves, per-op bars, error types, deltas vs the base).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from interplay_jax.errors import ConfigError, UserError
from interplay_jax.eval import report as eval_report
from interplay_jax.experiments import dag


def collect(runs, root: pathlib.Path) -> dict:
    """{checkpoint run name: per-checkpoint summary} over every eval run of the experiment."""
    summaries = {}
    for r in runs:
        if r.config != "eval.py":
            continue
        for name in r.compare:
            path = root / r.name / name / "results.json"
            if path.is_file() and name not in summaries:
                summaries[name] = eval_report.load_results(path)
    return summaries


def _max_k(summary) -> int:
    return max(summary.get("ks") or [1])


def published_rows(module, summaries) -> list[str]:
    """Markdown rows 'ours vs published' for cells that exist on both sides."""
    pub = getattr(module, "PUBLISHED", {})
    rows = []
    for run, buckets in pub.items():
        if not isinstance(buckets, dict) or run not in summaries:
            continue
        for bucket, ks in buckets.items():
            for k, value in ks.items():
                ours = summaries[run]["pass_at_k"].get(bucket, {}).get("verified", {}).get(int(k))
                if ours is not None:
                    rows.append(f"| {run} | {bucket} | pass@{k} | {100 * ours:.1f} | {value:.1f} |")
    return rows


def gain_rows(module, summaries) -> list[str]:
    """E7: pass@max-k gain of each RL run over its pre-training base, beside the published gains."""
    pub = getattr(module, "PUBLISHED", {})
    rows = []
    for mix, gains in pub.items():
        base, rl = summaries.get(f"pre_{mix}"), summaries.get(f"rl_{mix}")
        if not (base and rl and isinstance(gains, tuple)):
            continue
        k = min(_max_k(base), _max_k(rl))
        ours = []
        for bucket in ("op11-14", "op15-20"):
            b = base["pass_at_k"].get(bucket, {}).get("verified", {}).get(k)
            r = rl["pass_at_k"].get(bucket, {}).get("verified", {}).get(k)
            ours.append("-" if b is None or r is None else f"{100 * (r - b):+.1f}")
        rows.append(f"| {mix} | pass@{k} | {ours[0]} / {ours[1]} | +{gains[0]} / +{gains[1]} (pass@128) |")
    return rows


def build(experiment: str, scale: str, root: pathlib.Path) -> dict:
    runs = dag.expand(experiment, scale)
    exp_root = root / f"{experiment.upper()}_{scale}"
    summaries = collect(runs, exp_root)
    if not summaries:
        raise ConfigError(f"no eval results under {exp_root}: run `python -m interplay_jax.experiments.run "
                          f"{experiment} --scale={scale} --root={root}` first")
    out = exp_root / "report"
    paths = eval_report.write_report(out, summaries)
    module = dag.experiment_module(experiment)
    md = [f"# {experiment.upper()} ({scale} scale)", "", (module.__doc__ or "").strip(), ""]
    rows = published_rows(module, summaries)
    if rows:
        md += ["## Ours vs published (strict pass@k, %)", "", "| run | bucket | metric | ours | published |",
               "|---|---|---|---|---|", *rows, ""]
    rows = gain_rows(module, summaries)
    if rows:
        md += ["## Gain of RL over its base (strict, points): op11-14 / op15-20", "",
               "| pre-training | k | ours | published |", "|---|---|---|---|", *rows, ""]
    pub = getattr(module, "PUBLISHED", {})
    md += ["## Published numbers", "", "```", json.dumps(pub, indent=1), "```", "",
           pathlib.Path(paths["markdown"]).read_text()]
    pathlib.Path(paths["markdown"]).write_text("\n".join(md))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m interplay_jax.experiments.report")
    p.add_argument("experiment")
    p.add_argument("--scale", default="mini", choices=dag.SCALES)
    p.add_argument("--root", default="runs/experiments")
    a = p.parse_args(argv)
    try:
        paths = build(a.experiment, a.scale, pathlib.Path(a.root))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what, path in paths.items():
        print(f"{what:>13}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
