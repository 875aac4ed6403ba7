"""RL rewards against hand-computed values (SPEC §1 "Rewards for RL")."""
import pytest

from interplay_jax.errors import ConfigError
from interplay_jax.task.rewards import compute_rewards, get_reward

GOLD = ("Define adult bear in Pine Ridge as A; so A = 3. Define adult wolf in Pine Ridge as B; so B = A = 3. "
        "Define total number of adult animals in Pine Ridge as C; so C = A + B = 3 + 3 = 6. Answer: 6.")
WRONG_VALUE = GOLD.replace("so B = A = 3.", "so B = A = 4.")          # 1 of 3 nodes wrong, answer right
EXTRA = "Define adult fox in Pine Ridge as F; so F = 2. " + GOLD        # 1 extra node
WRONG_ANSWER = GOLD.replace("Answer: 6.", "Answer: 7.")                 # process right, answer wrong
MANY_EXTRA = "".join(f"Define adult fox in Town{i} as {c}; so {c} = 1. " for i, c in enumerate("PQRST")) + GOLD
MODEL_OUTPUT = (" Define adult bear in Pine Ridge as A; so A = 3. Define adult wolf in Pine Ridge as B; so B = A = 3. "
                "Define total number of adult animals in Pine Ridge as C; so C = A + B = 3 + 3 = 6. </solution> "
                "<answer> 6 </answer>")

# name -> expected reward for (gold, WRONG_VALUE, EXTRA, WRONG_ANSWER, MANY_EXTRA); N = 3 gold nodes
EXPECTED = {
    "outcome": (1, 1, 1, 0, 1),
    "mixed1.0": (1, 1, 1, 0, 1),
    "mixed0.5": (1, 0.5 + 0.5 * 2 / 3, 1, 0.5, 1),
    "mixed0.2": (1, 0.2 + 0.8 * 2 / 3, 1, 0.8, 1),
    "strict": (1, 0, 1, 0, 1),
    # original: R_process = max(0, 1 - (value+dep+missing+min(extra,N)+answer)/N), 0 if answer wrong
    "original_mixed0.2": (1, 0.2 + 0.8 * (1 - 1 / 3), 0.2 + 0.8 * (1 - 1 / 3), 0, 0.2 + 0.8 * 0),
    "original_mixed0.5": (1, 0.5 + 0.5 * (1 - 1 / 3), 0.5 + 0.5 * (1 - 1 / 3), 0, 0.5),
    "original_strict": (1, 0, 0, 0, 0),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rewards_match_hand_computed_values(name):
    reward = get_reward(name)
    responses = (GOLD, WRONG_VALUE, EXTRA, WRONG_ANSWER, MANY_EXTRA)
    got = [reward(GOLD, r) for r in responses]
    assert got == pytest.approx(list(EXPECTED[name]), abs=1e-12)
    assert reward.batch([GOLD] * 5, responses) == got
    assert compute_rewards(name, [GOLD] * 5, responses) == got
    assert reward(GOLD, MODEL_OUTPUT) == pytest.approx(1.0)


def test_reward_of_garbage_is_zero():
    for name in EXPECTED:
        assert get_reward(name)(GOLD, "") == 0.0
        assert get_reward(name)(GOLD, "Answer: 5.") == 0.0


@pytest.mark.parametrize("bad", ["outcomes", "mixed", "mixed1.5", "process", "original_mixed", ""])
def test_unknown_reward_names_raise_config_error(bad):
    with pytest.raises(ConfigError) as err:
        get_reward(bad)
    message = str(err.value)
    assert "\n" not in message and repr(bad) in message


def test_unknown_reward_lists_known_names():
    with pytest.raises(ConfigError, match="outcome.*mixed.*strict.*original_mixed.*original_strict"):
        get_reward("nope")
