"""Run an experiment DAG on one machine in waves, with runs in parallel and a hard time limit each.

    python benchmarks/run_experiment.py E1 --scale=mini --root=ROOT \
        [--override 'rl_*.rl.total_steps=20' ...] [--limit pretrain=270 --limit rl=180 ...] \
        [--deadline 600] [--parallel 6] [--seed-dir DIR] [--mem-fraction 0.9]

The GPU scripts' engine (benchmarks/gpu_e1_mini.sh). Each wave launches every run whose
dependencies are usable (done, or cut by a time limit with a checkpoint), up to ``--parallel`` at a
time, each as its own process (``python -m interplay_jax.experiments.run E --only NAME``) sharing the
accelerator (``XLA_PYTHON_CLIENT_MEM_FRACTION`` = ``--mem-fraction`` / processes in the wave). An
eval run is split into one process per checkpoint (same workdir, so
``python -m interplay_jax.experiments.report`` finds every ``<eval>/<checkpoint>/results.json``).
A run past its limit (``--limit KIND=SECONDS``, kinds tokenizer / pretrain / midtrain / rl / eval,
capped by what is left of ``--deadline``) gets SIGTERM: training stages save a checkpoint and stop,
an evaluation keeps the prompts finished so far (samples.jsonl; the report marks it partial);
SIGKILL follows after ``--grace`` seconds. Runs whose dependencies failed are skipped.
``--override`` takes RUN.KEY=VALUE; RUN may be a pattern (``rl_*``) or a stage kind (``@rl``).
``--seed-dir`` copies finished runs (e.g. a tokenizer built beforehand) into the root first.
Writes ``ROOT/<E>_<scale>/phases.json`` (per run: status, seconds, limit, the compile cache line)
and logs under ``ROOT/<E>_<scale>/logs/``.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from interplay_jax import checkpoint as ck  # noqa: E402
from interplay_jax.experiments import dag  # noqa: E402

KINDS = {"tokenizer.py": "tokenizer", "pretrain.py": "pretrain", "midtrain.py": "midtrain", "rl.py": "rl",
         "eval.py": "eval", "generate.py": "generate"}
DEFAULT_LIMITS = {"tokenizer": 300, "generate": 300, "pretrain": 600, "midtrain": 600, "rl": 600, "eval": 600}


def expand_overrides(specs, runs) -> list[str]:
    """RUN.KEY=VALUE with RUN a run name, a pattern (``rl_*``: may match nothing) or ``@KIND``
    (every run of that stage kind, e.g. ``@pretrain``, ``@rl``, ``@eval``) -> one override per run."""
    names = [r.name for r in runs]
    out = []
    for spec in specs:
        target, eq, value = spec.partition("=")
        run, dot, key = target.partition(".")
        if not (eq and dot and key):
            raise SystemExit(f"error: --override {spec!r}: expected RUN.KEY=VALUE")
        if run.startswith("@"):
            hits = [r.name for r in runs if KINDS[r.config] == run[1:]]
        else:
            hits = [n for n in names if fnmatch.fnmatchcase(n, run)]
            if not hits and not any(ch in run for ch in "*?["):
                raise SystemExit(f"error: --override {spec!r}: no run named {run!r}; runs: {', '.join(names)}")
        out += [f"{n}.{key}={value}" for n in hits]
    return out


def _signal(proc, sig) -> None:
    """Signal the job's process group (the run and anything it started)."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


@dataclasses.dataclass
class Job:
    name: str             # run name, or "<eval run>/<checkpoint>" for an eval part
    run: object           # dag.Run
    cmd: list
    kind: str
    log: pathlib.Path
    proc: object = None
    start: float = 0.0
    limit: float = 0.0
    status: str = ""
    seconds: float = 0.0
    signalled: bool = False


class Runner:
    def __init__(self, a):
        self.a = a
        self.t0 = time.time()
        self.runs = dag.expand(a.experiment, a.scale)
        self.names = [r.name for r in self.runs]
        self.overrides = expand_overrides(a.override, self.runs)
        dag.apply_overrides(self.runs, self.overrides)
        self.root = pathlib.Path(a.root).absolute()
        self.exp_root = self.root / f"{a.experiment.upper()}_{a.scale}"
        self.logs = self.exp_root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.limits = dict(DEFAULT_LIMITS)
        for spec in a.limit:
            kind, _, sec = spec.partition("=")
            if kind not in self.limits:
                raise SystemExit(f"error: --limit {spec!r}: kind must be one of {', '.join(self.limits)}")
            self.limits[kind] = float(sec)
        self.state: dict[str, str] = {}       # run name -> done | cut | failed | skipped
        self.record: dict[str, dict] = {}

    # ------------------------------------------------------------------ status of a run
    def usable(self, r) -> bool:
        d = self.exp_root / r.name
        if (d / dag.DONE_MARKER).exists():
            return True
        if KINDS[r.config] in ("pretrain", "midtrain", "rl"):
            return bool(ck.complete_steps(d))
        return False

    def seed(self) -> None:
        if not self.a.seed_dir:
            return
        src_root = pathlib.Path(self.a.seed_dir)
        for r in self.runs:
            src = src_root / r.name
            dst = self.exp_root / r.name
            if (src / dag.DONE_MARKER).exists() and not dst.exists():
                shutil.copytree(src, dst)
                print(f"== {r.name}: copied from {src}", flush=True)

    # ------------------------------------------------------------------ jobs
    def jobs_for(self, r) -> list[Job]:
        kind = KINDS[r.config]
        base = [sys.executable, "-m", "interplay_jax.experiments.run", self.a.experiment, f"--scale={self.a.scale}",
                f"--root={self.root}"] + [f"--override={o}" for o in self.overrides]
        if kind != "eval":
            return [Job(r.name, r, base + [f"--only={r.name}"], kind, self.logs / f"{r.name}.log")]
        jobs = []
        for c in r.compare:
            if self.state.get(c) in ("failed", "skipped") or not self.usable(next(x for x in self.runs if x.name == c)):
                print(f"== {r.name}/{c}: skipped (no checkpoint of {c})", flush=True)
                self.record[f"{r.name}/{c}"] = {"status": "skipped"}
                continue
            part = dataclasses.replace(r, compare=(c,))
            cmd = shlex.split(dag.command(part, self.exp_root))
            cmd[0] = sys.executable
            jobs.append(Job(f"{r.name}/{c}", r, cmd, kind, self.logs / f"{r.name}_{c}.log"))
        return jobs

    def launch(self, job: Job, n_in_wave: int) -> None:
        env = dict(os.environ)
        if self.a.mem_fraction > 0:
            env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{min(0.9, self.a.mem_fraction / max(n_in_wave, 1)):.3f}"
        left = self.a.deadline - (time.time() - self.t0) if self.a.deadline > 0 else float("inf")
        job.limit = max(1.0, min(self.limits[job.kind], left - self.a.grace))
        job.start = time.time()
        f = open(job.log, "w")
        job.proc = subprocess.Popen(job.cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        print(f"== {job.name}: started (limit {job.limit:.0f} s, log {job.log})", flush=True)

    def wait(self, jobs: list[Job]) -> None:
        while any(j.proc.poll() is None for j in jobs):
            now = time.time()
            for j in jobs:
                if j.proc.poll() is not None:
                    continue
                age = now - j.start
                if age > j.limit and not j.signalled:
                    print(f"== {j.name}: time limit {j.limit:.0f} s reached: SIGTERM", flush=True)
                    _signal(j.proc, signal.SIGTERM)
                    j.signalled = True
                elif age > j.limit + self.a.grace:
                    print(f"== {j.name}: still running {self.a.grace:.0f} s after SIGTERM: SIGKILL", flush=True)
                    _signal(j.proc, signal.SIGKILL)
            time.sleep(1.0)

    def finish(self, job: Job) -> None:
        job.seconds = time.time() - job.start
        rc = job.proc.returncode
        r = job.run
        if job.kind == "eval":
            out = self.exp_root / r.name / job.name.split("/", 1)[1]
            job.status = ("done" if (out / "results.json").is_file() else
                          "cut" if (out / "samples.jsonl").is_file() else "failed")
        elif (self.exp_root / r.name / dag.DONE_MARKER).exists():
            job.status = "done"
        else:
            job.status = "cut" if self.usable(r) else "failed"
        text = job.log.read_text(errors="replace") if job.log.is_file() else ""
        cache = [ln for ln in text.splitlines() if ln.startswith("compile cache ")]
        self.record[job.name] = {"status": job.status, "seconds": round(job.seconds, 1), "limit": round(job.limit),
                                 "returncode": rc, "signalled": job.signalled, "compile_cache": cache[-1:] or None,
                                 "log": str(job.log)}
        tail = "" if job.status == "done" else f" (rc {rc}; last lines of {job.log}:\n    " + "\n    ".join(
            text.strip().splitlines()[-6:]) + ")"
        print(f"== {job.name}: {job.status} in {job.seconds:.0f} s{tail}", flush=True)

    # ------------------------------------------------------------------ the waves
    def run(self) -> int:
        self.seed()
        pending = [r for r in self.runs if not (self.exp_root / r.name / dag.DONE_MARKER).exists()]
        for r in self.runs:
            if r not in pending:
                self.state[r.name] = "done"
                self.record[r.name] = {"status": "done (before this call)"}
        while pending:
            ready, blocked = [], []
            for r in pending:
                deps = r.deps()
                if any(self.state.get(d) in ("failed", "skipped") for d in deps):
                    if KINDS[r.config] == "eval":
                        ready.append(r)        # evaluate what exists
                    else:
                        self.state[r.name] = "skipped"
                        self.record[r.name] = {"status": "skipped (a dependency failed)"}
                        print(f"== {r.name}: skipped (a dependency failed)", flush=True)
                elif all(d in self.state for d in deps):
                    ready.append(r)
                else:
                    blocked.append(r)
            pending = [r for r in blocked if r.name not in self.state]
            if not ready:
                if pending:
                    print("error: no run can start: " + ", ".join(r.name for r in pending), flush=True)
                break
            if self.a.deadline > 0 and time.time() - self.t0 > self.a.deadline - self.a.grace:
                for r in ready + pending:
                    self.record[r.name] = {"status": "skipped (deadline)"}
                print("== deadline reached: skipped " + ", ".join(r.name for r in ready + pending), flush=True)
                break
            jobs = [j for r in ready for j in self.jobs_for(r)]
            for start in range(0, len(jobs), self.a.parallel):
                chunk = jobs[start:start + self.a.parallel]
                for j in chunk:
                    self.launch(j, len(chunk))
                self.wait(chunk)
                for j in chunk:
                    self.finish(j)
            for r in ready:
                mine = [j for j in jobs if j.run is r]
                st = [j.status for j in mine]
                self.state[r.name] = ("done" if st and all(s == "done" for s in st) else
                                      "cut" if any(s in ("done", "cut") for s in st) else "failed")
        total = time.time() - self.t0
        (self.exp_root / "phases.json").write_text(json.dumps(
            {"experiment": self.a.experiment.upper(), "scale": self.a.scale, "wall_seconds": round(total, 1),
             "overrides": self.overrides, "limits": self.limits, "runs": self.record}, indent=1))
        print(f"== all waves finished in {total:.0f} s; {self.exp_root / 'phases.json'}", flush=True)
        return 0 if all(v.get("status", "").startswith("done") for v in self.record.values()) else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/run_experiment.py")
    p.add_argument("experiment")
    p.add_argument("--scale", default="mini", help=f"{', '.join(dag.SCALES)}, or one the experiment adds")
    p.add_argument("--root", default="runs/experiments")
    p.add_argument("--override", action="append", default=[], metavar="RUN.KEY=VALUE")
    p.add_argument("--limit", action="append", default=[], metavar="KIND=SECONDS")
    p.add_argument("--deadline", type=float, default=0.0, help="seconds for everything (0: none)")
    p.add_argument("--grace", type=float, default=45.0, help="seconds between SIGTERM and SIGKILL")
    p.add_argument("--parallel", type=int, default=6, help="processes at a time")
    p.add_argument("--mem-fraction", type=float, default=0.9,
                   help="accelerator memory shared by a wave's processes (0: leave JAX's default)")
    p.add_argument("--seed-dir", default="", help="copy finished runs from DIR/<run> before starting")
    a = p.parse_args(argv)
    return Runner(a).run()


if __name__ == "__main__":
    sys.exit(main())
