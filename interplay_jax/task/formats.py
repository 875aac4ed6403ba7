"""Text formats of the study (docs/task.md "Text formats"): training document, RL/eval prompt, answers.

A record (published schema) has ``problem`` ("S1. S2. ... Sk. ", trailing space), ``question`` and
``solution`` (ending "Answer: N."). The training document is::

    <question> {problem} {question} </question> <solution> {body} </solution> <answer> {N} </answer>

with single spaces between parts: ``problem``, ``question`` and the solution body are each stripped
of surrounding whitespace first (so the problem's trailing space does not double), exactly like the
original release's ``compose_text``. ``body`` is the solution with its final "Answer: N." removed,
``N`` is the text after the last "Answer:" up to the end of its line, stripped, trailing "." removed.
EOS is not part of the text: the tokenizer appends its id (``Tokenizer.encode_document``). No BOS.

The RL / eval prompt is the document up to and including ``<solution>`` (no trailing space); the model
writes the rest, i.e. the completion ``" {body} </solution> <answer> {N} </answer>"``, and generation
stops at ``</answer>`` or EOS.
"""
from __future__ import annotations

from typing import Mapping

from interplay_jax.errors import DataError

UNK = "[UNK]"
PAD = "[PAD]"
BOS = "[BOS]"
EOS = "[EOS]"
QUESTION_OPEN = "<question>"
QUESTION_CLOSE = "</question>"
SOLUTION_OPEN = "<solution>"
SOLUTION_CLOSE = "</solution>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
# Special tokens in id order (docs/task.md): [UNK]=0 [PAD]=1 [BOS]=2 [EOS]=3 <question>=4 ... </answer>=9.
SPECIAL_TOKENS = (UNK, PAD, BOS, EOS, QUESTION_OPEN, QUESTION_CLOSE, SOLUTION_OPEN, SOLUTION_CLOSE,
                  ANSWER_OPEN, ANSWER_CLOSE)

ANSWER_MARKER = "Answer:"


def _field(record: Mapping, key: str) -> str:
    value = record.get(key) if hasattr(record, "get") else None
    if not isinstance(value, str):
        rid = record.get("id", "?") if hasattr(record, "get") else "?"
        raise DataError(f"record {rid!r} has no text field {key!r}")
    return value


def split_solution(solution: str) -> tuple[str, str]:
    """``(body, answer)``: body is the text before the last "Answer:" (stripped), answer as in
    :func:`gold_answer`. Without an "Answer:" marker: ``(solution.strip(), "")``."""
    pre, sep, post = solution.rpartition(ANSWER_MARKER)
    if not sep:
        return solution.strip(), ""
    return pre.strip(), _clean_answer(post)


def _clean_answer(text: str) -> str:
    text = text.strip()
    if not text:
        return ""
    return text.splitlines()[0].strip().rstrip(".").strip()


def gold_answer(solution: str) -> str:
    """The text after the last "Answer:" (to the end of its line), stripped, trailing "." removed."""
    return split_solution(solution)[1]


def format_prompt(record: Mapping) -> str:
    """``<question> {problem} {question} </question> <solution>`` (no trailing space)."""
    problem = _field(record, "problem").strip()
    question = _field(record, "question").strip()
    return f"{QUESTION_OPEN} {problem} {question} {QUESTION_CLOSE} {SOLUTION_OPEN}"


def format_completion(record: Mapping) -> str:
    """What the model should write after the prompt: ``" {body} </solution> <answer> {N} </answer>"``."""
    solution = _field(record, "solution")
    body, answer = split_solution(solution)
    if not answer:
        rid = record.get("id", "?")
        raise DataError(f"record {rid!r}: solution has no final 'Answer: N.'")
    return f" {body} {SOLUTION_CLOSE} {ANSWER_OPEN} {answer} {ANSWER_CLOSE}"


def format_document(record: Mapping) -> str:
    """The training document (docs/task.md), without EOS (added at tokenization)."""
    return format_prompt(record) + format_completion(record)


def extract_answer(response: str) -> str | None:
    """The model's final answer, or None when it gave none.

    Priority (as the original release's reward code): the text inside the first
    ``<answer> ... </answer>`` pair; else, after an unclosed ``<answer>``, the text up to the next
    ``<`` or newline; else the text after the last "Answer:" up to the next ``<`` or newline.
    The result is stripped and a trailing "." removed; empty counts as None. Linear time.
    """
    if not isinstance(response, str):
        return None
    start = response.find(ANSWER_OPEN)
    if start >= 0:
        start += len(ANSWER_OPEN)
        end = response.find(ANSWER_CLOSE, start)
        if end < 0:
            end = _first_stop(response, start)
        answer = response[start:end].strip().rstrip(".").strip()
        return answer or None
    pos = response.rfind(ANSWER_MARKER)
    if pos >= 0:
        start = pos + len(ANSWER_MARKER)
        answer = response[start:_first_stop(response, start)].strip().rstrip(".").strip()
        return answer or None
    return None


def _first_stop(text: str, start: int) -> int:
    ends = [i for i in (text.find("<", start), text.find("\n", start)) if i >= 0]
    return min(ends) if ends else len(text)


def normalize_answer(answer: str | None) -> str:
    """Canonical form for comparing answers: stripped, trailing "." removed, inner spaces collapsed."""
    if not answer:
        return ""
    return " ".join(answer.strip().rstrip(".").split())


def answers_match(predicted: str | None, gold: str | None) -> bool:
    """String equality after :func:`normalize_answer` (as the original); empty never matches."""
    p, g = normalize_answer(predicted), normalize_answer(gold)
    return bool(g) and p == g


def solution_region(response: str) -> str:
    """The solution text of a response: after the first ``<solution>`` if any (so a response that
    repeats the prompt works), up to the first ``</solution>`` or ``<answer>`` after it."""
    start = response.find(SOLUTION_OPEN)
    start = 0 if start < 0 else start + len(SOLUTION_OPEN)
    ends = [i for i in (response.find(SOLUTION_CLOSE, start), response.find(ANSWER_OPEN, start)) if i >= 0]
    return response[start:min(ends)] if ends else response[start:]


def response_to_solution(response: str) -> str:
    """Turn model output (``... </solution> <answer> N </answer>``) into a bare solution in the
    published form: ``"{body} Answer: N."`` (just the body when no answer was given)."""
    region = solution_region(response)
    body, marker_answer = split_solution(region) if ANSWER_MARKER in region else (region.strip(), "")
    answer = extract_answer(response) or marker_answer
    return f"{body} {ANSWER_MARKER} {answer}." if answer else body
