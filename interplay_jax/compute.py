"""Compute-matched budgets for mid-training vs RL (the study's Eq. 1-2, Table 3).

Training FLOPs C ≈ 6·P·T, so at a fixed model size a budget is a number of token-equivalents T.
Mid-training spends its tokens directly: one step = batch_size × seq_len tokens (512K at paper scale).
One GRPO step costs T_RL ≈ (4/3 + γ/3)·N·r·L_total token-equivalents: rollout generation (a forward,
1/3 of a train step), the policy update (forward+backward, 3/3), and γ reference forwards (γ=1 with a
KL reference model), over N prompts × r rollouts × L_total tokens each.

A total budget T is split as mid-training (1−β)·T and RL β·T.

CLI: ``python -m interplay_jax.compute --total-tokens 2.1e9 --beta 0.5`` prints JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from interplay_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class ComputeSettings:
    mid_batch_size: int = 256          # sequences per mid-training step
    mid_seq_len: int = 2048
    rl_prompts: int = 1024             # N prompts per RL step
    rl_rollouts: int = 6               # r rollouts per prompt
    rl_total_len: int = 2048           # L_total = prompt + response limit
    gamma: float = 1.0                 # 1 with a reference (KL) model, 0 without

    @property
    def mid_step_tokens(self) -> float:
        return float(self.mid_batch_size * self.mid_seq_len)

    @property
    def rl_step_tokens(self) -> float:
        return (4.0 / 3.0 + self.gamma / 3.0) * self.rl_prompts * self.rl_rollouts * self.rl_total_len


def split_budget(total_tokens: float, beta: float, settings: ComputeSettings = ComputeSettings()) -> dict:
    """Split ``total_tokens`` token-equivalents into mid-training and RL steps at RL share ``beta``."""
    if not 0.0 <= beta <= 1.0:
        raise ConfigError(f"beta={beta} must lie in [0, 1]")
    if total_tokens <= 0:
        raise ConfigError(f"total tokens {total_tokens} must be positive")
    mid_tokens = (1.0 - beta) * total_tokens
    rl_tokens = beta * total_tokens
    mid_steps = round(mid_tokens / settings.mid_step_tokens)
    rl_steps = round(rl_tokens / settings.rl_step_tokens)
    return {
        "total_tokens": total_tokens,
        "beta": beta,
        "mid_tokens": mid_tokens,
        "rl_tokens": rl_tokens,
        "mid_steps": mid_steps,
        "mid_sequences": mid_steps * settings.mid_batch_size,
        "mid_step_tokens": settings.mid_step_tokens,
        "rl_steps": rl_steps,
        "rl_prompts": rl_steps * settings.rl_prompts,
        "rl_rollouts": rl_steps * settings.rl_prompts * settings.rl_rollouts,
        "rl_step_tokens": settings.rl_step_tokens,
        "mid_steps_per_rl_step": settings.rl_step_tokens / settings.mid_step_tokens,
        "settings": dataclasses.asdict(settings),
    }


def training_flops(num_params: float, tokens: float) -> float:
    """C ≈ 6·P·T."""
    return 6.0 * num_params * tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m interplay_jax.compute", description=__doc__.split("\n\n")[0])
    p.add_argument("--total-tokens", type=float, required=True, help="budget T in token-equivalents, e.g. 2.1e9")
    p.add_argument("--beta", type=float, default=0.0, help="RL share of the budget (0 = all mid-training)")
    p.add_argument("--mid-batch-size", type=int, default=ComputeSettings.mid_batch_size)
    p.add_argument("--mid-seq-len", type=int, default=ComputeSettings.mid_seq_len)
    p.add_argument("--rl-prompts", type=int, default=ComputeSettings.rl_prompts)
    p.add_argument("--rl-rollouts", type=int, default=ComputeSettings.rl_rollouts)
    p.add_argument("--rl-total-len", type=int, default=ComputeSettings.rl_total_len)
    p.add_argument("--gamma", type=float, default=ComputeSettings.gamma)
    a = p.parse_args(argv)
    settings = ComputeSettings(a.mid_batch_size, a.mid_seq_len, a.rl_prompts, a.rl_rollouts, a.rl_total_len, a.gamma)
    try:
        out = split_budget(a.total_tokens, a.beta, settings)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
