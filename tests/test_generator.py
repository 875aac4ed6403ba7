"""Generator: exact op, text forms (checked on the reference data too), values, determinism, errors."""
import json
import os
import re
import subprocess
import sys

import pytest

from interplay_jax.errors import ConfigError
from interplay_jax.task import contexts as contexts_lib
from interplay_jax.task.contexts import Context, get_context, register_context
from interplay_jax.task.generator import (MODES, REVERSE, build_problem, dependency_graph, generate_problem,
                                          problem_op)
from interplay_jax.task.mixture import PRESETS, get_mixture

CTXS = ("crazy_zootopia", "teachers_in_school", "movie_festival_awards")
SEEDS = (0, 1, 2)

# ---------------------------------------------------------------- the published text forms
N = r"[^.,;]+? in [^.,;]+?"
REF = r"the (?:total )?number of [^.,;]+? in [^.,;]+?"
BODY = rf"(?:{REF}|the sum of {REF} and {REF}|the difference between {REF} and {REF}|the sum of (?:{REF}, ){{2,}}and {REF})"
SENTENCE = re.compile(rf"The number of {N} equals (?:\d+|(?:\d+ (?:plus|times) )?{BODY})\."
                      rf"|The number of {N} exists, and its number is greater than 0\."
                      rf"|The total number of {N} equals \d+\.")
QUESTION = re.compile(rf"What is the total number of {N}\?|How many [^.,;]+? does [^.,;]+? have\?")
V, NUM = r"[A-Za-z]", r"\d+"
BIN = rf"{V} [+-] {V} = {NUM} [+-] {NUM} = {NUM}"
STEP_F = re.compile(rf"Define {N} as {V}; (?:{V} = {BIN}; )*(?:{V} = {V} = {NUM}; )?"
                    rf"so {V} = (?:{NUM}|{V} = {NUM}|{BIN}|{NUM} [+*] {V} = {NUM} [+*] {NUM} = {NUM})\.")
E = r"(?:\d+\*x|x|\d+)(?: [+-] \d+)?"
R_SUM = rf"{V} \+ {V} = {E} \+ {E} = {E}"
R_DIFF = rf"{V} - {V} = \({E}\) - \({E}\) = {E}"
STEP_R = re.compile(rf"Define {N} as {V}; (?:{V} = (?:{R_SUM}|{R_DIFF}); )*(?:{V} = {V} = {E}; )?"
                    rf"so {V} = (?:{E}|{V} = {E}|{R_SUM}|{R_DIFF}|{NUM} \+ {V} = {NUM} \+ {E} = {E}"
                    rf"|{NUM} \* {V} = \({NUM}\) \* \({E}\) = {E})\.")
X_STEP = re.compile(rf"Define {N} as x; we don't know its value yet but will find it out later\.")
TAIL = re.compile(rf"We know {V} = (\d+), so we have ({E}) = \1 and we solve it through the following steps: "
                  rf"Simplifying the equation: \2 = \1\. Move all terms to one side: ({E}) = 0\. "
                  rf"Isolate the term with x: (\d+)\*x = (\d+)\. Divide both sides by \4: x = \5 / \4\. "
                  rf"Solution: x = (\d+)\. Answer: \6\.")
REVERSE_HEAD = "The question is difficult, so we use equations to solve it. "


def check_forms(rec):
    """Assert every sentence / question / step of ``rec`` has a published form; return the answer."""
    problem, sol = rec["problem"], rec["solution"]
    assert problem.endswith(". ") and not problem.endswith(".  ")
    for sent in re.split(r"(?<=\.) ", problem[:-1]):
        assert SENTENCE.fullmatch(sent), sent
    assert QUESTION.fullmatch(rec["question"]), rec["question"]
    if rec["mode"] == REVERSE:
        assert sol.startswith(REVERSE_HEAD)
        body, tail = sol[len(REVERSE_HEAD):].split(" We know ", 1)
        m = TAIL.fullmatch("We know " + tail)
        assert m, tail
        assert int(m.group(5)) == int(m.group(4)) * int(m.group(6))
        steps, step_re, answer = body.split(" Define "), STEP_R, int(m.group(6))
        assert 1 <= answer <= 4
        assert sum(bool(X_STEP.fullmatch(("" if i == 0 else "Define ") + s)) for i, s in enumerate(steps)) == 1
    else:
        m = re.fullmatch(r"(.*) Answer: (\d+)\.", sol, re.S)
        assert m, sol[-80:]
        steps, step_re, answer = m.group(1).split(" Define "), STEP_F, int(m.group(2))
    for i, step in enumerate(steps):
        step = step if i == 0 else "Define " + step
        assert step_re.fullmatch(step) or X_STEP.fullmatch(step), step
    letters = re.findall(r"Define .+? as ([A-Za-z]);", sol)
    assert len(letters) == len(set(letters))
    return answer


def test_reference_samples_have_our_forms(reference_dir):
    """The regexes above are faithful: every reference record matches them."""
    n = 0
    for line in open(reference_dir / "samples.jsonl", encoding="utf-8"):
        check_forms(json.loads(line))
        n += 1
    assert n == 30


@pytest.mark.parametrize("mode", MODES)
def test_exact_op_forms_and_values(mode):
    for op in range(2, 21):
        for ctx in CTXS:
            for seed in SEEDS:
                prob = build_problem(op, ctx, mode, seed)
                rec = prob.record()
                assert rec["op"] == op and problem_op(prob) == op
                g = dependency_graph(prob)
                graph_op = sum(g.in_degree(n) + g.nodes[n]["rng"] for n in g.nodes)
                assert graph_op == op, (op, ctx, mode, seed)
                answer = check_forms(rec)
                assert set(rec) == {"problem", "question", "solution", "op", "id", "template", "mode", "length", "d"}
                assert rec["template"] == ctx and rec["mode"] == mode
                assert rec["length"] == "zero_context" and rec["d"] == 2
                # every solution-path value passes the filter; totals are sums of their items
                x = answer if mode == REVERSE else None
                for name, attrs in g.nodes(data=True):
                    v = attrs["value"]
                    val = v[0] * x + v[1] if x is not None else v
                    assert 0 <= val <= 1000 and (val > 0 or attrs["total"]), (name, val)
                    assert rec["solution"].count(f"Define {name} as ") == 1
                # every needed instance parameter has a sentence; totals never do (except reverse's stated one)
                for name, attrs in g.nodes(data=True):
                    if not attrs["total"]:
                        assert f"The number of {name} " in rec["problem"]
                target = g.graph["target"]
                tv = g.nodes[target]["value"]
                if mode == REVERSE:
                    assert f"{target} equals {tv[0] * answer + tv[1]}." in rec["problem"]
                else:
                    assert answer == tv
                assert set(nx_sources(g)) and target in g.nodes and all(
                    _reaches(g, n, target) for n in g.nodes)


def nx_sources(g):
    return [n for n in g.nodes if g.in_degree(n) == 0]


def _reaches(g, a, b):
    import networkx as nx
    return a == b or nx.has_path(g, a, b)


def test_ops_above_20_and_answer_growth():
    for op in (21, 25, 30):
        for mode in MODES:
            prob = build_problem(op, "B", mode, 5)
            assert problem_op(prob) == op
            check_forms(prob.record())
    fwd = [build_problem(op, "A", "normalforward", s).answer for op in (16, 18, 20) for s in range(20)]
    assert max(fwd) > 20   # deep problems give big answers (reference op20: 5..180)


def test_gold_solutions_verify_against_themselves():
    verify_mod = pytest.importorskip("interplay_jax.task.verify")
    for op in range(2, 21):
        for mode in MODES:
            for ctx in CTXS:
                rec = generate_problem(op, ctx, mode, seed=op)
                v = verify_mod.verify(rec["solution"], rec["solution"])
                assert v.verified_correct and v.process_acc == 1.0 and v.answer_correct, (op, mode, ctx)


def test_distractors_and_shuffle_vary():
    recs = [generate_problem(12, "A", "normalforward", s) for s in range(30)]
    n_sent = [r["problem"].count(". ") for r in recs]
    n_steps = [r["solution"].count("Define ") for r in recs]
    assert sum(s > st for s, st in zip(n_sent, n_steps)) > 10   # distractor sentences exist
    assert len({r["id"] for r in recs}) == 30


_DET_SCRIPT = """
import hashlib, json
from interplay_jax.task.generator import generate_problem
from interplay_jax.task.mixture import get_mixture
h = hashlib.sha256()
for op in (2, 7, 13, 20):
    for mode in ("normalforward", "forwardreverse"):
        for ctx in ("A", "B", "C"):
            h.update(json.dumps(generate_problem(op, ctx, mode, seed=11), sort_keys=True).encode())
m = get_mixture("base")
for i in range(30):
    h.update(json.dumps(m.record(3, i), sort_keys=True).encode())
print(h.hexdigest())
"""


def test_deterministic_across_processes_and_hash_seeds():
    outs = []
    for hs in ("0", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=hs)
        out = subprocess.run([sys.executable, "-c", _DET_SCRIPT], env=env, capture_output=True, text=True, check=True)
        outs.append(out.stdout.strip())
    assert outs[0] == outs[1] and len(outs[0]) == 64
    assert generate_problem(9, "C", "forwardreverse", 4) == generate_problem(9, "C", "forwardreverse", 4)
    assert generate_problem(9, "C", "forwardreverse", 4) != generate_problem(9, "C", "forwardreverse", 5)


def test_bad_inputs_raise_one_line_config_errors():
    cases = [lambda: generate_problem(1), lambda: generate_problem(31), lambda: generate_problem("3"),
             lambda: generate_problem(True), lambda: generate_problem(5, context="D_unknown"),
             lambda: generate_problem(5, mode="backward"), lambda: get_context("zoo")]
    for case in cases:
        with pytest.raises(ConfigError) as e:
            case()
        assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match=r"unsupported op 31; supported ops are 2\.\.30"):
        generate_problem(31)
    with pytest.raises(ConfigError, match=r"unknown context 'zoo'; known: A=crazy_zootopia"):
        get_context("zoo")


def test_user_context_without_touching_generator():
    ctx = Context(name="bakery_orders", short_id="Z", entities=(("North Bakery", "East Bakery", "West Bakery"),),
                  items=(("rye loaf", "baguette", "croissant"),), total="total number of breads")
    register_context(ctx)
    try:
        for mode in MODES:
            rec = generate_problem(8, "Z", mode, seed=1)
            assert rec["template"] == "bakery_orders" and rec["op"] == 8
            check_forms(rec)
            assert "Bakery" in rec["problem"]
        m = get_mixture([{"ops": [3, 4], "weight": 1, "contexts": ["bakery_orders"]}])
        assert m.record(0, 0)["template"] == "bakery_orders"
    finally:
        for key in ("bakery_orders", "Z"):
            contexts_lib.CONTEXTS.pop(key, None)


def test_mixtures_presets_and_errors():
    for name in PRESETS:
        m = get_mixture(name)
        assert abs(sum(m.op_probs().values()) - 1) < 1e-9
    base = get_mixture("base").op_probs()
    assert abs(sum(base[o] for o in (8, 9, 10)) - 0.5) < 1e-9 and abs(base[2] - 0.2 / 3) < 1e-9
    ctx = get_mixture("ctxB1")
    assert ctx.components[1].contexts == ("teachers_in_school",) and abs(ctx.probs[1] - 0.01) < 1e-9
    m = get_mixture("rl11-14", modes=["normalforward", "forwardreverse"])
    recs = [m.record(7, i) for i in range(40)]
    assert {r["op"] for r in recs} <= {11, 12, 13, 14} and {r["mode"] for r in recs} == set(MODES)
    assert recs[5] == m.record(7, 5) and m.record(7, 5) != m.record(8, 5)
    for bad in ([{"ops": [2], "weight": -1}], [{"ops": [2], "weight": 0}], [{"ops": [40], "weight": 1}],
                [{"ops": [2], "weight": 1, "contexts": ["Q"]}], "nope", [], [{"weight": 1}],
                [{"ops": [2], "weight": 1, "colour": "red"}]):
        with pytest.raises(ConfigError) as e:
            get_mixture(bad)
        assert "\n" not in str(e.value)
