"""configs/*.py: one preset syntax everywhere (unknown words are one-line errors listing the valid
ones), every scale builds, and the stages' defaults chain (pretrain -> midtrain -> rl)."""
import subprocess
import sys

import pytest
from conftest import REPO, load_config

from interplay_jax import config as config_lib
from interplay_jax.errors import ConfigError

CONFIGS = ["generate.py", "tokenizer.py", "pretrain.py", "midtrain.py", "rl.py", "eval.py"]


@pytest.mark.parametrize("name", CONFIGS)
def test_unknown_preset_word_is_an_error_listing_the_valid_ones(name):
    with pytest.raises(ConfigError, match=r"unknown preset word 'bogus'; valid words are .*"):
        load_config(f"{name}:bogus")


@pytest.mark.parametrize("spec", ["pretrain.py:hard5,mini", "pretrain.py:paper", "midtrain.py:mini",
                                  "rl.py:op9-12,mini,mixed0.5", "rl.py:ctxmixB10,paper,dr_grpo", "eval.py:mini",
                                  "generate.py:ctxB1", "tokenizer.py:reference", "quickstart.py"])
def test_presets_build(spec):
    c = load_config(spec)
    assert c.stage in ("generate", "tokenizer", "pretrain", "midtrain", "rl", "eval", "pipeline")


def test_preset_parser_groups_and_defaults():
    import re
    groups = dict(mixture=(("base", "hard5"), "base"), scale=(("cpu", "paper"), "cpu"),
                  reward=((re.compile(r"mixed\d*\.?\d+"),), "outcome"))
    assert config_lib.parse_preset(None, "x", **groups) == {"mixture": "base", "scale": "cpu", "reward": "outcome"}
    assert config_lib.parse_preset("paper, hard5,mixed0.2", "x", **groups) == {
        "mixture": "hard5", "scale": "paper", "reward": "mixed0.2"}
    with pytest.raises(ConfigError, match="both set scale"):
        config_lib.parse_preset("cpu,paper", "x", **groups)


def test_default_parents_chain_by_scale():
    assert load_config("midtrain.py:mini").init_from == load_config("pretrain.py:base,mini").workdir
    assert load_config("rl.py:op11-14,mini").init_from == load_config("midtrain.py:mid,mini").workdir
    assert load_config("rl.py:quick").init_from == load_config("midtrain.py").workdir


def test_bad_preset_on_the_command_line_is_one_line():
    out = subprocess.run([sys.executable, "-m", "interplay_jax.main", "--config=configs/pretrain.py:base,huge"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown preset word 'huge'" in lines[0] and "mini" in lines[0], out.stderr


def test_integral_scientific_literals_become_digits():
    from interplay_jax.main import _integral_literals
    argv = ["prog", "--config=configs/pretrain.py:base", "--config.total_tokens=2.1e9", "--config.train_tokens=2e5",
            "--config.optimizer.lr=1e-4", "--config.optimizer.lr=2.5e-1", "--config.workdir=runs/1e9x",
            "--config.total_tokens=1.00000000001e3"]
    assert _integral_literals(argv) == [
        "prog", "--config=configs/pretrain.py:base", "--config.total_tokens=2100000000", "--config.train_tokens=200000",
        "--config.optimizer.lr=1e-4", "--config.optimizer.lr=2.5e-1", "--config.workdir=runs/1e9x",
        "--config.total_tokens=1.00000000001e3"]


def test_token_budget_in_scientific_notation_parses_on_the_command_line():
    out = subprocess.run([sys.executable, "-m", "interplay_jax.main", "--config=configs/pretrain.py:base,cpu",
                          "--config.total_tokens=2.1e9", "--config.data.source=bogus"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    # the budget parses; the (deliberately) bad data source is then the one error line, before any compute
    assert out.returncode == 2 and "data.source='bogus'" in out.stderr and "int()" not in out.stderr, out.stderr


def test_rl_decode_kernel_is_validated():
    from interplay_jax.stages import rl as rl_stage

    c = load_config("rl.py:quick")
    rl_stage.validate(c, check_files=False)
    c.rl.decode_kernel = "pallas"
    rl_stage.validate(c, check_files=False)
    c.rl.decode_kernel = "bogus"
    with pytest.raises(ConfigError, match=r"rl.decode_kernel='bogus'; expected one of xla, pallas"):
        rl_stage.validate(c, check_files=False)
