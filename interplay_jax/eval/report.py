"""Evaluation results: the results dict / results.json schema, Markdown tables and PNG figures.

results.json of ONE checkpoint (``summarize``; JSON turns the integer keys k and op into strings)::

    {
      "schema": 1,
      "checkpoint": str, "n": int (samples per prompt), "ks": [1, 2, 4, ..., n],
      "buckets": {bucket: [lo_op, hi_op]},            # inclusive op ranges, e.g. ID: [2, 10]
      "prompts": [                                     # one entry per eval prompt
        {"op": int, "context": str, "mode": str, "id": str, "filtered": bool (only if True),
         "gold_nll": float (if computed),
         "samples": [{"verified_correct": bool, "answer_correct": bool, "process_acc": float,
                      "dependency_mismatch": int, "missing_node": int, "value_mismatch": int,
                      "answer_mismatch": int, "extra_nodes": int,  # counts over gold nodes
                      "length": int (generated tokens), "stopped": bool (hit a stop id)}]}],
      "pass_at_k":   {bucket: {"verified": {k: mean pass@k}, "answer": {k: ...}}},
      "per_op":      {op: {"verified": {k: v}, "answer": {k: v}, "n_prompts": int,
                           "process_acc": float, "gold_nll": float | null}},
      "per_context": {context: {bucket: {"verified": {k: v}, "answer": {k: v}, "n_prompts": int}}},
      "per_mode":    {mode: {bucket: {...same...}}},
      "n_prompts":   {bucket: int},
      "process_acc": {bucket: mean ProcessAcc over samples},
      "error_types": {bucket: {error type: fraction of samples with >= 1 such error}},
      "gold_nll":    {op: mean gold-solution NLL (nats/token)},
      "mean_length": {bucket: mean generated tokens},
      "intervals":   {"method": str, "level": 0.95, "n_boot": int, "seed": int,   # (added in schema 1;
                      "pass_at_k": {bucket: {"verified": {k: [lo, hi]}, "answer": {...}}},  # absent in
                      "per_op": {op: {"verified": {k: [lo, hi]}, "answer": {...}}}},        # older files)
      "error_analysis": {op: {"samples": int, "primary": {outcome: share}, "flags": {flag: share},
                             "extra_steps": float | null, "mean_length": float}}   # eval/errors.py
    }

Samples scored since the error analysis was added also carry ``n_gold``, ``n_pred`` (Define steps
parsed) and ``answer_parsed``; a few prompts per op (the eval stage's ``example_prompts``) carry
``gold`` ({problem, question, solution}) and their first samples a ``text`` (the response, cut at
3,000 characters), which the report shows as examples. Intervals are 95% bootstrap percentile
intervals over prompts, stratified by op (eval/bootstrap.py).

The combined WORKDIR/results.json of an eval run is ``{"checkpoints": {name: <summary without
"prompts">}, "order": [names], "deltas": {name: {bucket: {"verified": {k: v - base}, ...}}}}``
(base = the first checkpoint) plus the first checkpoint's ``prompts`` and ``pass_at_k`` at the top
level, so a one-checkpoint run has exactly the per-checkpoint schema's main fields there too, and
``"delta_intervals": {name: {bucket: {"n_prompts": P, "verified": {k: {"delta": d, "ci": [lo, hi]}},
"answer": {...}}}}``: the same differences over the prompts both scored (matched by id) with paired
bootstrap intervals (absent when the summaries carry no prompts).
Pure Python + numpy + matplotlib (Agg).
"""
from __future__ import annotations

import json
import os
import pathlib
from collections import defaultdict
from typing import Mapping, Sequence

import numpy as np

from interplay_jax.eval import bootstrap, errors, passk

ERROR_TYPES = ("dependency_mismatch", "missing_node", "value_mismatch", "answer_mismatch")


def _bucket_means(prompts, buckets, fn):
    acc = defaultdict(list)
    for p in prompts:
        b = passk.bucket_of(p["op"], buckets)
        if b is not None:
            acc[b].extend(fn(s) for s in p["samples"])
    return {b: float(np.mean(acc[b])) for b in buckets if acc.get(b)}


def _strip(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k != "n_prompts"}


def summarize(prompts: Sequence[dict], *, checkpoint: str = "", buckets=passk.DEFAULT_BUCKETS,
              nll: Mapping[str, float] | None = None, n_boot: int = bootstrap.N_BOOT) -> dict:
    """The results dict of one checkpoint (schema in the module docstring); ``n_boot=0`` leaves
    the bootstrap intervals out."""
    buckets = {b: tuple(int(x) for x in r) for b, r in buckets.items()}
    prompts = [dict(p) for p in prompts]
    if nll:
        for p in prompts:
            if p["id"] in nll:
                p["gold_nll"] = nll[p["id"]]
    scored = [p for p in prompts if p["samples"]]
    n = min((len(p["samples"]) for p in scored), default=0)
    ks = passk.ks_for(n) if n else []
    by_bucket = passk.by_bucket(scored, buckets, ks=ks)
    per_op = passk.by_op(scored, ks=ks)
    for op, entry in per_op.items():
        ps = [p for p in scored if p["op"] == op]
        entry["process_acc"] = float(np.mean([s["process_acc"] for p in ps for s in p["samples"]]))
        nl = [p["gold_nll"] for p in prompts if p["op"] == op and "gold_nll" in p]
        entry["gold_nll"] = float(np.mean(nl)) if nl else None
    gold = defaultdict(list)
    for p in prompts:
        if "gold_nll" in p:
            gold[p["op"]].append(p["gold_nll"])
    return {
        "schema": 1, "checkpoint": checkpoint, "n": n, "ks": ks,
        "buckets": {b: list(r) for b, r in buckets.items()},
        "prompts": prompts,
        "pass_at_k": {b: _strip(e) for b, e in by_bucket.items()},
        "per_op": per_op,
        "per_context": passk.by_context(scored, buckets, ks=ks),
        "per_mode": passk.by_mode(scored, buckets, ks=ks),
        "n_prompts": {b: e["n_prompts"] for b, e in by_bucket.items()},
        "num_filtered": sum(1 for p in prompts if p.get("filtered")),
        "process_acc": _bucket_means(scored, buckets, lambda s: s["process_acc"]),
        "error_types": _error_types(scored, buckets),
        "gold_nll": {op: float(np.mean(v)) for op, v in sorted(gold.items())},
        "mean_length": _bucket_means(scored, buckets, lambda s: s.get("length", 0)),
        **({"intervals": intervals(scored, buckets, ks, n_boot=n_boot)} if n_boot and ks else {}),
        "error_analysis": errors.per_op(scored),
    }


def intervals(scored, buckets, ks, *, n_boot: int = bootstrap.N_BOOT, seed: int = 0) -> dict:
    """The ``intervals`` field: bootstrap intervals per bucket and per op."""
    return {"method": "percentile bootstrap over prompts, stratified by op", "level": bootstrap.LEVEL,
            "n_boot": int(n_boot), "seed": int(seed),
            "pass_at_k": bootstrap.bucket_intervals(scored, buckets, ks, n_boot=n_boot, seed=seed),
            "per_op": bootstrap.op_intervals(scored, ks, n_boot=n_boot, seed=seed)}


def ensure_intervals(summary: dict) -> dict:
    """``summary`` with ``intervals`` / ``error_analysis`` computed from its prompts when an older
    results.json lacks them (unchanged when it has them or carries no prompts)."""
    scored = [p for p in summary.get("prompts", []) if p.get("samples")]
    if not scored:
        return summary
    out = dict(summary)
    buckets = {b: tuple(r) for b, r in summary["buckets"].items()}
    if "intervals" not in out and summary.get("ks"):
        out["intervals"] = intervals(scored, buckets, summary["ks"])
    if "error_analysis" not in out:
        out["error_analysis"] = errors.per_op(scored)
    return out


def delta_intervals(summaries: Mapping[str, dict], n_boot: int = bootstrap.N_BOOT) -> dict:
    """Paired differences vs the first checkpoint with bootstrap intervals (module docstring);
    checkpoints without prompts are left out."""
    order = list(summaries)
    first = summaries[order[0]]
    if not first.get("prompts"):
        return {}
    buckets = {b: tuple(r) for b, r in first["buckets"].items()}
    return {name: bootstrap.paired_deltas(first["prompts"], summaries[name]["prompts"], buckets, n_boot=n_boot)
            for name in order[1:] if summaries[name].get("prompts")}


def _error_types(prompts, buckets) -> dict:
    out = {}
    for t in ERROR_TYPES:
        for b, v in _bucket_means(prompts, buckets, lambda s: float(s.get(t, 0) > 0)).items():
            out.setdefault(b, {})[t] = v
    return {b: out[b] for b in buckets if b in out}


def deltas(base: dict, other: dict) -> dict:
    """``other - base`` pass@k per bucket and metric, over the ks both have (Fig. 15)."""
    out = {}
    for b, e in other["pass_at_k"].items():
        if b not in base["pass_at_k"]:
            continue
        out[b] = {}
        for metric, vals in e.items():
            bv = {int(k): v for k, v in base["pass_at_k"][b].get(metric, {}).items()}
            out[b][metric] = {int(k): v - bv[int(k)] for k, v in vals.items() if int(k) in bv}
    return out


def combine(summaries: Mapping[str, dict], paired: Mapping | None = None) -> dict:
    """The combined results dict of several checkpoints (see module docstring); ``paired``: the
    output of :func:`delta_intervals` when already computed."""
    order = list(summaries)
    first = summaries[order[0]]
    out = {"schema": 1, "order": order,
           "checkpoints": {name: {k: v for k, v in s.items() if k != "prompts"} for name, s in summaries.items()},
           "deltas": {name: deltas(first, summaries[name]) for name in order[1:]},
           "prompts": first.get("prompts", []), "pass_at_k": first["pass_at_k"]}
    paired = delta_intervals(summaries) if paired is None else paired
    if paired:
        out["delta_intervals"] = dict(paired)
    return out


def write_json(path, obj) -> None:
    path = pathlib.Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")     # (processes may write side by side)
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False))
    tmp.replace(path)


def load_results(path) -> dict:
    """Read a results.json back, with integer ks / ops restored."""
    def fix(o):
        if isinstance(o, dict):
            return {(int(k) if isinstance(k, str) and k.lstrip("-").isdigit() else k): fix(v) for k, v in o.items()}
        if isinstance(o, list):
            return [fix(v) for v in o]
        return o
    return fix(json.loads(pathlib.Path(path).read_text()))


# ----------------------------------------------------------------------------------------- markdown


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _ci(v, ci) -> str:
    """``45.2 [38.1, 52.0]`` (percent) or the bare value when there is no interval."""
    if v is None:
        return "-"
    return _pct(v) if not ci else f"{100 * v:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def _signed(d: Mapping | None) -> str:
    """A paired delta ``{"delta", "ci"}`` in points: ``+3.1 [-0.5, +6.8]``."""
    if not d:
        return "-"
    lo, hi = d["ci"]
    return f"{100 * d['delta']:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"


EXAMPLE_OPS = (2, 3, 10, 12)   # ops whose example responses the report shows (when stored)


def markdown(summaries: Mapping[str, dict], paired: Mapping | None = None) -> str:
    """Markdown tables: pass@k per bucket with 95% bootstrap intervals, per op, per context, error
    types, the base's (first checkpoint's) per-op error analysis with examples, and the deltas vs
    the first checkpoint with paired intervals."""
    summaries = {name: ensure_intervals(s) for name, s in summaries.items()}
    order = list(summaries)
    paired = delta_intervals(summaries) if paired is None else paired
    lines = ["# Evaluation (pass@k in %, strict = VerifiedCorrect; [95% bootstrap interval over prompts])", ""]
    ks = sorted({int(k) for s in summaries.values() for k in s["ks"]})
    lines += ["## pass@k per bucket (strict; answer-only at k = 1 and k = n)", "",
              "| checkpoint | bucket | prompts | " + " | ".join(f"pass@{k}" for k in ks) + " | answer@1 | answer@n |",
              "|---|---|---|" + "---|" * (len(ks) + 2)]
    for name in order:
        s = summaries[name]
        iv = s.get("intervals", {}).get("pass_at_k", {})
        for b, e in s["pass_at_k"].items():
            ver, ans = e["verified"], e["answer"]
            ci_v, ci_a = iv.get(b, {}).get("verified", {}), iv.get(b, {}).get("answer", {})
            kn = max(ans)
            lines.append(f"| {name} | {b} | {s['n_prompts'].get(b, 0)} | "
                         + " | ".join(_ci(ver.get(k), ci_v.get(k)) for k in ks)
                         + f" | {_ci(ans.get(1), ci_a.get(1))} | {_ci(ans.get(kn), ci_a.get(kn))} |")
    lines += ["", "## per op (strict pass@1 / pass@n, answer pass@1, ProcessAcc, gold NLL nats/token)", "",
              "| checkpoint | op | prompts | pass@1 | pass@n | answer@1 | ProcessAcc | gold NLL |",
              "|---|---|---|---|---|---|---|---|"]
    for name in order:
        iv = summaries[name].get("intervals", {}).get("per_op", {})
        for op, e in sorted(summaries[name]["per_op"].items()):
            ver = e["verified"]
            ci = iv.get(op, {}).get("verified", {})
            nll = "-" if e.get("gold_nll") is None else f"{e['gold_nll']:.3f}"
            lines.append(f"| {name} | {op} | {e['n_prompts']} | {_ci(ver.get(1), ci.get(1))} | "
                         f"{_ci(ver.get(max(ver)), ci.get(max(ver)))} | "
                         f"{_pct(e['answer'].get(1))} | {_pct(e['process_acc'])} | {nll} |")
    lines += ["", "## per context (strict pass@1 / pass@n)", "",
              "| checkpoint | context | bucket | prompts | pass@1 | pass@n |", "|---|---|---|---|---|---|"]
    for name in order:
        for ctx, per_b in sorted(summaries[name]["per_context"].items()):
            for b, e in per_b.items():
                ver = e["verified"]
                lines.append(f"| {name} | {ctx} | {b} | {e['n_prompts']} | {_pct(ver.get(1))} | "
                             f"{_pct(ver.get(max(ver)))} |")
    lines += ["", "## error types (% of samples with at least one)", "",
              "| checkpoint | bucket | ProcessAcc | " + " | ".join(ERROR_TYPES) + " |",
              "|---|---|---|" + "---|" * len(ERROR_TYPES)]
    for name in order:
        s = summaries[name]
        for b, e in s["error_types"].items():
            lines.append(f"| {name} | {b} | {_pct(s['process_acc'].get(b))} | "
                         + " | ".join(_pct(e.get(t)) for t in ERROR_TYPES) + " |")
    if len(order) > 1:
        base = summaries[order[0]]
        lines += ["", f"## delta vs {order[0]} (points, strict unless named; [95% paired bootstrap interval])", "",
                  "| checkpoint | bucket | prompts | Δpass@1 | Δpass@n | Δanswer@1 | Δanswer@n |",
                  "|---|---|---|---|---|---|---|"]
        for name in order[1:]:
            pd = paired.get(name, {})
            for b, e in deltas(base, summaries[name]).items():
                ver, ans = e["verified"], e["answer"]
                if b in pd:
                    p = pd[b]
                    kn = max(p["verified"])
                    lines.append(f"| {name} | {b} | {p['n_prompts']} | {_signed(p['verified'].get(1))} | "
                                 f"{_signed(p['verified'].get(kn))} | {_signed(p['answer'].get(1))} | "
                                 f"{_signed(p['answer'].get(kn))} |")
                    continue
                kn = max(ver) if ver else None
                f = lambda v: "-" if v is None else f"{100 * v:+.1f}"  # noqa: E731
                lines.append(f"| {name} | {b} | - | {f(ver.get(1))} | {f(ver.get(kn))} | {f(ans.get(1))} | "
                             f"{f(ans.get(max(ans)) if ans else None)} |")
    first = summaries[order[0]]
    if first.get("error_analysis"):
        lines += [""] + errors.markdown(first["error_analysis"], f"{order[0]}: error analysis per op")
        cmp = errors.compare_ops(first["error_analysis"], first.get("per_op", {}), 2, 3)
        if cmp:
            lines += ["", cmp]
        exs = errors.examples(first.get("prompts", []), ops=EXAMPLE_OPS, per_op=1, samples=2)
        if exs:
            lines += ["", f"### {order[0]}: example responses", ""] + errors.examples_markdown(exs)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------- figures


def _plt():
    """matplotlib (Agg), imported on first figure: most importers of this module write no figure."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(plt, fig, path) -> pathlib.Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return pathlib.Path(path)


def plot_passk_curves(summaries: Mapping[str, dict], path) -> pathlib.Path:
    """pass@k vs k (log2 axis) per bucket, one line per checkpoint (solid strict with its 95%
    bootstrap band, dashed answer)."""
    plt = _plt()
    buckets = list(dict.fromkeys(b for s in summaries.values() for b in s["pass_at_k"]))
    fig, axes = plt.subplots(1, max(len(buckets), 1), figsize=(4.2 * max(len(buckets), 1), 3.6), squeeze=False)
    for ax, b in zip(axes[0], buckets):
        for i, (name, s) in enumerate(summaries.items()):
            if b not in s["pass_at_k"]:
                continue
            color = f"C{i % 10}"
            ver = s["pass_at_k"][b]["verified"]
            ks = sorted(int(k) for k in ver)
            ax.plot(ks, [100 * ver[k] for k in ks], "o-", color=color, label=name, ms=3)
            ci = s.get("intervals", {}).get("pass_at_k", {}).get(b, {}).get("verified", {})
            if all(k in ci for k in ks):      # 95% bootstrap interval of the strict curve
                ax.fill_between(ks, [100 * ci[k][0] for k in ks], [100 * ci[k][1] for k in ks], color=color,
                                alpha=0.12, lw=0)
            ans = s["pass_at_k"][b]["answer"]
            ax.plot(ks, [100 * ans[k] for k in ks], "--", color=color, alpha=0.5, lw=1)
        ax.set_xscale("log", base=2)
        ax.set_title(b)
        ax.set_xlabel("k")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("pass@k (%)  solid: strict, dashed: answer")
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, path)


def plot_per_op(summaries: Mapping[str, dict], path) -> pathlib.Path:
    """Grouped bars per op: strict pass@1 (top) and pass@n (bottom), one bar per checkpoint."""
    plt = _plt()
    ops = sorted({int(op) for s in summaries.values() for op in s["per_op"]})
    fig, axes = plt.subplots(2, 1, figsize=(min(16, max(6, 0.5 * len(ops) * max(len(summaries), 1))), 5.5), sharex=True)
    width = 0.8 / max(len(summaries), 1)
    x = np.arange(len(ops))
    for row, which in enumerate(("pass@1", "pass@n")):
        ax = axes[row]
        for i, (name, s) in enumerate(summaries.items()):
            vals = []
            for op in ops:
                e = s["per_op"].get(op)
                if e is None:
                    vals.append(0.0)
                    continue
                ver = e["verified"]
                vals.append(100 * ver[1 if which == "pass@1" else max(ver)])
            ax.bar(x + (i - (len(summaries) - 1) / 2) * width, vals, width, label=name, color=f"C{i % 10}")
        ax.set_ylabel(f"strict {which} (%)")
        ax.set_ylim(0, 102)
        ax.grid(axis="y", alpha=0.3)
    axes[1].set_xticks(x, [str(op) for op in ops])
    axes[1].set_xlabel("op")
    axes[0].legend(fontsize=7)
    return _save(plt, fig, path)


def plot_error_types(summaries: Mapping[str, dict], path) -> pathlib.Path:
    """Share of samples with each error type, per bucket (Fig. 8), one bar group per checkpoint."""
    plt = _plt()
    buckets = list(dict.fromkeys(b for s in summaries.values() for b in s["error_types"]))
    fig, axes = plt.subplots(1, max(len(buckets), 1), figsize=(4.2 * max(len(buckets), 1), 3.6), squeeze=False)
    width = 0.8 / max(len(summaries), 1)
    x = np.arange(len(ERROR_TYPES))
    for ax, b in zip(axes[0], buckets):
        for i, (name, s) in enumerate(summaries.items()):
            e = s["error_types"].get(b, {})
            ax.bar(x + (i - (len(summaries) - 1) / 2) * width, [100 * e.get(t, 0.0) for t in ERROR_TYPES], width,
                   label=name, color=f"C{i % 10}")
        ax.set_xticks(x, [t.replace("_", "\n") for t in ERROR_TYPES], fontsize=7)
        ax.set_title(b)
        ax.set_ylim(0, 102)
    axes[0][0].set_ylabel("% of samples")
    axes[0][0].legend(fontsize=7)
    return _save(plt, fig, path)


def plot_deltas(summaries: Mapping[str, dict], path) -> pathlib.Path | None:
    """Δ strict pass@1 and pass@n of each checkpoint vs the first, per bucket (Fig. 15)."""
    order = list(summaries)
    if len(order) < 2:
        return None
    plt = _plt()
    base = summaries[order[0]]
    buckets = list(base["pass_at_k"])
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    width = 0.8 / (len(order) - 1)
    x = np.arange(len(buckets))
    for col, which in enumerate(("pass@1", "pass@n")):
        ax = axes[col]
        for i, name in enumerate(order[1:]):
            d = deltas(base, summaries[name])
            vals = []
            for b in buckets:
                ver = d.get(b, {}).get("verified", {})
                vals.append(100 * ver[1 if which == "pass@1" else max(ver)] if ver else 0.0)
            ax.bar(x + (i - (len(order) - 2) / 2) * width, vals, width, label=f"{name} − {order[0]}",
                   color=f"C{(i + 1) % 10}")
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(x, buckets)
        ax.set_title(f"Δ strict {which} (points)")
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=7)
    return _save(plt, fig, path)


def write_report(out_dir, summaries: Mapping[str, dict]) -> dict:
    """results.json (combined), report.md and the figures into ``out_dir``; returns {what: path}."""
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"results": out / "results.json", "markdown": out / "report.md"}
    summaries = {name: ensure_intervals(sm) for name, sm in summaries.items()}
    paired = delta_intervals(summaries)
    write_json(paths["results"], combine(summaries, paired))
    paths["markdown"].write_text(markdown(summaries, paired))
    paths["passk_curves"] = plot_passk_curves(summaries, out / "passk_curves.png")
    paths["per_op"] = plot_per_op(summaries, out / "per_op.png")
    paths["error_types"] = plot_error_types(summaries, out / "error_types.png")
    d = plot_deltas(summaries, out / "deltas.png")
    if d:
        paths["deltas"] = d
    return {k: str(v) for k, v in paths.items()}
