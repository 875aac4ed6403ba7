"""The evaluation engine: sample n completions per prompt, verify each, gold NLL per op.

* :func:`load_checkpoint` — one of our run dirs (lineage.json + orbax checkpoints) or an HF Qwen2
  directory (config.json + safetensors + tokenizer.json) -> :class:`Loaded` (graphdef, params, cfg,
  tokenizer). Missing / wrong-shaped checkpoints raise one ConfigError line.
* :func:`evaluate_items` — batches of prompts through :class:`interplay_jax.rl.sampler.Sampler`,
  each completion scored by :func:`interplay_jax.task.verify.verify`; each finished prompt is
  appended to a JSONL file (``samples.jsonl``) at once, and prompts already there are skipped, so an
  interrupted evaluation resumes without redoing finished prompts (batches are fixed by the item
  order and each batch's key is ``fold_in(key, batch_index)``, so the resumed samples are the same).
* :func:`gold_nll` — teacher-forced mean NLL (nats/token) of the gold completion (+ EOS) per prompt.
* :func:`quick_eval` / :func:`make_eval_fn` — small-n evaluation for the training loop's ``eval_fn``.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from interplay_jax.errors import ConfigError
from interplay_jax.eval import passk
from interplay_jax.rl.sampler import Sampler, bucket_length
from interplay_jax.task import formats
from interplay_jax.task.verify import verify

ERROR_FIELDS = ("dependency_mismatch", "missing_node", "value_mismatch", "answer_mismatch", "extra_nodes")


# ----------------------------------------------------------------------------------------- tokenizer


class Tok:
    """Thin wrapper over an HF ``tokenizers`` tokenizer.json (no BOS; decoding keeps special tokens)."""

    def __init__(self, path):
        from tokenizers import Tokenizer

        path = pathlib.Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise ConfigError(f"tokenizer file {path} does not exist")
        self.path = path
        self.tk = Tokenizer.from_file(str(path))
        self.eos_id = self._id(formats.EOS)
        self.pad_id = self._id(formats.PAD)
        self.answer_close_id = self._id(formats.ANSWER_CLOSE)

    def _id(self, token):
        i = self.tk.token_to_id(token)
        if i is None:
            raise ConfigError(f"tokenizer {self.path} has no {token} token")
        return i

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()


# ----------------------------------------------------------------------------------------- checkpoints


@dataclasses.dataclass
class Loaded:
    name: str
    graphdef: object
    params: object
    cfg: object
    tokenizer: Tok
    source: str  # "hf" | "run"
    step: int | None = None


def _is_hf_dir(p: pathlib.Path) -> bool:
    return (p / "config.json").is_file() and (any(p.glob("*.safetensors")) or any(p.glob("pytorch_model*.bin")))


def load_checkpoint(path, tokenizer: str | None = None, name: str | None = None, step: int | None = None,
                    **model_overrides) -> Loaded:
    """Load an HF Qwen2 directory or one of our run dirs (latest or given step)."""
    p = pathlib.Path(path)
    name = name or (p.name if p.name not in ("", ".") else str(p))
    if not p.exists():
        raise ConfigError(f"checkpoint {p} does not exist")
    if p.is_dir() and _is_hf_dir(p):
        from interplay_jax.model import hf

        model, cfg = hf.load(p, **model_overrides)
        tok_path = tokenizer or p / "tokenizer.json"
        graphdef, params = nnx.split(model, nnx.Param)
        return Loaded(name, graphdef, params, cfg, Tok(tok_path), "hf")
    from interplay_jax import checkpoint as ckpt
    from interplay_jax.model.qwen2 import abstract_model, model_config_from_dict

    run_dir, step = ckpt.resolve_checkpoint(p, step)
    lineage = ckpt.read_lineage(run_dir)
    config = lineage.get("config") or {}
    # the resolved model a run recorded (an RL run inherits its parent's), else the run's model config
    spec = lineage.get("model") or config.get("model")
    if not spec:
        raise ConfigError(f"{run_dir}/lineage.json has no model config")
    config = {**config, "model": spec}
    cfg = model_config_from_dict({**spec, **model_overrides})
    graphdef, abstract = nnx.split(abstract_model(cfg), nnx.Param)
    try:
        params, _, _ = ckpt.restore_params(run_dir, target=abstract, step=step)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 — orbax raises many types for a shape/structure mismatch
        msg = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise ConfigError(f"checkpoint {run_dir} step {step} does not fit model {config['model']}: {msg}") from None
    _check_shapes(abstract, params, f"checkpoint {run_dir} step {step}", config["model"])
    tok_path = tokenizer or config.get("tokenizer") or ""
    if tok_path and not pathlib.Path(tok_path).exists() and (run_dir / "tokenizer.json").is_file():
        tok_path = run_dir / "tokenizer.json"
    if not tok_path:
        raise ConfigError(f"no tokenizer for {run_dir}: set --config.tokenizer")
    return Loaded(name, graphdef, params, cfg, Tok(tok_path), "run", step)


def _check_shapes(abstract, params, where: str, model_spec) -> None:
    want = jax.tree_util.tree_flatten_with_path(abstract)[0]
    got = jax.tree.leaves(params)
    if len(want) != len(got):
        raise ConfigError(f"{where} has {len(got)} parameter arrays; model {model_spec} expects {len(want)}")
    for (path, w), g in zip(want, got):
        if tuple(w.shape) != tuple(np.shape(g)):
            name = jax.tree_util.keystr(path)
            raise ConfigError(f"{where}: parameter {name} has shape {tuple(np.shape(g))}, model {model_spec} "
                              f"expects {tuple(w.shape)} (wrong model shape)")


# ----------------------------------------------------------------------------------------- scoring


def score_sample(item: dict, text: str, length: int, stopped: bool) -> dict:
    v = verify(item["record"]["solution"], text)
    s = {"verified_correct": bool(v.verified_correct), "answer_correct": bool(v.answer_correct),
         "process_acc": float(v.process_acc), "length": int(length), "stopped": bool(stopped)}
    s.update({k: int(getattr(v, k)) for k in ERROR_FIELDS})
    return s


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


def evaluate_items(sampler: Sampler, params, tokenizer: Tok, items: Sequence[dict], *, n: int,
                   max_new_tokens: int = 1024, temperature: float = 0.7, top_p: float = 1.0, top_k: int = 0,
                   batch_prompts: int = 8, max_prompt_len: int = 1024, key=None,
                   samples_path: str | pathlib.Path | None = None, responder=None, progress: bool = True,
                   timing: dict | None = None) -> list[dict]:
    """Per-prompt results ``{op, context, mode, id, samples: [...]}`` in item order.

    ``responder(item, n) -> [text, ...]`` replaces the model (oracles in tests). Prompts longer than
    ``max_prompt_len`` tokens get ``samples: []`` and ``filtered: true`` (pass@k skips them).
    ``timing`` (a dict) accumulates seconds under "sampling" and "verification".
    """
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
        from tqdm import tqdm
        bar = tqdm(total=len(items), initial=sum(1 for it in items if it["id"] in done), desc="eval", unit="prompt",
                   dynamic_ncols=True, leave=False)
    try:
        for bi, start in enumerate(batches):
            batch = items[start:start + batch_prompts]
            if all(it["id"] in done for it in batch):
                continue
            t0 = time.perf_counter()
            texts: list[list[str]] = []
            filtered = []
            if responder is not None:
                texts = [list(responder(it, n)) for it in batch]
                lengths = [[len(t) for t in ts] for ts in texts]
                stopped = [[True] * len(ts) for ts in texts]
                filtered = [False] * len(batch)
            else:
                prompts = [tokenizer.encode(formats.format_prompt(it["record"])) for it in batch]
                filtered = [len(p) > max_prompt_len for p in prompts]
                keep = [i for i, f in enumerate(filtered) if not f]
                res = sampler.sample(params, [prompts[i] for i in keep], n=n, max_new_tokens=max_new_tokens,
                                     temperature=temperature, top_p=top_p, top_k=top_k,
                                     key=jax.random.fold_in(key, bi),
                                     stop_ids=(tokenizer.eos_id, tokenizer.answer_close_id)) if keep else None
                texts, lengths, stopped = [[] for _ in batch], [[] for _ in batch], [[] for _ in batch]
                if res is not None:
                    timing["generated_tokens"] += int(res.lengths.sum())
                    for r in range(len(res.lengths)):
                        i = keep[int(res.prompt_index[r])]
                        L = int(res.lengths[r])
                        ids = res.tokens[r, :L].tolist()
                        if ids and ids[-1] == tokenizer.eos_id:
                            ids = ids[:-1]
                        texts[i].append(tokenizer.decode(ids))
                        lengths[i].append(L)
                        stopped[i].append(bool(res.done[r]))
            t1 = time.perf_counter()
            for i, it in enumerate(batch):
                if it["id"] in done:
                    continue
                rec = {"op": it["op"], "context": it["context"], "mode": it["mode"], "id": it["id"],
                       "samples": [score_sample(it, t, L, s) for t, L, s in zip(texts[i], lengths[i], stopped[i])]}
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


def gold_nll(graphdef, params, tokenizer: Tok, items: Sequence[dict], *, batch_size: int = 8,
             max_len: int = 2048) -> dict[str, float]:
    """Mean NLL (nats/token) of each item's gold completion (+ EOS) given its prompt: {id: nll}."""
    @jax.jit
    def nll_fn(params, tokens, counted):
        logits = nnx.merge(graphdef, params)(tokens)[:, :-1].astype(jnp.float32)
        lp = jax.nn.log_softmax(logits, axis=-1)
        tok_nll = -jnp.take_along_axis(lp, tokens[:, 1:, None], axis=-1)[..., 0]
        c = counted[:, 1:]
        return jnp.sum(tok_nll * c, axis=1) / jnp.maximum(c.sum(axis=1), 1)

    out = {}
    for start in range(0, len(items), batch_size):
        batch = items[start:start + batch_size]
        seqs, masks = [], []
        for it in batch:
            p = tokenizer.encode(formats.format_prompt(it["record"]))
            c = tokenizer.encode(formats.format_completion(it["record"])) + [tokenizer.eos_id]
            seq = (p + c)[:max_len]
            seqs.append(seq)
            masks.append([0] * len(p) + [1] * (len(seq) - len(p)))
        width = bucket_length(max(len(s) for s in seqs))
        rows = batch_size
        tokens = np.full((rows, width), tokenizer.pad_id, np.int32)
        counted = np.zeros((rows, width), np.float32)
        for i, (s, m) in enumerate(zip(seqs, masks)):
            tokens[i, :len(s)] = s
            counted[i, :len(m)] = m
        vals = np.asarray(nll_fn(params, tokens, counted))
        for i, it in enumerate(batch):
            out[it["id"]] = float(vals[i])
    return out


# ----------------------------------------------------------------------------------------- quick eval


def quick_eval(sampler: Sampler, params, tokenizer: Tok, items: Sequence[dict], *, n: int = 4,
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


def make_eval_fn(graphdef_or_model, tokenizer: Tok, items: Sequence[dict], cfg=None, **kwargs):
    """``eval_fn(state) -> dict`` for :func:`interplay_jax.train.loop.run_loop` (state["params"]);
    ``cfg``: the ModelConfig when a graphdef is passed."""
    sampler = Sampler(graphdef_or_model, cfg, pad_id=tokenizer.pad_id)
    calls = {"i": 0}

    def eval_fn(state):
        calls["i"] += 1
        params = state["params"] if isinstance(state, dict) else state.params
        return quick_eval(sampler, params, tokenizer, items, key=jax.random.key(calls["i"]), **kwargs)

    return eval_fn
