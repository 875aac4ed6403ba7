"""Process verification (docs/metrics.md): solution text -> dependency graph -> ProcessAcc / VerifiedCorrect.

Parsing (gold and model text alike)
-----------------------------------
* Each ``Define {name} as {V};`` starts a step; the node key is the parameter *name* (whitespace
  collapsed), so variable letters never matter. A step ends at its first "." (names never hold one).
* The body is split on ";" into clauses ``[so ]L = e1 = e2 = ... = en`` (L one letter), or the reverse
  mode's "we don't know its value yet but will find it out later" (V becomes the unknown ``x``).
* Parents = names of earlier steps whose variables appear in ``e1`` (the symbolic formula) of the
  clause(s) assigning V, directly or through letters assigned earlier in the same step (whose own
  ``e1`` letters are expanded). Using ``e1`` only matters in reverse mode, where later segments
  spell out the unknown ``x`` ("so T = h + W = x + 3 + 1 = x + 4" has parents h, W only).
  A letter bound nowhere yields a parent ``"?L"`` (so the parent set cannot match).
* Value = ``en`` (the final value assigned to V) evaluated as a linear expression ``a*x + b`` with
  exact integers over ``+ - * ( )``, integers and letters (nonlinear or malformed -> no value).
* Reverse mode: gold and predicted linear values are both evaluated at ``x*``, the unknown solved
  from the *gold* text ("We know V = c": x* = (c - b)/a, exact Fraction; fallback: the gold answer).
  So a predicted step is right iff it agrees with the gold value at the true solution; the model's
  own equation-solving is judged by the answer check. Forward mode has ``a == 0`` everywhere.
* A later Define of the same name replaces the earlier one (as the original scorer).
* Response text: from after the first ``<solution>`` (if present; a response may repeat the prompt)
  to the first ``</solution>`` / ``<answer>``; steps stop at "Answer:". Only the first
  ``MAX_CHARS`` characters are parsed, at most ``MAX_STEPS`` steps, ``MAX_CLAUSES`` clauses per step,
  ``MAX_SEGMENT`` characters per expression: linear time, bounded work, no eval, no recursion on input.

Comparison: per gold node, correct iff present in the prediction, same parent set, same value.
ProcessAcc = mean over gold nodes (0.0 when the gold has no node); extra predicted nodes do not
count against it. VerifiedCorrect = ProcessAcc == 1 and the answer is correct.
"""
from __future__ import annotations

import dataclasses
import functools
import re
from fractions import Fraction
from typing import NamedTuple

from interplay_jax.task import formats

MAX_CHARS = 200_000     # characters of a response that are parsed (model outputs are ~5K)
MAX_STEPS = 4096        # Define steps per text
MAX_CLAUSES = 64        # ";"-clauses per step
MAX_SEGMENT = 256       # characters per expression segment
MAX_STEP_CHARS = 2048   # characters per step (a step ends at its first ".")
MAX_NAME = 256          # characters per parameter name
MAX_DIGITS = 30         # digits per integer literal
MAX_DEPTH = 32          # parenthesis nesting

UNKNOWN_PHRASE = "we don't know its value yet but will find it out later"
_DEFINE = "Define "
_TOKEN = re.compile(r"\d+|[A-Za-z]|\S")
_LETTERS = re.compile(r"[A-Za-z]")
_WE_KNOW = re.compile(r"We know ([A-Za-z]) = (-?\d{1,30})\b")
_SOLUTION_X = re.compile(r"Solution: [A-Za-z] = (-?\d{1,30})\b")


# ----------------------------------------------------------------------------- expressions


@functools.lru_cache(maxsize=1 << 16)
def _compile(segment: str):
    """Segment -> RPN tuple of ops, or None if malformed. Ops: int, letter str, '+', '-', '*', 'neg'."""
    tokens = _TOKEN.findall(segment)
    out: list = []
    ops: list = []           # operator stack: '+', '-', '*', 'neg', '('
    prec = {"+": 1, "-": 1, "*": 2, "neg": 3}
    expect_operand = True
    depth = 0
    for tok in tokens:
        if expect_operand:
            if tok.isdigit():
                if len(tok) > MAX_DIGITS:
                    return None
                out.append(int(tok))
                expect_operand = False
            elif tok.isalpha():
                out.append(tok)
                expect_operand = False
            elif tok == "(":
                depth += 1
                if depth > MAX_DEPTH:
                    return None
                ops.append("(")
            elif tok == "-":
                ops.append("neg")
            elif tok == "+":
                continue
            else:
                return None
        else:
            if tok in ("+", "-", "*"):
                p = prec[tok]
                while ops and ops[-1] != "(" and prec[ops[-1]] >= p:
                    out.append(ops.pop())
                ops.append(tok)
                expect_operand = True
            elif tok == ")":
                while ops and ops[-1] != "(":
                    out.append(ops.pop())
                if not ops:
                    return None
                ops.pop()
                depth -= 1
            else:
                return None
    if expect_operand:
        return None
    while ops:
        op = ops.pop()
        if op == "(":
            return None
        out.append(op)
    return tuple(out)


def _evaluate(rpn, env: dict):
    """Evaluate RPN over linear values; ``env`` maps letters to (a, b). None if undefined/nonlinear."""
    stack: list = []
    for op in rpn:
        if type(op) is int:
            stack.append((0, op))
        elif op == "+":
            a2, b2 = stack.pop()
            a1, b1 = stack.pop()
            stack.append((a1 + a2, b1 + b2))
        elif op == "-":
            a2, b2 = stack.pop()
            a1, b1 = stack.pop()
            stack.append((a1 - a2, b1 - b2))
        elif op == "*":
            a2, b2 = stack.pop()
            a1, b1 = stack.pop()
            if a1 and a2:
                return None
            stack.append((a1 * b2 + a2 * b1, b1 * b2))
        elif op == "neg":
            a, b = stack.pop()
            stack.append((-a, -b))
        else:
            value = env.get(op)
            if value is None:
                return None
            stack.append(value)
    return stack[0] if len(stack) == 1 else None


# ----------------------------------------------------------------------------- parsing


class Step(NamedTuple):
    """One parsed node: ``parents`` are parameter names; ``value`` is (a, b) = a*x + b or None."""
    name: str
    variable: str
    parents: frozenset
    value: tuple | None


class ParsedSolution(NamedTuple):
    steps: dict          # name -> Step (insertion order = text order; later duplicates replace)
    n_defines: int       # Define steps seen (including duplicates)
    answer: str | None
    x_solution: Fraction | int | None   # x solved from "We know V = c" (reverse), else None
    n_redefined: int = 0  # parsed steps that define a name an earlier step already defined


_UNKNOWN = "unknown"
# kinds of a step's final assignment to its variable
_NONE, _UNK, _INT, _EXPR = 0, 1, 2, 3


_CLAUSE = re.compile(r"(?:^|;)\s*(?:so )?\s*(?:([A-Za-z])\s*=([^;=]*)([^;]*)|(%s)\s*(?=;|$))"
                     % re.escape(UNKNOWN_PHRASE))


def _static_clauses(body: str):
    """``[(target, e1 letters, final value spec)]`` for the well-formed clauses of a step body."""
    clauses = []
    for target, first, rest, unknown in _CLAUSE.findall(body):
        if len(clauses) >= MAX_CLAUSES:
            break
        if unknown:
            clauses.append((None, _UNKNOWN, None))
            continue
        letters = tuple(dict.fromkeys(_LETTERS.findall(first[:MAX_SEGMENT])))
        segment = (rest.rpartition("=")[2] if rest else first).strip()
        if segment.isdigit():
            value = int(segment) if len(segment) <= MAX_DIGITS else None
        elif not segment or len(segment) > MAX_SEGMENT:
            value = None
        else:
            value = _compile(segment)
        clauses.append((target, letters, value))
    return clauses


@functools.lru_cache(maxsize=1 << 15)
def _static_step(chunk: str):
    """The text-only part of parsing one step (cached: rollouts of one prompt share most steps).

    Returns None (not a step) or ``(name, var, external_letters, kind, final, program)``:
    ``external_letters`` are the letters V's formula uses after expanding the step's intermediate
    letters (each later mapped to an earlier step's name), ``kind``/``final`` describe V's final
    value (``_INT``: an int; ``_EXPR``: run ``program``, the ``(target, rpn)`` clauses up to V's last
    assignment, over the linear values of letters; ``_UNK``: the unknown x; ``_NONE``: no value)."""
    semi = chunk.find(";", 0, MAX_NAME + 8)
    if semi < 0:
        return None
    name, sep, var = chunk[:semi].rpartition(" as ")
    var = var.strip()
    if not sep or len(var) != 1 or not var.isalpha():
        return None
    name = " ".join(name.split())
    if not name:
        return None
    end = chunk.find(".", semi)
    clauses = _static_clauses(chunk[semi + 1:] if end < 0 else chunk[semi + 1:end])
    local: dict = {}                # intermediate letter -> external letters it stands for
    external: tuple = ()
    kind, final, last = _NONE, None, -1
    for i, (target, letters, spec) in enumerate(clauses):
        if letters is _UNKNOWN:
            external, kind, final, last = (), _UNK, None, i
            continue
        ext: dict = {}
        for letter in letters:
            if letter in local:
                ext.update(dict.fromkeys(local[letter]))
            else:
                ext[letter] = None
        if target == var:
            external, last = tuple(ext), i
            kind = _NONE if spec is None else (_INT if type(spec) is int else _EXPR)
            final = spec
        else:
            local[target] = tuple(ext)
    program = None
    if kind == _EXPR:
        program = tuple((t if t != var else None, s) for t, l, s in clauses[:last + 1]
                        if l is not _UNKNOWN and s is not None)
    return name, var, external, kind, final, program


def _run_program(program, env: dict):
    """Evaluate a step's clauses in order; intermediate letters are visible to later clauses and
    restored afterwards. Returns the value of the last clause (V's final assignment)."""
    saved: dict = {}
    val = None
    for target, spec in program:
        val = (0, spec) if type(spec) is int else _evaluate(spec, env)
        if target is None:
            continue
        if target not in saved:
            saved[target] = env.get(target)
        if val is None:
            env.pop(target, None)
        else:
            env[target] = val
    for letter, old in saved.items():
        if old is None:
            env.pop(letter, None)
        else:
            env[letter] = old
    return val


def _parse_step(chunk: str, var_to_name: dict, env: dict):
    """Parse the text after one "Define ". Returns ``(name, Step)`` or None; updates the bindings.

    ``env`` (letter -> linear value) holds the values of earlier steps' variables."""
    static = _static_step(chunk)
    if static is None:
        return None
    name, var, external, kind, final, program = static
    if external:
        parents = frozenset([var_to_name.get(letter) or "?" + letter for letter in external])
    else:
        parents = _EMPTY
    if kind == _INT:
        value = (0, final)
    elif kind == _EXPR:
        value = _run_program(program, env)
    elif kind == _UNK:
        value = (1, 0)
    else:
        value = None
    var_to_name[var] = name
    if value is None:
        env.pop(var, None)
    else:
        env[var] = value
    return Step(name, var, parents, value)


_EMPTY = frozenset()


def parse_solution(text: str) -> ParsedSolution:
    """Parse any text (gold solution or model output) into its dependency graph. Never raises on str."""
    if not isinstance(text, str):
        text = ""
    text = text[:MAX_CHARS]
    answer = formats.extract_answer(text)
    region = formats.solution_region(text)
    cut = region.rfind(formats.ANSWER_MARKER)
    body = region if cut < 0 else region[:cut]
    chunks = body.split(_DEFINE, MAX_STEPS + 1)
    steps: dict = {}
    var_to_name: dict = {}
    env: dict = {}
    n_defines = n_redefined = 0
    for chunk in chunks[1:MAX_STEPS + 1]:
        n_defines += 1
        dot = chunk.find(".", 0, MAX_STEP_CHARS)      # a step ends at its first "."
        chunk = chunk[:MAX_STEP_CHARS] if dot < 0 else chunk[:dot + 1]
        step = _parse_step(chunk, var_to_name, env)
        if step is not None:
            n_redefined += steps.pop(step.name, None) is not None
            steps[step.name] = step
    x_solution = None
    match = _WE_KNOW.search(body, max(0, len(body) - 2000))
    if match is not None:
        lin = env.get(match.group(1))
        if lin is not None and lin[0]:
            x_solution = Fraction(int(match.group(2)) - lin[1], lin[0])
            if x_solution.denominator == 1:
                x_solution = int(x_solution)
    return ParsedSolution(steps, n_defines, answer, x_solution, n_redefined)


# ----------------------------------------------------------------------------- gold


@dataclasses.dataclass(frozen=True)
class GoldGraph:
    parsed: ParsedSolution
    answer: str                 # normalized gold answer
    x: Fraction | int | None    # the solved unknown (reverse mode), else None
    values: dict                # name -> value at x (int / Fraction) or None
    names: tuple


def _at(lin, x):
    if lin is None:
        return None
    a, b = lin
    if not a:
        return b
    if x is None:
        return None
    return a * x + b


@functools.lru_cache(maxsize=8192)
def parse_gold(gold_solution: str) -> GoldGraph:
    """Parse a gold solution once (cached by text)."""
    parsed = parse_solution(gold_solution)
    answer = formats.normalize_answer(formats.gold_answer(gold_solution if isinstance(gold_solution, str) else ""))
    x = parsed.x_solution
    if x is None and any(step.value is not None and step.value[0] for step in parsed.steps.values()):
        match = _SOLUTION_X.search(gold_solution) if isinstance(gold_solution, str) else None
        raw = match.group(1) if match else (answer if answer.lstrip("-").isdigit() else None)
        x = int(raw) if raw is not None and len(raw) <= MAX_DIGITS else None
    values = {name: _at(step.value, x) for name, step in parsed.steps.items()}
    return GoldGraph(parsed, answer, x, values, tuple(parsed.steps))


# ----------------------------------------------------------------------------- verdict


class NodeResult(NamedTuple):
    """Per gold node: present in the prediction, same parent set, same value."""
    name: str
    present: bool
    parents_ok: bool
    value_ok: bool

    @property
    def correct(self) -> bool:
        return self.present and self.parents_ok and self.value_ok


@dataclasses.dataclass(slots=True)
class Verdict:
    """Result of :func:`verify`. Error counts are over gold nodes (a node can have both a dependency
    and a value mismatch); ``extra_nodes`` counts predicted names absent from the gold graph,
    ``redefined_nodes`` the predicted steps that define a name a step before them already defined
    (the later one is scored)."""
    process_acc: float
    answer_correct: bool
    verified_correct: bool
    n_gold: int
    n_pred: int
    n_correct: int
    dependency_mismatch: int
    missing_node: int
    value_mismatch: int
    answer_mismatch: int
    extra_nodes: int
    pred_answer: str | None
    gold_answer: str
    nodes: tuple = ()
    parse_error: bool = False
    redefined_nodes: int = 0

    @property
    def error_counts(self) -> dict:
        return {"dependency_mismatch": self.dependency_mismatch, "missing_node": self.missing_node,
                "value_mismatch": self.value_mismatch, "answer_mismatch": self.answer_mismatch,
                "extra_nodes": self.extra_nodes}

    @property
    def process_exact(self) -> bool:
        """Every gold node correct and no extra node (the original code's "no process mismatch")."""
        return self.n_gold > 0 and self.n_correct == self.n_gold and self.extra_nodes == 0


def _failed(gold_solution) -> Verdict:
    gold = formats.normalize_answer(formats.gold_answer(gold_solution)) if isinstance(gold_solution, str) else ""
    return Verdict(0.0, False, False, 0, 0, 0, 0, 0, 0, 1, 0, None, gold, (), True)


def _verify(gold_solution: str, response: str) -> Verdict:
    gold = parse_gold(gold_solution)
    if isinstance(response, bytes):
        response = response.decode("utf-8", "replace")
    pred = parse_solution(response)
    pred_steps = pred.steps
    x = gold.x
    nodes = []
    n_correct = dep_mis = missing = val_mis = 0
    gold_steps = gold.parsed.steps
    for name in gold.names:
        step = pred_steps.get(name)
        if step is None:
            missing += 1
            nodes.append(NodeResult(name, False, False, False))
            continue
        parents_ok = step.parents == gold_steps[name].parents
        gv = gold.values[name]
        value_ok = gv is not None and _at(step.value, x) == gv
        dep_mis += not parents_ok
        val_mis += not value_ok
        n_correct += parents_ok and value_ok
        nodes.append(NodeResult(name, True, parents_ok, value_ok))
    n_gold = len(gold.names)
    extra = sum(1 for name in pred_steps if name not in gold_steps)
    answer_ok = formats.answers_match(pred.answer, gold.answer)
    acc = n_correct / n_gold if n_gold else 0.0
    return Verdict(acc, answer_ok, answer_ok and n_gold > 0 and n_correct == n_gold, n_gold, len(pred_steps),
                   n_correct, dep_mis, missing, val_mis, int(not answer_ok), extra, pred.answer, gold.answer,
                   tuple(nodes), redefined_nodes=pred.n_redefined)


def verify(gold_solution: str, response: str) -> Verdict:
    """Score ``response`` (bare solution ending "Answer: N." or model output ending
    ``</solution> <answer> N </answer>``, with or without the prompt) against ``gold_solution``.
    Never raises: a (not expected) internal failure returns a zero verdict with ``parse_error=True``."""
    try:
        return _verify(gold_solution, response)
    except Exception:  # noqa: BLE001 — the scorer must never take down an RL step
        return _failed(gold_solution)


def verify_batch(gold_solutions, responses) -> list[Verdict]:
    """``[verify(g, r) for g, r in zip(...)]`` (gold parses are cached)."""
    return [verify(g, r) for g, r in zip(gold_solutions, responses, strict=True)]
