"""Generator throughput on one core: problems/s over ops 2-20 x both modes x 3 contexts.

    python benchmarks/bench_generator.py [--n 4000]
"""
from __future__ import annotations

import argparse
import time

from interplay_jax.task.generator import MODES, generate_problem

CONTEXTS = ("crazy_zootopia", "teachers_in_school", "movie_festival_awards")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--min-op", type=int, default=2)
    ap.add_argument("--max-op", type=int, default=20)
    args = ap.parse_args()
    ops = list(range(args.min_op, args.max_op + 1))
    jobs = [(ops[i % len(ops)], CONTEXTS[(i // len(ops)) % 3], MODES[i % 2], i) for i in range(args.n)]
    generate_problem(10)  # warm imports
    per_mode = {m: [0, 0.0] for m in MODES}
    t0 = time.perf_counter()
    for op, ctx, mode, seed in jobs:
        t = time.perf_counter()
        generate_problem(op, ctx, mode, seed)
        per_mode[mode][0] += 1
        per_mode[mode][1] += time.perf_counter() - t
    dt = time.perf_counter() - t0
    print(f"generator: {args.n} problems (ops {args.min_op}-{args.max_op}, both modes, 3 contexts) in {dt:.2f}s "
          f"= {args.n / dt:,.0f} problems/s on one core")
    for mode, (n, s) in per_mode.items():
        print(f"  {mode}: {1000 * s / max(n, 1):.2f} ms/problem")


if __name__ == "__main__":
    main()
