import json
import subprocess
import sys

import pytest

from interplay_jax.compute import ComputeSettings, split_budget
from interplay_jax.errors import ConfigError

# The study's Table 3: budget (as printed) -> (mid-training steps at β=0, RL steps at β=1).
# Budgets other than 20.0B are whole numbers of RL steps (1.05B = 50 × 20,971,520 tokens), which the
# paper prints rounded (and 4.19B as 2 × 2.10B = 4.20B).
TABLE3 = [
    ("1.05B", 50, 2000, 50),
    ("2.10B", 100, 4000, 100),
    ("4.20B", 200, 8000, 200),
    ("8.40B", 400, 16000, 400),
    ("12.58B", 600, 24000, 600),
    ("16.78B", 800, 32000, 800),
]


def test_rl_step_is_about_21m_tokens_and_40_mid_steps():
    s = ComputeSettings()
    assert s.rl_step_tokens == pytest.approx(20_971_520)
    assert s.rl_step_tokens / s.mid_step_tokens == pytest.approx(40.0)


@pytest.mark.parametrize("printed,rl_units,mid_steps,rl_steps", TABLE3)
def test_table3_budgets(printed, rl_units, mid_steps, rl_steps):
    total = rl_units * ComputeSettings().rl_step_tokens
    assert total / 1e9 == pytest.approx(float(printed[:-1]), rel=2e-3)  # the paper rounds (8.39 -> "8.40")
    assert split_budget(total, 0.0)["mid_steps"] == mid_steps
    assert split_budget(total, 1.0)["rl_steps"] == rl_steps


def test_table3_20b():
    assert split_budget(20.0e9, 0.0)["mid_steps"] == 38147
    assert split_budget(20.0e9, 1.0)["rl_steps"] == 954


@pytest.mark.parametrize("beta,mid,rl", [(0.2, 3200, 20), (0.5, 2000, 50), (0.8, 800, 80)])
def test_beta_splits_of_2_10b(beta, mid, rl):
    out = split_budget(100 * ComputeSettings().rl_step_tokens, beta)
    assert (out["mid_steps"], out["rl_steps"]) == (mid, rl)
    assert out["mid_tokens"] + out["rl_tokens"] == pytest.approx(out["total_tokens"])


def test_no_reference_model_makes_rl_cheaper():
    assert ComputeSettings(gamma=0).rl_step_tokens == pytest.approx(ComputeSettings().rl_step_tokens * 4 / 5)


def test_bad_beta():
    with pytest.raises(ConfigError, match="beta"):
        split_budget(1e9, 1.5)


def test_cli_prints_json():
    out = subprocess.run([sys.executable, "-m", "interplay_jax.compute", "--total-tokens", "2.1e9", "--beta", "0.5"],
                         capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    assert data["mid_steps"] == 2003 and data["rl_steps"] == 50
    bad = subprocess.run([sys.executable, "-m", "interplay_jax.compute", "--total-tokens", "1e9", "--beta", "2"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: beta=2.0")
