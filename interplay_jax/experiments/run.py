"""``python -m interplay_jax.experiments.run E1 --scale=mini [--dry-run] [--emit-commands]``.

Prints the experiment's DAG, then runs it in dependency order: finished runs are skipped (a marker
file in their directory), interrupted runs resume (every stage resumes from its own workdir).
``--emit-commands`` prints one shell command per run instead (for a cluster scheduler; run them in
the printed order, or as a DAG using the ``# after:`` comments).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
import time

from interplay_jax.errors import INTERRUPTED_EXIT, ConfigError, UserError, exit_interrupted
from interplay_jax.experiments import dag
from interplay_jax.stages import run_config


def describe(runs, root) -> str:
    lines = []
    for r in runs:
        done = (root / r.name / dag.DONE_MARKER).exists()
        after = f" <- {', '.join(r.deps())}" if r.deps() else ""
        lines.append(f"  [{'done' if done else '    '}] {r.name:<40} {r.config}:{r.arg}{after}"
                     + (f"  # {r.note}" if r.note else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m interplay_jax.experiments.run")
    p.add_argument("experiment", help="E1 .. E7")
    p.add_argument("--scale", default="mini", help=f"{', '.join(dag.SCALES)}, or one the experiment adds")
    p.add_argument("--root", default="runs/experiments", help="where run directories go")
    p.add_argument("--dry-run", action="store_true", help="print the DAG and exit")
    p.add_argument("--emit-commands", action="store_true", help="print one command per run and exit")
    p.add_argument("--only", default="", help="comma-separated run names (their deps must be done)")
    p.add_argument("--override", action="append", default=[], metavar="RUN.KEY=VALUE",
                   help="change one run's config field, e.g. base.total_steps=1500 (repeatable)")
    a = p.parse_args(argv)
    try:
        runs = dag.expand(a.experiment, a.scale)
        dag.apply_overrides(runs, a.override)
        root = pathlib.Path(a.root) / f"{a.experiment.upper()}_{a.scale}"
        if a.emit_commands:
            for r in runs:
                print(f"# {r.name}" + (f"  # after: {', '.join(r.deps())}" if r.deps() else ""))
                print(dag.command(r, root))
            return 0
        print(f"{a.experiment.upper()} at scale {a.scale}: {len(runs)} runs under {root}")
        print(describe(runs, root))
        if a.dry_run:
            return 0
        only = {s for s in a.only.split(",") if s}
        unknown = sorted(only - {r.name for r in runs})
        if unknown:
            raise ConfigError(f"--only: {a.experiment.upper()} at scale {a.scale} has no run {', '.join(unknown)} "
                              f"(its runs: {', '.join(r.name for r in runs)})")
        for r in runs:
            if only and r.name not in only:
                continue
            marker = root / r.name / dag.DONE_MARKER
            if marker.exists():
                print(f"== {r.name}: done, skipped")
                continue
            print(f"== {r.name}: {r.note or r.config}")
            t0 = time.time()
            run_config(dag.load_config(r, root))
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"finished in {time.time() - t0:.0f}s\n")
        done = f"{', '.join(r.name for r in runs if r.name in only)} done" if only else "all runs done"
        print(f"{a.experiment.upper()}: {done}; report: python -m interplay_jax.experiments.report "
              f"{a.experiment.upper()} --scale={a.scale} --root={a.root}")
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:      # SIGINT / SIGTERM: the stage saved its checkpoint
        exit_interrupted(f"interrupted ({e or 'signal'}): rerun the same command to resume")
        return INTERRUPTED_EXIT     # (not reached)


if __name__ == "__main__":
    sys.exit(main())
