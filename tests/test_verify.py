"""Process verifier: gold solutions verify against themselves, mutations are caught with the right
error type, and any input is scored quickly without raising."""
import json
import random
import re
import sys
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import interplay_jax.task.verify  # noqa: F401  (the package re-exports the function under this name)
from interplay_jax.task.formats import format_document, format_prompt

V = sys.modules["interplay_jax.task.verify"]
verify = V.verify

CONTEXTS = ("crazy_zootopia", "teachers_in_school", "movie_festival_awards")
MODES = ("normalforward", "forwardreverse")


def _reference(reference_dir):
    with open(reference_dir / "samples.jsonl") as f:
        return [json.loads(line) for line in f]


def _generated(ops=range(2, 21), seeds=range(3)):
    from interplay_jax.task.generator import generate_problem
    return [generate_problem(op, ctx, mode, seed) for op in ops for mode in MODES for ctx in CONTEXTS
            for seed in seeds]


def _assert_perfect(v, n_steps=None):
    assert v.verified_correct and v.answer_correct, v
    assert v.process_acc == 1.0
    assert v.missing_node == v.value_mismatch == v.dependency_mismatch == v.answer_mismatch == 0
    assert v.extra_nodes == 0
    assert v.n_gold > 0 and all(node.correct for node in v.nodes)
    if n_steps is not None:
        assert v.n_gold == n_steps


# --------------------------------------------------------------------------- gold against itself


def test_reference_gold_verifies_itself_in_every_form(reference_dir):
    records = _reference(reference_dir)
    assert len(records) == 30
    for r in records:
        gold = r["solution"]
        n_steps = gold.count("Define ")
        doc = format_document(r)
        completion = doc[len(format_prompt(r)):]
        for response in (gold, doc, completion, completion + "[EOS]"):
            _assert_perfect(verify(gold, response), n_steps)


def test_generated_gold_verifies_itself():
    records = _generated()
    assert len(records) == 19 * 2 * 3 * 3
    for r in records:
        _assert_perfect(verify(r["solution"], r["solution"]), r["solution"].count("Define "))
        _assert_perfect(verify(r["solution"], format_document(r)))


def test_reference_graph_structure(reference_dir):
    """Parents/values of a known forward and a known reverse solution, checked by hand."""
    records = _reference(reference_dir)
    fwd = next(r for r in records if r["solution"].startswith("Define public highschool in Evervale City as W"))
    steps = V.parse_gold(fwd["solution"]).parsed.steps
    # "Define private middle school in Evervale City as j; U = W = 3; so j = 4 * U = 4 * 3 = 12."
    j = steps["private middle school in Evervale City"]
    assert j.parents == {"public highschool in Evervale City"} and j.value == (0, 12)
    total = steps["total number of schools in Evervale City"]
    assert total.parents == {"private middle school in Evervale City", "public highschool in Evervale City"}
    assert total.value == (0, 15)
    rev = next(r for r in records if "Define adult crow in Hamilton Farm as x" in r["solution"])
    gold = V.parse_gold(rev["solution"])
    assert gold.x == 4
    z = gold.parsed.steps["adult blue jay in Hamilton Farm"]
    assert z.parents == {"adult crow in Hamilton Farm"} and z.value == (1, 4)
    a = gold.parsed.steps["total number of adult animals in Hamilton Farm"]
    assert a.value == (2, 4) and gold.values["total number of adult animals in Hamilton Farm"] == 12
    assert gold.parsed.steps["adult crow in Hamilton Farm"].parents == frozenset()


def _rename(solution: str, seed: int) -> str:
    letters = [chr(c) for c in range(65, 91)] + [chr(c) for c in range(97, 123)]
    shuffled = letters[:]
    random.Random(seed).shuffle(shuffled)
    table = dict(zip(letters, shuffled))
    return re.sub(r"(?<![\w'-])[A-Za-z](?![\w'-])", lambda m: table[m.group(0)], solution)


def test_consistent_renaming_still_verifies(reference_dir):
    records = _reference(reference_dir) + _generated(ops=(3, 9, 15, 20), seeds=(7,))
    for i, r in enumerate(records):
        renamed = _rename(r["solution"], i)
        assert renamed != r["solution"]
        _assert_perfect(verify(r["solution"], renamed))
        _assert_perfect(verify(renamed, r["solution"]))


# --------------------------------------------------------------------------- mutations

_STEP = re.compile(r"Define .*?\.(?= |$)")


def _steps(solution):
    return [m for m in _STEP.finditer(solution)]


def _replace(text, start, end, new):
    return text[:start] + new + text[end:]


def _cases():
    from interplay_jax.task.generator import generate_problem
    out = []
    for op in (8, 12, 16, 20):
        for mode in MODES:
            for seed in range(3):
                out.append(generate_problem(op, CONTEXTS[seed], mode, seed))
    return out


def test_wrong_intermediate_value_is_a_value_mismatch():
    for r in _cases():
        gold = r["solution"]
        steps = _steps(gold)
        candidates = [m for m in steps[:-1] if re.search(r"\d(\*[A-Za-z])?\.$", m.group(0))]
        m = candidates[len(candidates) // 2]
        num = re.search(r"(\d+)(\*[A-Za-z])?\.$", m.group(0))
        start = m.start() + num.start(1)
        response = _replace(gold, start, start + len(num.group(1)), str(int(num.group(1)) + 1))
        v = verify(gold, response)
        assert v.value_mismatch == 1 and v.dependency_mismatch == 0 and v.missing_node == 0, v
        assert v.answer_correct and not v.verified_correct
        assert v.process_acc == pytest.approx((v.n_gold - 1) / v.n_gold)
        bad = [n for n in v.nodes if not n.correct]
        assert len(bad) == 1 and bad[0].present and bad[0].parents_ok and not bad[0].value_ok


def test_dropped_step_is_a_missing_node():
    for r in _cases():
        gold = r["solution"]
        steps = _steps(gold)
        m = steps[len(steps) // 2]
        response = _replace(gold, m.start(), m.end() + 1, "")
        v = verify(gold, response)
        assert v.missing_node == 1, v
        assert not v.verified_correct and v.process_acc <= (v.n_gold - 1) / v.n_gold
        name = re.match(r"Define (.*) as [A-Za-z];", m.group(0)).group(1)
        assert [n.name for n in v.nodes if not n.present] == [name]


def test_wrong_parent_is_a_dependency_mismatch():
    checked = 0
    for r in _cases():
        gold = r["solution"]
        parsed = V.parse_gold(gold).parsed.steps
        names = list(parsed)
        for i, m in enumerate(_steps(gold)):
            clause = re.search(r"so ([A-Za-z]) = ([^=]+?) =", m.group(0))
            if i < 2 or clause is None or not re.search(r"[A-Za-z]", clause.group(2)):
                continue
            name = names[i]
            others = [parsed[n].variable for n in names[:i]
                      if n not in parsed[name].parents and parsed[n].variable != "x"]
            if not others:
                continue
            letter = re.search(r"[A-Za-z]", clause.group(2))
            start = m.start() + clause.start(2) + letter.start()
            response = _replace(gold, start, start + 1, others[0])
            v = verify(gold, response)
            assert v.dependency_mismatch >= 1 and v.value_mismatch == 0 and v.missing_node == 0, v
            assert not v.verified_correct and v.answer_correct
            assert not next(n for n in v.nodes if n.name == name).parents_ok
            checked += 1
            break
    assert checked >= 20


def test_wrong_final_answer_is_an_answer_mismatch():
    for r in _cases():
        gold = r["solution"]
        answer = re.search(r"Answer: (\d+)\.$", gold)
        wrong = str(int(answer.group(1)) + 1)
        for response in (gold[:answer.start(1)] + wrong + ".",
                         format_document(r).replace(f"<answer> {answer.group(1)} </answer>",
                                                    f"<answer> {wrong} </answer>")):
            v = verify(gold, response)
            assert v.answer_mismatch == 1 and not v.answer_correct and not v.verified_correct
            assert v.process_acc == 1.0 and v.pred_answer == wrong


def test_truncated_response_is_caught():
    for r in _cases():
        gold = r["solution"]
        completion = format_document(r)[len(format_prompt(r)):]
        for cut in (0.3, 0.6, 0.9):
            v = verify(gold, completion[:int(len(completion) * cut)])
            assert not v.verified_correct
            assert v.missing_node >= 1 or v.answer_mismatch == 1


def test_extra_node_does_not_lower_process_acc():
    for r in _cases():
        gold = r["solution"]
        first = _steps(gold)[0]
        response = _replace(gold, first.start(), first.start(), "Define adult bear in Nowhere Land as Q; so Q = 1. ")
        v = verify(gold, response)
        assert v.extra_nodes == 1 and v.process_acc == 1.0 and v.verified_correct and not v.process_exact


def test_a_step_repeated_counts_as_redefined():
    for r in _cases():
        gold = r["solution"]
        assert verify(gold, gold).redefined_nodes == 0
        steps = _steps(gold)
        again = steps[-1].group(0)                 # the asked node defined a second time, after itself
        v = verify(gold, _replace(gold, steps[-1].end(), steps[-1].end(), " " + again))
        assert v.redefined_nodes == 1 and v.extra_nodes == 0 and v.n_pred == len(steps)
        twice = " " + steps[0].group(0) + " " + steps[1].group(0)
        assert V.parse_solution(_replace(gold, steps[-1].end(), steps[-1].end(), twice)).n_redefined == 2


def test_reverse_values_compared_at_the_solved_x(reference_dir):
    r = next(r for r in _reference(reference_dir) if "Define adult crow in Hamilton Farm as x" in r["solution"])
    gold = r["solution"]
    # right expressions, wrong solving: the process verifies, the answer does not
    wrong_solve = gold.replace("Solution: x = 4. Answer: 4.", "Solution: x = 5. Answer: 5.")
    v = verify(gold, wrong_solve)
    assert v.process_acc == 1.0 and not v.answer_correct and not v.verified_correct
    # an expression that is wrong as a function of x is a value mismatch
    v = verify(gold, gold.replace("so A = x + Z = x + x + 4 = 2*x + 4.", "so A = x + Z = x + x + 4 = 2*x + 5."))
    assert v.value_mismatch == 1 and v.process_acc == pytest.approx(2 / 3)


# --------------------------------------------------------------------------- robustness


def _gold(reference_dir):
    return next(r["solution"] for r in _reference(reference_dir) if r["op"] == 20)


def _check_sane(v):
    assert 0.0 <= v.process_acc <= 1.0
    assert isinstance(v.verified_correct, bool) and isinstance(v.answer_correct, bool)
    assert v.n_correct <= v.n_gold
    assert v.verified_correct <= v.answer_correct


def test_hostile_inputs_never_raise_and_stay_bounded(reference_dir):
    gold = _gold(reference_dir)
    step = "Define adult bear in Beverly Forest as A; so A = B + C = 1 + 2 = 3. "
    cases = {
        "empty": "",
        "binary": bytes(range(256)) * 40,
        "binary_str": bytes(range(256)).decode("latin-1") * 40,
        "1MB": "x" * 1_000_000,
        "1MB_defines": "Define " * 150_000,
        "1MB_semicolons": ("Define a as b;" + "; so b = " * 50 + "1") * 1500,
        "5000_defines": step * 5000,
        "unbalanced": "<answer> <solution> </solution> <answer> </answer> </solution> <question>" * 3000,
        "answer_tags": "<answer>" * 100_000,
        "deep_parens": "Define a in b as Z; so Z = " + "(" * 50_000 + "1" + ")" * 50_000 + ". Answer: 1.",
        "huge_number": "Define a in b as Z; so Z = " + "9" * 20_000 + ". Answer: " + "9" * 20_000,
        "nonlinear": "Define a in b as x; we don't know its value yet but will find it out later. "
                     "Define c in d as Y; so Y = x * x * x = x*x*x. Answer: 1.",
        "none": None,
    }
    for label, response in cases.items():
        t0 = time.perf_counter()
        v = V._verify(gold, response)
        dt = time.perf_counter() - t0
        _check_sane(v)
        assert not v.verified_correct, label
        assert dt < 2.0, (label, dt)  # bounded (the 50 ms / 100 KB figure is in benchmarks/)
    # garbage gold texts too
    for label, text in cases.items():
        _check_sane(verify(text, gold))


_ALPHABET = ["Define ", " as ", ";", " = ", "so ", ". ", "+", "-", "*", "(", ")", "x", "A", "b", "Z",
             "1", "23", "Answer: ", "<answer>", "</answer>", "<solution>", "</solution>", " ",
             "we don't know its value yet but will find it out later", "We know ",
             "adult bear in Pine Ridge", "\n", "\x00", "é"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_ALPHABET), max_size=80), st.text(max_size=200))
def test_fuzz_random_text(pieces, noise):
    gold = ("Define adult bear in Pine Ridge as A; so A = 3. Define total number of adult animals in "
            "Pine Ridge as b; so b = A = 3. Answer: 3.")
    for response in ("".join(pieces), noise, "".join(pieces) + noise):
        _check_sane(V._verify(gold, response))
        _check_sane(V._verify(response, gold))


_GOLDS = [
    "Define solemn period drama in Rêves de Belleville as A; so A = 4. Define total number of movies in "
    "Rêves de Belleville as q; t = A = 4; so q = 3 * t = 3 * 4 = 12. Answer: 12.",
    "The question is difficult, so we use equations to solve it. Define adult crow in Hamilton Farm as x; "
    "we don't know its value yet but will find it out later. Define adult blue jay in Hamilton Farm as Z; "
    "S = x = x; so Z = 4 + S = 4 + x = x + 4. Define total number of adult animals in Hamilton Farm as A; "
    "so A = x + Z = x + x + 4 = 2*x + 4. We know A = 12, so we have 2*x + 4 = 12 and we solve it through "
    "the following steps: Simplifying the equation: 2*x + 4 = 12. Move all terms to one side: 2*x - 8 = 0. "
    "Isolate the term with x: 2*x = 8. Divide both sides by 2: x = 8 / 2. Solution: x = 4. Answer: 4.",
]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_GOLDS), st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3),
                                                   st.text(alphabet=";=.+*()x0123 A", max_size=4)),
                                         max_size=6))
def test_fuzz_mutated_gold(gold, edits):
    text = gold
    for where, kind, piece in edits:
        i = int(where * len(text))
        if kind == 0:
            text = text[:i] + piece + text[i:]
        elif kind == 1:
            text = text[:i] + text[i + len(piece) + 1:]
        elif kind == 2:
            text = text[:i] + piece + text[i + len(piece):]
        else:
            text = text[:i]
    v = V._verify(gold, text)
    _check_sane(v)
    if text == gold:
        assert v.verified_correct
