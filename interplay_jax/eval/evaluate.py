"""The evaluation engine: sample n completions per prompt, verify each, gold NLL per op.

(Checkpoints are loaded by :func:`interplay_jax.sampling.policy.load_policy`.)

* :func:`evaluate_items` — batches of prompts through :class:`interplay_jax.sampling.sampler.Sampler`,
  each completion scored by :func:`interplay_jax.task.verify.verify`; each finished prompt is
  appended to a JSONL file (``samples.jsonl``) at once, and prompts already there are skipped, so an
  interrupted evaluation resumes without redoing finished prompts (batches are fixed by the item
  order and each batch's key is ``fold_in(key, batch_index)``, so the resumed samples are the same).
* :func:`gold_nll` — teacher-forced mean NLL (nats/token) of the gold completion (+ EOS) per prompt.
* :func:`quick_eval` / :func:`make_eval_fn` — small-n evaluation for the training loop's ``eval_fn``.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from interplay_jax.eval import passk
from interplay_jax.model.logprobs import token_logprobs
from interplay_jax.sampling.padding import bucket_length, pad
from interplay_jax.sampling.sampler import Sampler
from interplay_jax.task import formats
from interplay_jax.task.tokenizer import Tokenizer
from interplay_jax.task.verify import verify

ERROR_FIELDS = ("dependency_mismatch", "missing_node", "value_mismatch", "answer_mismatch", "extra_nodes")
MAX_TEXT_CHARS = 3000   # a stored example response is cut here


# ----------------------------------------------------------------------------------------- scoring


def score_sample(item: dict, text: str, length: int, stopped: bool) -> dict:
    v = verify(item["record"]["solution"], text)
    s = {"verified_correct": bool(v.verified_correct), "answer_correct": bool(v.answer_correct),
         "process_acc": float(v.process_acc), "length": int(length), "stopped": bool(stopped),
         "n_gold": int(v.n_gold), "n_pred": int(v.n_pred), "answer_parsed": v.pred_answer is not None,
         "redefined_nodes": int(v.redefined_nodes)}
    s.update({k: int(getattr(v, k)) for k in ERROR_FIELDS})
    return s


def _record(it: dict, texts: list[str], lengths, stopped, keep: int) -> dict:
    """One prompt's line of samples.jsonl; ``keep`` > 0 stores the gold and the first ``keep``
    response texts (cut at MAX_TEXT_CHARS) for the report's examples."""
    rec = {"op": it["op"], "context": it["context"], "mode": it["mode"], "id": it["id"],
           "samples": [score_sample(it, t, L, s) for t, L, s in zip(texts, lengths, stopped)]}
    if keep > 0 and texts:
        r = it["record"]
        rec["gold"] = {"problem": r["problem"], "question": r["question"], "solution": r["solution"]}
        for s, t in zip(rec["samples"][:keep], texts):
            s["text"] = t[:MAX_TEXT_CHARS]
    return rec


def _read_done(path: pathlib.Path) -> dict:
    done = {}
    if path.is_file():
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut by an interruption: that prompt is redone
                done[rec["id"]] = rec
    return done


def evaluate_items(sampler: Sampler, params, tokenizer: Tokenizer, items: Sequence[dict], *, n: int,
                   max_new_tokens: int = 1024, temperature: float = 0.7, top_p: float = 1.0, top_k: int = 0,
                   batch_prompts: int = 8, max_prompt_len: int = 1024, key=None,
                   samples_path: str | pathlib.Path | None = None, responder=None, progress: bool = True,
                   timing: dict | None = None, texts: dict | None = None) -> list[dict]:
    """Per-prompt results ``{op, context, mode, id, samples: [...]}`` in item order.

    ``responder(item, n) -> [text, ...]`` replaces the model (oracles in tests). Prompts longer than
    ``max_prompt_len`` tokens get ``samples: []`` and ``filtered: true`` (pass@k skips them).
    ``timing`` (a dict) accumulates seconds under "sampling" and "verification". ``texts``
    ({item id: count}) keeps the gold and that many response texts of those prompts (examples).
    """
    texts = texts or {}
    key = jax.random.key(0) if key is None else key
    path = pathlib.Path(samples_path) if samples_path else None
    done = _read_done(path) if path else {}
    timing = timing if timing is not None else {}
    timing.setdefault("sampling", 0.0)
    timing.setdefault("verification", 0.0)
    timing.setdefault("completions", 0)
    timing.setdefault("generated_tokens", 0)
    out_f = open(path, "a", encoding="utf-8") if path else None
    if out_f and path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        out_f.write("\n")  # a line cut by an interruption: start the next record on a fresh line
    batches = list(range(0, len(items), batch_prompts))
    bar = None
    if progress:
        bar = tqdm(total=len(items), initial=sum(1 for it in items if it["id"] in done), desc="eval", unit="prompt",
                   dynamic_ncols=True, leave=False)
    try:
        for bi, start in enumerate(batches):
            batch = items[start:start + batch_prompts]
            if all(it["id"] in done for it in batch):
                continue
            t0 = time.perf_counter()
            responses: list[list[str]] = []
            filtered = []
            if responder is not None:
                responses = [list(responder(it, n)) for it in batch]
                lengths = [[len(t) for t in ts] for ts in responses]
                stopped = [[True] * len(ts) for ts in responses]
                filtered = [False] * len(batch)
            else:
                prompts = [tokenizer.encode(formats.format_prompt(it["record"])) for it in batch]
                filtered = [len(p) > max_prompt_len for p in prompts]
                keep = [i for i, f in enumerate(filtered) if not f]
                res = sampler.sample(params, [prompts[i] for i in keep], n=n, max_new_tokens=max_new_tokens,
                                     temperature=temperature, top_p=top_p, top_k=top_k,
                                     key=jax.random.fold_in(key, bi), stop_ids=tokenizer.stop_ids) if keep else None
                responses, lengths, stopped = [[] for _ in batch], [[] for _ in batch], [[] for _ in batch]
                if res is not None:
                    timing["generated_tokens"] += int(res.lengths.sum())
                    for r in range(len(res.lengths)):
                        i = keep[int(res.prompt_index[r])]
                        L = int(res.lengths[r])
                        ids = res.tokens[r, :L].tolist()
                        if ids and ids[-1] == tokenizer.eos_id:
                            ids = ids[:-1]
                        responses[i].append(tokenizer.decode(ids))
                        lengths[i].append(L)
                        stopped[i].append(bool(res.done[r]))
            t1 = time.perf_counter()
            for i, it in enumerate(batch):
                if it["id"] in done:
                    continue
                rec = _record(it, responses[i], lengths[i], stopped[i], int(texts.get(it["id"], 0)))
                if filtered[i]:
                    rec["filtered"] = True
                timing["completions"] += len(rec["samples"])
                done[it["id"]] = rec
                if out_f:
                    out_f.write(json.dumps(rec) + "\n")
                    out_f.flush()
                if bar:
                    bar.update(1)
            timing["sampling"] += t1 - t0
            timing["verification"] += time.perf_counter() - t1
    finally:
        if out_f:
            out_f.close()
        if bar:
            bar.close()
    return [done[it["id"]] for it in items if it["id"] in done]


# ----------------------------------------------------------------------------------------- gold NLL


def gold_nll(graphdef, params, tokenizer: Tokenizer, items: Sequence[dict], *, batch_size: int = 8,
             max_len: int = 2048) -> dict[str, float]:
    """Mean NLL (nats/token) of each item's gold completion (+ EOS) given its prompt: {id: nll}."""
    @jax.jit
    def nll_fn(params, tokens_BxT, counted_BxT):
        logits_BxTxV = nnx.merge(graphdef, params)(tokens_BxT)
        nll_BxT = -token_logprobs(logits_BxTxV[:, :-1], tokens_BxT[:, 1:])
        c_BxT = counted_BxT[:, 1:]
        return jnp.sum(nll_BxT * c_BxT, axis=1) / jnp.maximum(c_BxT.sum(axis=1), 1)

    out = {}
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        seqs, prompt_lens = [], []
        for it in batch:
            p = tokenizer.encode(formats.format_prompt(it["record"]))
            c = tokenizer.encode(formats.format_completion(it["record"])) + [tokenizer.eos_id]
            seqs.append((p + c)[:max_len])
            prompt_lens.append(len(p))
        width = bucket_length(max(len(s) for s in seqs))
        tokens, _ = pad(seqs, width, tokenizer.pad_id, side="right", rows=batch_size)
        counted = np.zeros((batch_size, width), np.float32)       # the completion's tokens
        for i, (seq, p_len) in enumerate(zip(seqs, prompt_lens)):
            counted[i, p_len:len(seq)] = 1
        vals = np.asarray(nll_fn(params, tokens, counted))
        for i, it in enumerate(batch):
            out[it["id"]] = float(vals[i])
    return out


# ----------------------------------------------------------------------------------------- quick eval


def quick_eval(sampler: Sampler, params, tokenizer: Tokenizer, items: Sequence[dict], *, n: int = 4,
               max_new_tokens: int = 256, temperature: float = 0.7, batch_prompts: int = 8, key=None,
               buckets=passk.DEFAULT_BUCKETS) -> dict[str, float]:
    """Small-n evaluation for logging: {"<bucket>/pass@1", "<bucket>/pass@n", "<bucket>/answer@1",
    "process_acc"} as plain floats (e.g. for TensorBoard)."""
    prompts = evaluate_items(sampler, params, tokenizer, items, n=n, max_new_tokens=max_new_tokens,
                             temperature=temperature, batch_prompts=batch_prompts, key=key, progress=False)
    out = {}
    for b, entry in passk.by_bucket(prompts, buckets).items():
        ks = sorted(entry["verified"])
        out[f"{b}/pass@1"] = entry["verified"][1]
        out[f"{b}/pass@{ks[-1]}"] = entry["verified"][ks[-1]]
        out[f"{b}/answer@1"] = entry["answer"][1]
    accs = [s["process_acc"] for p in prompts for s in p["samples"]]
    out["process_acc"] = float(np.mean(accs)) if accs else 0.0
    return out


def make_eval_fn(graphdef, cfg, tokenizer: Tokenizer, items: Sequence[dict], **kwargs):
    """``eval_fn(state) -> dict`` for the training loop (small-n pass@k of ``state["params"]``)."""
    sampler = Sampler(graphdef, cfg, pad_id=tokenizer.pad_id)
    calls = {"i": 0}

    def eval_fn(state):
        calls["i"] += 1
        return quick_eval(sampler, state["params"], tokenizer, items, key=jax.random.key(calls["i"]), **kwargs)

    return eval_fn
