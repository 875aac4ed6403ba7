"""Memory known before the first rollout: the compiled update's bytes grow with the micro-batch and
the pick is the largest that fits the budget (the RL stage's refusal is in test_rl_stage.py)."""
import optax

from interplay_jax.model.qwen2 import model_config
from interplay_jax.rl import grpo, memory
from interplay_jax.train import lm_step


def _setup():
    cfg = model_config("micro", vocab_size=32, max_position_embeddings=128)
    tx = optax.sgd(0.1)
    graphdef, abstract = lm_step.abstract_state(cfg, tx)
    make = lambda m: grpo.make_grpo_step(graphdef, tx, grpo.GRPOConfig(kl_coef=0.0), num_minibatches=1,  # noqa
                                         micro_batch_size=m)
    return make, abstract


def test_pick_micro_batch_is_the_largest_that_fits():
    make, abstract = _setup()
    kw = dict(rows=16, seq_len=64, response_len=32, kl=False, sampler_old=False)
    sizes = {m: memory.update_bytes(make(m), abstract, **kw) for m in (2, 4, 8, 16)}
    assert sizes[2] < sizes[4] < sizes[8] < sizes[16]
    budget = int((sizes[8] + sizes[16]) / 2 / 0.9)          # room for 8, not for 16
    choice = memory.pick_micro_batch(make, abstract, mini_rows=16, budget=budget, multiple=2, **kw)
    assert choice.micro == 8 and choice.bytes == sizes[8]
    whole = memory.pick_micro_batch(make, abstract, mini_rows=16, budget=None, multiple=2, **kw)
    assert whole.micro == 16                               # unknown device memory: the whole mini-batch
