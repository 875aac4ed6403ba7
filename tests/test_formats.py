"""Training document, prompt and answer extraction (SPEC §1 "Text formats")."""
import json

import pytest

from interplay_jax.errors import DataError
from interplay_jax.task.formats import (SPECIAL_TOKENS, extract_answer, format_completion, format_document,
                                        format_prompt, gold_answer, response_to_solution, split_solution)
from interplay_jax.task.verify import verify

RECORD = {
    "problem": "The number of adult parrot in South Zoo equals 2. The number of adult eagle in Jefferson Circus "
               "equals 3. The number of adult eagle in South Zoo equals 2. ",
    "question": "What is the total number of adult animals in Jefferson Circus?",
    "solution": "Define adult eagle in Jefferson Circus as d; so d = 3. Define total number of adult animals in "
                "Jefferson Circus as g; so g = d = 3. Answer: 3.",
    "op": 2, "id": "r0", "template": "crazy_zootopia", "mode": "normalforward",
}


def test_document_exact_string():
    assert format_document(RECORD) == (
        "<question> The number of adult parrot in South Zoo equals 2. The number of adult eagle in Jefferson "
        "Circus equals 3. The number of adult eagle in South Zoo equals 2. What is the total number of adult "
        "animals in Jefferson Circus? </question> <solution> Define adult eagle in Jefferson Circus as d; so "
        "d = 3. Define total number of adult animals in Jefferson Circus as g; so g = d = 3. </solution> "
        "<answer> 3 </answer>")


def test_prompt_is_the_document_prefix_through_solution_tag():
    prompt = format_prompt(RECORD)
    doc = format_document(RECORD)
    assert prompt.endswith("</question> <solution>") and doc.startswith(prompt)
    assert doc == prompt + format_completion(RECORD)
    assert format_completion(RECORD) == (" Define adult eagle in Jefferson Circus as d; so d = 3. Define total "
                                         "number of adult animals in Jefferson Circus as g; so g = d = 3. "
                                         "</solution> <answer> 3 </answer>")


def test_reference_documents_are_well_formed(reference_dir):
    with open(reference_dir / "samples.jsonl") as f:
        records = [json.loads(line) for line in f]
    for r in records:
        doc = format_document(r)
        assert "  " not in doc and doc == doc.strip()
        assert doc.count("<question>") == doc.count("</answer>") == 1
        assert "Answer:" not in doc and "EOS" not in doc
        body, answer = split_solution(r["solution"])
        assert doc.endswith(f"{body} </solution> <answer> {answer} </answer>")
        assert answer == gold_answer(r["solution"]) and answer.isdigit()
        assert r["solution"].endswith(f"Answer: {answer}.")


def test_gold_answer():
    assert gold_answer("... Answer: 15.") == "15"
    assert gold_answer("Answer: 3. more Answer: 7.") == "7"
    assert gold_answer("Answer: 42\nrest") == "42"
    assert gold_answer("no marker") == ""


def test_extract_answer_priority():
    assert extract_answer(" ... </solution> <answer> 12 </answer>") == "12"
    assert extract_answer("Answer: 5. </solution> <answer> 12 </answer>") == "12"
    assert extract_answer("<answer> 9 </answer> <answer> 8 </answer>") == "9"
    assert extract_answer("<answer> 7") == "7"
    assert extract_answer("<answer> 7 <solution>") == "7"
    assert extract_answer("so g = 3. Answer: 3.") == "3"
    assert extract_answer("Answer: 3. Answer: 4.") == "4"
    assert extract_answer("") is None and extract_answer("no answer") is None
    assert extract_answer("<answer>  </answer>") is None
    assert extract_answer(None) is None


def test_response_to_solution_roundtrip():
    completion = format_completion(RECORD)
    bare = response_to_solution(completion)
    assert bare == RECORD["solution"]
    assert response_to_solution(format_document(RECORD)) == RECORD["solution"]
    assert verify(RECORD["solution"], bare).verified_correct


def test_special_tokens_order():
    assert SPECIAL_TOKENS == ("[UNK]", "[PAD]", "[BOS]", "[EOS]", "<question>", "</question>", "<solution>",
                              "</solution>", "<answer>", "</answer>")


def test_malformed_record_is_a_data_error():
    with pytest.raises(DataError, match="problem"):
        format_document({"question": "q", "solution": "Answer: 1.", "id": "x"})
    with pytest.raises(DataError, match="Answer"):
        format_document({**RECORD, "solution": "Define a as b; so b = 1."})
