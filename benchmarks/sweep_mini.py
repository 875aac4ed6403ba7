"""Measured sweep of `mini` pre-training recipes, several points at once on one GPU.

    python benchmarks/sweep_mini.py run --out DIR [--points default|all|NAME,NAME] \
        [--minutes 3 | --tokens 40e6] [--parallel 6] [--set data.num_threads=2 ...] \
        [--eval-ops 2-14 --eval-per-op 16 --eval-n 16] [--tokenizer PATH] [--deadline 600]
    python benchmarks/sweep_mini.py run --scale cpu --out DIR --minutes 6 --parallel 1   # a 2-core CPU
    python benchmarks/sweep_mini.py list [--scale cpu]
    python benchmarks/sweep_mini.py table --sweep DIR[/sweep.json]   # re-make DIR/sweep.md
    python benchmarks/sweep_mini.py recipe --sweep DIR/sweep.json --seconds 180   # for gpu_e1_mini.sh

Each point is one process (XLA_PYTHON_CLIENT_MEM_FRACTION split between them) that
1. with ``--minutes M``: probes its speed (``--probe-steps`` steps after compiling, concurrently
   with the other points, so the speed is the shared-GPU speed), then trains for the number of steps
   that fills M minutes at that speed (the cosine schedule ends where the run ends); with
   ``--tokens N``: trains N tokens (no probe). A guard stops training at 1.5 x M + 2 minutes
   (SIGTERM: the loop saves; the point is marked ``cut``);
2. evaluates its last checkpoint (the eval stage) on ID op2-10 and OOD-edge op11-14, uniform per op,
   ``--eval-per-op`` prompts per op, n = ``--eval-n`` samples at T = 0.7;
3. writes ``DIR/<point>/point.json``.
The driver prints one Markdown row per point (model shape and params, lr, betas, batch tokens,
document masking, mixture, steps, tokens seen, minutes, held-out loss, strict pass@1 / pass@n for ID
and OOD-edge, answer-only pass@1) and writes DIR/sweep.json and DIR/sweep.md. "minutes" is the
point's training wall time, compilation included, while sharing the GPU with the other points (alone it is faster).

The data source is one setting: ``--set data.source=...`` / ``--set data.num_threads=N`` (applied to
every point; once the token-shard pipeline lands: ``--set data.source=tokens --set data.workers=N``).
Model shapes are ``model.*`` field overrides of the ``small`` preset. The pre-training configs are
``configs/pretrain.py:<mixture>,mini`` plus each point's overrides.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

D12 = dict(num_layers=12, hidden_size=384, num_heads=6, num_kv_heads=2, head_dim=64, intermediate_size=1024)
W512 = dict(num_layers=6, hidden_size=512, num_heads=8, num_kv_heads=2, head_dim=64, intermediate_size=1536)
COMMON = dict(batch_size=64, seq_len=1024, lr=2e-3, b2=0.98, document_mask=False, mixture="base", model=D12)
POINTS = {   # name -> differences from COMMON (the first six run by default)
    "d12_lr1e-3": dict(lr=1e-3),
    "d12_lr2e-3": dict(),
    "d12_lr4e-3": dict(lr=4e-3),
    "w512_lr2e-3": dict(model=W512),
    "d12_docmask": dict(document_mask=True),
    "d12_easy": dict(mixture="hard20"),              # 50/30/20 over op2-4/5-7/8-10 (easy-skewed)
    "d12_bs128k": dict(batch_size=128),
    "d12_bs32k": dict(batch_size=32),                # more steps per token: the CPU sweep's 8K beat 16K
    "d12_b2_999": dict(b2=0.999),
    "small_grid": dict(model={}, lr=1e-3, b2=0.999, batch_size=32),   # the grid's current mini base
}
DEFAULT_POINTS = list(POINTS)[:6]

# --scale cpu: the same questions one size down, for a 2-core CPU (the `tiny` model, fp32), on a shifted op
# range (pre-training op2-5, ID op2-5, OOD-edge op6-7) because op2-10 is out of reach in CPU minutes.
# Mixtures by name (a JSON list of components, see interplay_jax.task.mixture): the study's 20/30/50
# easy/medium/hard weighting over op2-3 / op4 / op5, and its easy-skewed mirror.
CPU_MIXTURES = {
    "cpu_base": '[{"ops": [2, 3], "weight": 0.2}, {"ops": [4], "weight": 0.3}, {"ops": [5], "weight": 0.5}]',
    "cpu_easy": '[{"ops": [2, 3], "weight": 0.5}, {"ops": [4], "weight": 0.3}, {"ops": [5], "weight": 0.2}]',
}
T4 = dict(num_layers=4, hidden_size=128, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=384)
CPU_COMMON = dict(batch_size=16, seq_len=512, lr=2e-3, b2=0.98, document_mask=False, mixture="cpu_base", model=T4,
                  dtype="float32")
CPU_POINTS = {
    "t4_lr1e-3": dict(lr=1e-3),
    "t4_lr2e-3": dict(),
    "t4_lr4e-3": dict(lr=4e-3),
    "d8_lr2e-3": dict(model={**T4, "num_layers": 8}),                     # depth: +0.8M parameters
    "w192_lr2e-3": dict(model={**T4, "hidden_size": 192, "num_heads": 6, "intermediate_size": 576}),  # width: +0.9M
    "t4_docmask": dict(document_mask=True),
    "t4_easy": dict(mixture="cpu_easy"),
    "t4_bs16k": dict(batch_size=32),
}
CPU_MIXTURE_NAMES = {v: k for k, v in CPU_MIXTURES.items()}     # the table shows names, not JSON
SCALES = {  # scale -> (points, common fields, config preset of pretrain.py / eval.py, model preset, buckets)
    "mini": (POINTS, COMMON, "mini", "small", "ID:2-10,OOD-edge:11-14"),
    "cpu": (CPU_POINTS, CPU_COMMON, "cpu", "tiny", "ID:2-5,OOD-edge:6-7"),
}


def point_spec(name: str, scale: str = "mini") -> dict:
    points, common, *_ = SCALES[scale]
    if name not in points:
        raise SystemExit(f"error: unknown {scale} point {name!r}; known: {', '.join(points)}")
    return {"name": name, "scale": scale, **common, **points[name]}


def default_points(scale: str) -> list[str]:
    return DEFAULT_POINTS if scale == "mini" else list(CPU_POINTS)


def point_names(points: str, scale: str) -> list[str]:
    """``--points``: comma-separated names; ``default`` / ``all`` expand in place (``default,d12_bs32k``)."""
    names = []
    for n in (n.strip() for n in points.split(",")):
        names += default_points(scale) if n == "default" else list(SCALES[scale][0]) if n == "all" else [n] if n else []
    return list(dict.fromkeys(names))


def pretrain_config(spec: dict, workdir, tokenizer: str, sets: list[str], total_steps: int, probe: bool = False):
    from interplay_jax.config import load_config, override
    _, _, preset, model_preset, buckets = SCALES[spec.get("scale", "mini")]
    mixture = CPU_MIXTURES.get(spec["mixture"])
    c = load_config(f"pretrain.py:{'base' if mixture else spec['mixture']},{preset}", lock=False)
    if mixture:
        c.mixture = mixture
    c.workdir = str(workdir)
    c.tokenizer = tokenizer
    c.model.preset = model_preset
    c.model.dtype = spec.get("dtype", "bfloat16")
    for k, v in spec["model"].items():
        c.model[k] = v
    c.batch_size = int(spec["batch_size"])
    c.seq_len = int(spec["seq_len"])
    c.document_mask = bool(spec["document_mask"])
    c.optimizer.lr = float(spec["lr"])
    c.optimizer.min_lr = float(spec["lr"]) / 10
    c.optimizer.b2 = float(spec["b2"])
    c.total_steps = int(total_steps)
    c.log_every = 10
    c.ckpt_every = 0
    c.eval_every = 0
    c.progress = False
    c.eval.buckets = buckets
    c.eval.per_bucket = 64
    for kv in sets:
        key, _, raw = kv.partition("=")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        override(c, key, value, where="--set: ")
    if probe:
        c.eval.per_bucket = 0               # no held-out eval in the probe
        c.keep_checkpoints = 1
    c.lock()
    return c


def eval_config(run_dir, workdir, a):
    from interplay_jax.config import load_config
    _, _, preset, _, buckets = SCALES[a.scale]
    c = load_config(f"eval.py:{preset}", lock=False)
    c.checkpoints = str(run_dir)
    c.names = "base"
    c.workdir = str(workdir)
    c.eval.ops = a.eval_ops
    c.eval.per_op = int(a.eval_per_op)
    c.sampling.n = int(a.eval_n)
    c.sampling.max_new_tokens = int(a.eval_max_new)
    c.sampling.batch_prompts = int(a.eval_batch)
    c.buckets = buckets
    c.progress = False
    c.lock()
    return c


# ----------------------------------------------------------------------------------------- one point


def run_point(a) -> int:
    """One point, in this process: probe -> train -> eval -> point.json."""
    from interplay_jax.model.qwen2 import model_config_from_dict
    from interplay_jax.stages import run_config

    spec = json.loads(a.spec)
    out = pathlib.Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rec = {"spec": spec, "status": "started"}
    tokens_per_step = spec["batch_size"] * spec["seq_len"]
    t0 = time.time()
    if a.tokens:
        steps = max(1, int(float(a.tokens) // tokens_per_step))
        rec["probe"] = None
    else:
        probe = run_config(pretrain_config(spec, out / "probe", a.tokenizer, a.set, a.probe_steps, probe=True))
        sps = float(probe["final"].get("steps_per_s") or 0.0)
        steps = max(10, int(a.minutes * 60 * sps))
        rec["probe"] = {"steps": a.probe_steps, "steps_per_s": sps, "wall_s": probe.get("wall_s")}
        print(f"[{spec['name']}] probe: {sps:.2f} steps/s -> {steps} steps for {a.minutes} min", flush=True)
    cfg = pretrain_config(spec, out / "train", a.tokenizer, a.set, steps)
    mc = model_config_from_dict(cfg.model)
    rec["params"] = mc.num_params()
    # what actually ran (--set may change the point's own fields)
    rec["effective"] = {"batch_size": int(cfg.batch_size), "seq_len": int(cfg.seq_len), "lr": float(cfg.optimizer.lr),
                        "b2": float(cfg.optimizer.b2), "document_mask": bool(cfg.document_mask),
                        "mixture": str(cfg.mixture), "num_layers": mc.num_layers, "hidden_size": mc.hidden_size,
                        "dtype": mc.dtype, "data": cfg.data.to_dict()}
    tokens_per_step = int(cfg.batch_size) * int(cfg.seq_len)
    guard = threading.Timer(a.guard_s, lambda: os.kill(os.getpid(), signal.SIGTERM)) if a.guard_s > 0 else None
    t1 = time.time()
    try:
        if guard:
            guard.start()
        summary = run_config(cfg)
        rec["status"] = "done"
    except KeyboardInterrupt:          # the guard (or the driver) stopped training; the loop saved
        summary = {}
        rec["status"] = "cut"
    finally:
        if guard:
            guard.cancel()
    rec["train_wall_s"] = round(time.time() - t1, 1)
    fin = summary.get("final", {})
    done_steps = int(summary.get("steps") or _latest_step(out / "train"))
    rec.update(steps=done_steps, planned_steps=steps, tokens=done_steps * tokens_per_step,
               tokens_per_s=fin.get("tokens_per_s"), loss=fin.get("loss"),
               heldout={k.split("/")[-1]: v for k, v in fin.items() if k.startswith("eval/heldout_loss/")})
    (out / "point.json").write_text(json.dumps({**rec, "eval_error": "not evaluated (yet)"}, indent=1))
    t2 = time.time()
    try:
        res = run_config(eval_config(out / "train", out / "eval", a))["summaries"]["base"]
        rec["eval"] = {b: {"verified": e["verified"], "answer": e["answer"]} for b, e in res["pass_at_k"].items()}
        rec["eval_intervals"] = res.get("intervals", {}).get("pass_at_k", {})
        rec["per_op"] = {str(op): {"verified@1": e["verified"][1], "answer@1": e["answer"][1]}
                         for op, e in res["per_op"].items()}
    except Exception as e:  # noqa: BLE001 — record and go on: the other points still count
        rec["eval_error"] = f"{type(e).__name__}: {e}"
    rec["eval_wall_s"] = round(time.time() - t2, 1)
    rec["wall_s"] = round(time.time() - t0, 1)
    (out / "point.json").write_text(json.dumps(rec, indent=1))
    print(f"[{spec['name']}] {rec['status']}: {done_steps} steps, eval {rec['eval_wall_s']} s", flush=True)
    return 0


def _latest_step(run_dir) -> int:
    from interplay_jax import checkpoint as ck
    steps = ck.complete_steps(run_dir)
    return max(steps) if steps else 0


# ----------------------------------------------------------------------------------------- driver


def _fmt(v, pct=True):
    if v is None:
        return "-"
    return f"{100 * v:.1f}" if pct else f"{v:.3f}"


def table(records: list[dict]) -> str:
    rows = ["| point | layers x width | params | lr | betas | batch tokens | doc mask | mixture | steps | tokens | "
            "train min | held-out loss ID / edge | ID pass@1 | ID pass@n | edge pass@1 | edge pass@n | "
            "ID answer@1 | status |",
            "|" + "---|" * 18]
    for r in records:
        s = {**r["spec"], **r.get("effective", {})}
        m = {**{"num_layers": 10, "hidden_size": 256}, **r["spec"]["model"], **r.get("effective", {})}
        mixture = CPU_MIXTURE_NAMES.get(s["mixture"], s["mixture"])
        ev = r.get("eval", {})

        def pk(bucket, metric, which):
            v = ev.get(bucket, {}).get(metric, {})
            if not v:
                return None
            ks = sorted(int(k) for k in v)
            return v.get(ks[0] if which == 1 else ks[-1], v.get(str(ks[0] if which == 1 else ks[-1])))

        held = r.get("heldout", {})
        rows.append(
            f"| {s['name']} | {m['num_layers']} x {m['hidden_size']} | {r.get('params', 0) / 1e6:.1f}M | {s['lr']:g} | "
            f"(0.9, {s['b2']}) | {s['batch_size'] * s['seq_len'] // 1024}K | {'on' if s['document_mask'] else 'off'} | "
            f"{mixture} | {r.get('steps', '-')} | {r.get('tokens', 0) / 1e6:.1f}M | "
            f"{r.get('train_wall_s', 0) / 60:.1f} | {_fmt(held.get('ID'), False)} / {_fmt(held.get('OOD-edge'), False)} | "
            f"{_fmt(pk('ID', 'verified', 1))} | {_fmt(pk('ID', 'verified', 'n'))} | "
            f"{_fmt(pk('OOD-edge', 'verified', 1))} | {_fmt(pk('OOD-edge', 'verified', 'n'))} | "
            f"{_fmt(pk('ID', 'answer', 1))} | {r.get('status')}{' / eval error' if r.get('eval_error') else ''} |")
    return "\n".join(rows)


def per_op_table(records: list[dict], out) -> str:
    """Strict / answer-only pass@1 per op and point, and for op2 and op3 (deliver 5's oddity) the share of
    samples whose first error is a wrong dependency and the steps written beyond the gold solution (from
    each point's eval/results.json, where the point was evaluated)."""
    ops = sorted({int(op) for r in records for op in r.get("per_op", {})})
    rows = ["| point | " + " | ".join(f"op{op} strict / answer@1" for op in ops)
            + " | op2 / op3 dependency-first | op2 / op3 steps - gold |", "|" + "---|" * (len(ops) + 3)]
    for r in records:
        per_op = r.get("per_op", {})
        cells = [f"{_fmt(per_op[str(op)]['verified@1'])} / {_fmt(per_op[str(op)]['answer@1'])}"
                 if str(op) in per_op else "-" for op in ops]
        ea = {}
        f = pathlib.Path(out) / r["spec"]["name"] / "eval" / "results.json"
        if f.is_file():
            ea = json.loads(f.read_text())["checkpoints"].get("base", {}).get("error_analysis", {})
        dep = " / ".join(_fmt(ea[op]["primary"]["dependency"]) if op in ea else "-" for op in ("2", "3"))
        extra = " / ".join(f"{ea[op]['extra_steps']:+.2f}" if op in ea else "-" for op in ("2", "3"))
        rows.append(f"| {r['spec']['name']} | " + " | ".join(cells) + f" | {dep} | {extra} |")
    return "\n".join(rows)


def write_tables(out, records: list[dict], head: str) -> str:
    md = table(records) + "\n\nPer op (strict pass@1 / answer-only pass@1, %):\n\n" + per_op_table(records, out)
    (pathlib.Path(out) / "sweep.md").write_text(head + "\n\n" + md + "\n")
    return md


def rewrite(a) -> int:
    """Re-make DIR/sweep.md from DIR/sweep.json (e.g. after a table gained columns), or, given DIR of a
    sweep whose driver was stopped early, from the points' own DIR/<point>/point.json (oldest first)."""
    path = pathlib.Path(a.sweep)
    if path.is_dir() and not (path / "sweep.json").is_file():
        files = sorted(path.glob("*/point.json"), key=lambda f: f.stat().st_mtime)
        if not files:
            raise SystemExit(f"error: {path} has neither sweep.json nor */point.json")
        out, points = path, [json.loads(f.read_text()) for f in files]
        head = f"Sweep: {len(points)} points tabulated from their point.json files (the driver did not finish)"
    else:
        path = path / "sweep.json" if path.is_dir() else path
        out, points = path.parent, json.loads(path.read_text())["points"]
        head = (out / "sweep.md").read_text().split("\n", 1)[0] if (out / "sweep.md").is_file() else "Sweep"
    print(head + "\n\n" + write_tables(out, points, head))
    return 0


def run_sweep(a) -> int:
    specs = [point_spec(n, a.scale) for n in point_names(a.points, a.scale)]
    out = pathlib.Path(a.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = a.tokenizer
    if not tokenizer:
        from interplay_jax.task.tokenizer import default_tokenizer_path
        tokenizer = str(default_tokenizer_path())      # built once here, not by every point at once
    guard = a.minutes * 60 * 1.5 + 120 if a.minutes and not a.tokens else 0
    t0 = time.time()
    procs = []
    for i in range(0, len(specs), a.parallel):
        chunk = specs[i:i + a.parallel]
        env = {**os.environ, "XLA_PYTHON_CLIENT_MEM_FRACTION": f"{min(0.9, a.mem_fraction / len(chunk)):.3f}"}
        running = []
        for spec in chunk:
            d = out / spec["name"]
            d.mkdir(exist_ok=True)
            cmd = [sys.executable, __file__, "point", "--spec", json.dumps(spec), "--out", str(d),
                   "--tokenizer", tokenizer, "--minutes", str(a.minutes), "--tokens", str(a.tokens or ""),
                   "--probe-steps", str(a.probe_steps), "--guard-s", str(guard), "--eval-ops", a.eval_ops,
                   "--eval-per-op", str(a.eval_per_op), "--eval-n", str(a.eval_n),
                   "--eval-max-new", str(a.eval_max_new), "--eval-batch", str(a.eval_batch)]
            for kv in a.set:
                cmd += ["--set", kv]
            log = open(d / "log.txt", "w")
            p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            running.append((spec, p, d))
            print(f"started {spec['name']} (log {d / 'log.txt'})", flush=True)
        while any(p.poll() is None for _, p, _ in running):
            if a.deadline and time.time() - t0 > a.deadline:
                for spec, p, _ in running:
                    if p.poll() is None:
                        print(f"deadline: killing {spec['name']}", flush=True)
                        os.killpg(p.pid, signal.SIGKILL)
            time.sleep(2)
        procs += running
    records = []
    for spec, p, d in procs:
        f = d / "point.json"
        if f.is_file():
            records.append(json.loads(f.read_text()))
        else:
            tail = (d / "log.txt").read_text(errors="replace").strip().splitlines()[-5:]
            records.append({"spec": spec, "status": f"failed (rc {p.returncode}): {' / '.join(tail)[-300:]}"})
    head = (f"Sweep ({a.scale}): {len(records)} points, "
            f"{'%g minutes' % a.minutes if not a.tokens else '%g tokens' % float(a.tokens)} "
            f"each, {a.parallel} at a time; eval ops {a.eval_ops}, {a.eval_per_op} prompts/op, n = {a.eval_n}; "
            f"data: {' '.join(a.set) or 'configs default'}; wall {time.time() - t0:.0f} s")
    md = write_tables(out, records, head)
    (out / "sweep.json").write_text(json.dumps({"args": vars(a), "points": records}, indent=1))
    print(head)
    print(md)
    return 0


def recipe(a) -> int:
    """Shell assignments PRETRAIN_SET / PRETRAIN_STEPS for benchmarks/gpu_e1_mini.sh from a sweep:
    among the points trained on ``--mixture`` (default base, E1's 20/30/50) that were evaluated, the
    one with the highest strict ID pass@1 (rule fixed before the sweep ran); steps = ``--seconds`` x
    its probe speed (measured while sharing the GPU, so a run alone finishes early rather than late)."""
    data = json.loads(pathlib.Path(a.sweep).read_text())
    best, best_v = None, -1.0
    for r in data["points"]:
        eff = {**r["spec"], **r.get("effective", {})}
        v = (r.get("eval", {}).get("ID", {}).get("verified", {}) or {}).get("1")
        if eff.get("mixture") != a.mixture or v is None:
            continue
        if float(v) > best_v:
            best, best_v = r, float(v)
    if best is None:
        print(f"echo 'sweep {a.sweep}: no evaluated point on mixture {a.mixture}; using the grid recipe' >&2")
        return 0
    spec, eff = best["spec"], {**best["spec"], **best.get("effective", {})}
    fields = [f"model.{k}={v}" for k, v in spec["model"].items()]
    fields += [f"optimizer.lr={eff['lr']}", f"optimizer.min_lr={eff['lr'] / 10}", f"optimizer.b2={eff['b2']}",
               f"batch_size={eff['batch_size']}", f"seq_len={eff['seq_len']}",
               f"document_mask={bool(eff['document_mask'])}"]
    sps = float((best.get("probe") or {}).get("steps_per_s") or 0.0)
    steps = int(a.seconds * sps) if sps else 0
    print(f"echo 'recipe from {a.sweep}: point {spec['name']} (ID strict pass@1 {100 * best_v:.1f}%), "
          f"{steps} steps ({a.seconds:g} s at {sps:.2f} steps/s)' >&2")
    print(f"PRETRAIN_SET='{' '.join(fields)}'")
    if steps:
        print(f"PRETRAIN_STEPS={steps}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/sweep_mini.py")
    p.add_argument("mode", choices=("run", "point", "list", "recipe", "table"))
    p.add_argument("--sweep", default="", help="(recipe mode) a sweep.json; (table mode) a sweep.json or a sweep DIR")
    p.add_argument("--seconds", type=float, default=180.0, help="(recipe mode) training seconds of the E1 base")
    p.add_argument("--mixture", default="base", help="(recipe mode) only points trained on this mixture")
    p.add_argument("--out", default="out/sweep_mini")
    p.add_argument("--points", default="default",
                   help="comma-separated names (see `list`); default / all expand in place, e.g. default,d12_bs32k")
    p.add_argument("--spec", default="", help="(point mode) the point as JSON")
    p.add_argument("--minutes", type=float, default=3.0, help="training minutes per point (probe-based)")
    p.add_argument("--tokens", default="", help="train this many tokens per point instead of --minutes")
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--guard-s", type=float, default=0.0, help="(point mode) stop training after this many s")
    p.add_argument("--parallel", type=int, default=6)
    p.add_argument("--mem-fraction", type=float, default=0.9)
    p.add_argument("--deadline", type=float, default=0.0, help="kill everything after this many s (0: none)")
    p.add_argument("--tokenizer", default="")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="pre-training config field for every point, e.g. data.num_threads=2")
    p.add_argument("--scale", choices=tuple(SCALES), default="mini",
                   help="mini: 15-30M models on a GPU (op2-10 / op11-14); cpu: ~1-2M models on a CPU "
                        "(op2-5 / op6-7)")
    p.add_argument("--eval-ops", default="", help="default: 2-14 (mini), 2-7 (cpu)")
    p.add_argument("--eval-per-op", type=int, default=16)
    p.add_argument("--eval-n", type=int, default=16)
    p.add_argument("--eval-max-new", type=int, default=0, help="default: 768 (mini), 320 (cpu)")
    p.add_argument("--eval-batch", type=int, default=32)
    a = p.parse_args(argv)
    if a.mode == "point" and a.spec:             # a point's scale is its spec's (one source for train and eval)
        a.scale = json.loads(a.spec).get("scale", "mini")
    a.eval_ops = a.eval_ops or ("2-14" if a.scale == "mini" else "2-7")
    a.eval_max_new = a.eval_max_new or (768 if a.scale == "mini" else 320)
    if a.mode == "list":
        for n in SCALES[a.scale][0]:
            print(f"{n:<14} {'(default) ' if n in default_points(a.scale) else ''}{point_spec(n, a.scale)}")
        return 0
    if a.mode == "point":
        from interplay_jax.errors import UserError
        try:
            return run_point(a)
        except UserError as e:           # a bad point or --set: one line in the table, not a traceback
            print(f"error: {e}", file=sys.stderr)
            return 2
    if a.mode == "recipe":
        return recipe(a)
    if a.mode == "table":
        return rewrite(a)
    return run_sweep(a)


if __name__ == "__main__":
    sys.exit(main())
