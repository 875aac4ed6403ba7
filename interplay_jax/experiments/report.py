"""``python -m interplay_jax.experiments.report E1 [--scale=mini] [--root=runs/experiments] [--out DIR]``.

Gathers the per-checkpoint ``results.json`` of an experiment's eval runs into one directory
(``<root>/<E>_<scale>/report/``, or ``--out``): the combined results.json (with paired bootstrap
intervals of every delta), report.md and the figures of ``interplay_jax.eval.report`` (pass@k curves
with 95% bands, per-op bars, error types, deltas vs the base), plus ``rl_curves.png`` (reward,
verified accuracy and response length per step of every RL run). report.md says, computed from the
numbers, whether the experiment's finding shows (the definition's ``FINDINGS``: each claim is a
paired delta whose 95% interval must lie above 0, or must not), what each run did (steps, tokens,
minutes; runs cut by a time limit are named), the edge run's probe and chosen ops, our numbers
beside the study's, then the evaluation tables (per-op error analysis of the base with examples).
A checkpoint whose evaluation was cut off (no results.json) is summarised from its samples.jsonl and
marked partial.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

from interplay_jax import checkpoint as ck
from interplay_jax.config import parse_buckets
from interplay_jax.errors import ConfigError, UserError
from interplay_jax.eval import bootstrap
from interplay_jax.eval import report as eval_report
from interplay_jax.experiments import dag

PARTIAL_NOTE = "evaluation cut off before the end: summarised from samples.jsonl"


def _read_samples(path: pathlib.Path) -> list[dict]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue                   # a line cut by the interruption
        out[rec["id"]] = rec
    return list(out.values())


def collect(runs, root: pathlib.Path) -> dict:
    """{checkpoint run name: per-checkpoint summary} over every eval run of the experiment (a
    checkpoint with samples.jsonl but no results.json is summarised from its samples, ``partial``)."""
    summaries = {}
    for r in runs:
        if r.config != "eval.py":
            continue
        for name in r.compare:
            path = root / r.name / name / "results.json"
            if name in summaries:
                continue
            if path.is_file():
                summaries[name] = eval_report.load_results(path)
            elif (path.parent / "samples.jsonl").is_file():
                prompts = _read_samples(path.parent / "samples.jsonl")
                if any(p.get("samples") for p in prompts):
                    buckets = parse_buckets(dag.load_config(r, root).buckets)
                    summaries[name] = {**eval_report.summarize(prompts, checkpoint=name, buckets=buckets),
                                       "partial": PARTIAL_NOTE}
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


# ----------------------------------------------------------------------------------------- runs


def _json(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def tb_scalars(tb_dir: pathlib.Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} from a run's TensorBoard event files (the loop's ScalarWriter)."""
    if not tb_dir.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    out: dict = {}
    for f in sorted(tb_dir.glob("events.out.tfevents.*")):
        try:
            for ev in EventFileLoader(str(f)).Load():
                for v in ev.summary.value:
                    kind = v.WhichOneof("value")
                    val = v.simple_value if kind == "simple_value" else (
                        v.tensor.float_val[0] if kind == "tensor" and v.tensor.float_val else None)
                    if val is not None:
                        out.setdefault(v.tag, {})[int(ev.step)] = float(val)
        except Exception:  # noqa: BLE001 — a file cut by a kill: keep what was read
            continue
    return out


RL_CURVES = ("reward_mean", "verified_acc", "answer_acc", "response_len")


def rl_history(run_dir: pathlib.Path) -> list[dict]:
    """Per-step RL metrics: summary.json's history (a finished run), else TensorBoard (a run cut by
    a time limit writes no summary), else samples.jsonl's per-step digests."""
    hist = _json(run_dir / "summary.json").get("history")
    if hist:
        return hist
    tb = tb_scalars(run_dir / "tb")
    if tb:
        steps = sorted({st for tag, v in tb.items() if tag.startswith("rl/") for st in v})
        return [{"step": st, **{k: tb[f"rl/{k}"][st] for k in RL_CURVES if st in tb.get(f"rl/{k}", {})}}
                for st in steps]
    path = run_dir / "samples.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            rows.append({"step": rec.get("step"), "reward_mean": rec.get("reward_mean"),
                         "verified_acc": rec.get("verified_acc")})
    return rows


def plot_rl_curves(histories: dict[str, list[dict]], path) -> pathlib.Path | None:
    """Reward, verified accuracy, answer accuracy and response length per step, one line per run."""
    if not any(histories.values()):
        return None
    plt = eval_report._plt()
    fig, axes = plt.subplots(1, len(RL_CURVES), figsize=(4.0 * len(RL_CURVES), 3.4))
    for ax, key in zip(axes, RL_CURVES):
        for i, (name, hist) in enumerate(histories.items()):
            pts = [(r["step"], r[key]) for r in hist if r.get(key) is not None and r.get("step") is not None]
            if pts:
                ax.plot(*zip(*pts), "-", color=f"C{(i + 1) % 10}", label=name, lw=1.2)
        ax.set_title(key.replace("_", " "))
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    return eval_report._save(plt, fig, path)


def run_facts(runs, root: pathlib.Path) -> list[str]:
    """One row per training run: steps done / planned, tokens, minutes, how it ended (minutes of a
    run cut by a time limit come from ``phases.json`` of benchmarks/run_experiment.py when present)."""
    phases = _json(root / "phases.json").get("runs", {})
    rows = []
    for r in runs:
        if r.config not in ("pretrain.py", "midtrain.py", "rl.py"):
            continue
        d = root / r.name
        summary, lineage = _json(d / "summary.json"), _json(d / "lineage.json")
        if not lineage:
            rows.append(f"| {r.name} | not run | | | | |")
            continue
        cfg = lineage.get("config", {})
        steps = summary.get("steps") or max(ck.complete_steps(d) or [0])
        if r.config == "rl.py":
            rl = cfg.get("rl", {})
            planned = rl.get("total_steps") or "-"
            tokens = f"{rl.get('num_prompts', 0)} prompts x {rl.get('n', 0)} rollouts / step"
        else:
            planned = cfg.get("total_steps") or int(cfg.get("total_tokens", 0)) // max(
                int(cfg.get("batch_size", 1)) * int(cfg.get("seq_len", 1)), 1)
            tokens = f"{steps * int(cfg.get('batch_size', 0)) * int(cfg.get('seq_len', 0)) / 1e6:.1f}M"
        sec = summary.get("wall_s") or phases.get(r.name, {}).get("seconds")
        minutes = f"{sec / 60:.1f}" if sec else "-"
        ended = summary.get("reason", "?") if summary else (
            "cut by its time limit" if phases.get(r.name, {}).get("signalled") else "cut (no summary.json)")
        params = lineage.get("model_params")
        rows.append(f"| {r.name} | {steps} / {planned} | {tokens} | {minutes} | {ended} | "
                    f"{'-' if params is None else f'{params / 1e6:.1f}M'} |")
    return rows


def edge_section(runs, root: pathlib.Path) -> list[str]:
    """The edge run's probe (per-op strict pass@1 / pass@k) and the ops it chose."""
    out = []
    for r in runs:
        e = _json(root / r.name / "edge.json")
        if not e:
            continue
        out += [f"## Edge of competence: {r.name}", "",
                f"Chosen ops: **{e.get('ops')}** ({e.get('how')}; rule: strict pass@1 <= {e.get('pass1_max')} and "
                f"pass@{e.get('k')} >= {e.get('passk_min')}; {e.get('probe_per_op')} probe prompts per op).", "",
                f"| op | probe pass@1 | probe pass@{e.get('k')} | chosen |", "|---|---|---|---|"]
        for op, m in sorted(e.get("per_op", {}).items(), key=lambda kv: int(kv[0])):
            out.append(f"| {op} | {100 * m['pass@1']:.1f} | {100 * m['pass@k']:.1f} | "
                       f"{'yes' if int(op) in e.get('ops', []) else ''} |")
        out.append("")
    return out


# ----------------------------------------------------------------------------------------- findings


def _paired(summaries: dict, base: str, run: str) -> dict:
    """Paired deltas ``run - base`` per bucket (eval/bootstrap.py) from the two summaries' prompts."""
    b, r = summaries.get(base), summaries.get(run)
    if not (b and r and b.get("prompts") and r.get("prompts")):
        return {}
    buckets = {name: tuple(rng) for name, rng in b["buckets"].items()}
    return bootstrap.paired_deltas(b["prompts"], r["prompts"], buckets)


def finding_section(module, summaries: dict, scale: str) -> list[str]:
    """The definition's ``FINDINGS`` checked against paired deltas (95% intervals).

    Each claim is ``(text, run, bucket, k, expect, core[, base])``: ``k`` an int or "n" (the largest
    k both have), ``expect`` "up" (shows when the interval lies above 0) or "not_up" (shows when it
    does not), ``core`` whether the claim is part of the overall verdict, ``base`` the run compared
    against (default: the first evaluated checkpoint). A definition whose claims depend on the scale
    gives ``findings(scale)`` instead."""
    if hasattr(module, "findings"):
        claims, source = module.findings(scale), f"`findings({scale!r})`"
    else:
        claims, source = getattr(module, "FINDINGS", ()), "`FINDINGS`"
    if not claims:
        return []
    lines = ["## Does the study's finding show at this scale?", "",
             "Each claim is a paired difference against the base (or the run after \"vs\") over the same prompts, "
             "with its 95% bootstrap "
             "interval; the claims and the rule were fixed before the run (experiments/"
             f"{module.__name__.rsplit('_', 1)[-1]}.py {source}).", "",
             "A claim has no signal when the base and the run are both at 0% (or, for \"does not lift\", the base "
             "is already at 100%): then it is neither confirmed nor refuted.", "",
             "| claim | run | bucket | metric | base | run | Δ (points) [95% CI] | shows? |",
             "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    first = next(iter(summaries))
    for claim in claims:
        text, run, bucket, k, expect, core = claim[:6]
        base_name = claim[6] if len(claim) > 6 else first
        d = _paired(summaries, base_name, run).get(bucket)
        if not d:
            lines.append(f"| {text} | {run} | {bucket} | - | - | - | not evaluated | - |")
            if core:
                verdicts.append(None)
            continue
        kk = max(d["verified"]) if k == "n" else int(k)
        e = d["verified"].get(kk)
        lo, hi = e["ci"]
        b = summaries[base_name]["pass_at_k"].get(bucket, {}).get("verified", {}).get(kk)
        r = summaries.get(run, {}).get("pass_at_k", {}).get(bucket, {}).get("verified", {}).get(kk)
        if (b == 0 and r == 0) or (expect == "not_up" and b == 1):
            shows, word = None, "no signal"
        else:
            shows = lo > 0 if expect == "up" else not lo > 0
            word = "yes" if shows else "no"
        if core:
            verdicts.append(shows)
        pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
        shown = f"{run} vs {base_name}" if len(claim) > 6 else run
        lines.append(f"| {text} | {shown} | {bucket} | strict pass@{kk} | {pct(b)} | {pct(r)} | {100 * e['delta']:+.1f} "
                     f"[{100 * lo:+.1f}, {100 * hi:+.1f}] | {word} |")
    if verdicts and all(v is not None for v in verdicts):
        overall = ("**yes**" if all(verdicts) else "**partly**" if any(verdicts) else "**no**")
    else:
        overall = "**cannot say** (a core claim was not evaluated or has no signal)"
    lines += ["", f"Overall (core claims): {overall}.", ""]
    partial = [n for n, sm in summaries.items() if sm.get("partial")]
    if partial:
        lines += [f"Partial evaluations ({PARTIAL_NOTE}): {', '.join(partial)}.", ""]
    return lines


def build(experiment: str, scale: str, root: pathlib.Path, out: pathlib.Path | None = None) -> dict:
    runs = dag.expand(experiment, scale)
    exp_root = root / f"{experiment.upper()}_{scale}"
    summaries = collect(runs, exp_root)
    if not summaries:
        raise ConfigError(f"no eval results under {exp_root}: run `python -m interplay_jax.experiments.run "
                          f"{experiment} --scale={scale} --root={root}` first")
    out = pathlib.Path(out) if out else exp_root / "report"
    paths = eval_report.write_report(out, summaries)
    module = dag.experiment_module(experiment)
    histories = {r.name: rl_history(exp_root / r.name) for r in runs if r.config == "rl.py"}
    curves = plot_rl_curves(histories, out / "rl_curves.png")
    if curves:
        paths["rl_curves"] = str(curves)
    md = [f"# {experiment.upper()} ({scale} scale)", "", (module.__doc__ or "").strip(), ""]
    md += finding_section(module, summaries, scale)
    facts = run_facts(runs, exp_root)
    if facts:
        md += ["## Runs", "", "| run | steps done / planned | tokens | minutes | ended | params |",
               "|---|---|---|---|---|---|", *facts, ""]
    md += edge_section(runs, exp_root)
    if curves:
        md += ["## RL curves", "", f"![RL curves]({pathlib.Path(curves).name})", ""]
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
           "Figures: passk_curves.png, per_op.png, error_types.png, deltas.png" + (", rl_curves.png" if curves else ""),
           "", pathlib.Path(paths["markdown"]).read_text()]
    pathlib.Path(paths["markdown"]).write_text("\n".join(md))
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m interplay_jax.experiments.report")
    p.add_argument("experiment")
    p.add_argument("--scale", default="mini", help=f"{', '.join(dag.SCALES)}, or one the experiment adds")
    p.add_argument("--root", default="runs/experiments")
    p.add_argument("--out", default="", help="write the report here (default: <root>/<E>_<scale>/report)")
    a = p.parse_args(argv)
    try:
        paths = build(a.experiment, a.scale, pathlib.Path(a.root), pathlib.Path(a.out) if a.out else None)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what, path in paths.items():
        print(f"{what:>13}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
