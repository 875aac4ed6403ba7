"""``python -m interplay_jax.lineage RUN_DIR [--digest]``: print a run's chain of parents.

Each run writes ``RUN_DIR/lineage.json`` ({stage, config, parent: {run_dir, step} | null}); this
follows the parents back to the first pre-training run and prints one block per run: stage, run
dir, the step used (latest checkpoint for RUN_DIR itself, the step the child started from for the
ancestors) and a config summary. ``--digest`` adds the sha256 content hash of that checkpoint's
parameters (equal parameters, equal digest), to tell checkpoints apart and check reproductions.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback

from interplay_jax import checkpoint as ck
from interplay_jax.errors import VERBOSE_ENV, UserError, verbose

SUMMARY_KEYS = ("mixture", "model.preset", "seq_len", "batch_size", "total_tokens", "total_steps",
                "optimizer.lr", "optimizer.min_lr", "seed", "init_from")


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def summarize(config: dict) -> str:
    items = [(k, _get(config or {}, k)) for k in SUMMARY_KEYS]
    return ", ".join(f"{k}={v}" for k, v in items if v not in (None, "", {}))


def format_chain(run_dir, digest: bool = False) -> str:
    chain = ck.lineage_chain(run_dir)
    lines = []
    for depth, rec in enumerate(chain):
        head = "run" if depth == 0 else "parent" if depth == 1 else f"parent^{depth}"
        step = rec.get("step")
        lines.append(f"[{head}] stage={rec.get('stage')} step={step if step is not None else '-'} "
                     f"run_dir={rec['run_dir']}")
        summary = summarize(rec.get("config") or {})
        if summary:
            lines.append(f"    config: {summary}")
        if digest:
            if step is None:
                lines.append("    params digest: - (no checkpoint)")
            else:
                params, _, _ = ck.restore_params(rec["run_dir"], step=step)
                lines.append(f"    params digest: sha256:{ck.params_digest(params)}")
    first = chain[-1]
    if first.get("stage") == "hf":
        lines.append("(the chain starts from an HF checkpoint directory)")
    elif first.get("stage") != "pretrain":
        lines.append(f"(the chain ends at a {first.get('stage')} run with no parent)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m interplay_jax.lineage", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--digest", action="store_true",
                        help="add each checkpoint's params digest (the checkpoint is verified first)")
    parser.add_argument("--verbose", action="store_true", help="print the traceback behind an error line")
    args = parser.parse_args(argv)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        print(format_chain(args.run_dir, digest=args.digest))
    except UserError as e:
        if verbose():
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
