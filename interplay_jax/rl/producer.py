"""One GRPO step's data: prompts -> rollouts -> process-verified rewards -> group advantages -> batch.

:class:`RolloutProducer` is the ``produce(state, step)`` the shared training loop calls before each
GRPO update: it samples ``n`` rollouts for each of the step's prompts with the current policy
(key ``fold_in(PRNGKey(seed), step)``, so a resumed run samples the same rollouts), verifies every
response against its gold solution, turns rewards into group advantages and assembles the device
batch (with the frozen reference policy's log-probs when the KL term is on). It returns the batch and
host metrics (reward, VerifiedCorrect / answer accuracy, ProcessAcc, lengths, timings), and appends
one line per step to ``samples.jsonl`` (a digest of the rollouts and one example).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import time

import jax
import numpy as np

from interplay_jax.rl import grpo
from interplay_jax.sampling.padding import DEFAULT_BUCKETS
from interplay_jax.sampling.rollouts import rollout
from interplay_jax.sampling.sampler import Sampler
from interplay_jax.task.verify import verify
from interplay_jax.train import sharding as shd


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
    num_prompts: int                  # prompts per step
    n: int                            # rollouts per prompt (the GRPO group)
    max_prompt_len: int               # longer prompts are dropped and counted
    max_response_len: int             # rollouts that never stop are cut here (and scored)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_prompts: int = 0            # prompts per sampler call (0: all at once)
    std_normalize: bool = True        # GRPO advantages (False: Dr.GRPO's r - mean)
    prompt_buckets: tuple = DEFAULT_BUCKETS
    decode_chunk: int = 0             # decode steps per chunk (0: one chunk; see the sampler)
    decode_kernel: str = "xla"        # the decode step's attention (see the sampler)
    old_logprobs: str = "recompute"   # "recompute" (a forward in the update) | "sampler" (the rollouts')

    @classmethod
    def from_config(cls, config) -> "RolloutSettings":
        r = config.rl
        buckets = tuple(int(b) for b in str(r.get("prompt_buckets", "") or "").split(",") if b.strip())
        return cls(num_prompts=int(r.num_prompts), n=int(r.n), max_prompt_len=int(r.max_prompt_len),
                   max_response_len=int(r.max_response_len), temperature=float(r.temperature),
                   top_p=float(r.top_p), top_k=int(r.top_k), batch_prompts=int(r.rollout_batch_prompts or 0),
                   std_normalize=bool(config.grpo.std_normalize), prompt_buckets=buckets or DEFAULT_BUCKETS,
                   decode_chunk=int(r.get("decode_chunk", 0) or 0),
                   decode_kernel=str(r.get("decode_kernel", "xla") or "xla"),
                   old_logprobs=str(config.grpo.get("old_logprobs", "recompute")))


class RolloutProducer:
    """``produce(state, step) -> ((device rollouts, host metrics))`` for the shared loop."""

    def __init__(self, settings: RolloutSettings, *, graphdef, model_cfg, tokenizer, prompts, reward, mesh, seed: int,
                 ref_params=None, logprob_fn=None, samples_path=None):
        self.s = settings
        self.seed = int(seed)
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.reward = reward
        self.mesh = mesh
        self.ref_params = ref_params
        self.logprob_fn = logprob_fn
        self.samples_path = samples_path
        self.sampler = Sampler(graphdef, model_cfg, pad_id=tokenizer.pad_id, prompt_buckets=settings.prompt_buckets,
                               decode_chunk=settings.decode_chunk, decode_kernel=settings.decode_kernel)
        self.rows = settings.num_prompts * settings.n
        self.seq_lens = grpo.update_lengths(settings.max_prompt_len + settings.max_response_len)
        self.filtered_total = 0

    def __call__(self, state, step: int):
        s, t0 = self.s, time.perf_counter()
        records = self.prompts.step_records(step, s.num_prompts)
        prompt_ids = [self.tokenizer.encode_prompt(r) for r in records]
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), int(step))
        with shd.tracing_mesh(self.mesh):   # the params live on the mesh (TPU attention shard_maps over it)
            out = rollout(self.sampler, state["params"], prompt_ids, max_prompt_len=s.max_prompt_len,
                          batch_prompts=s.batch_prompts or None, n=s.n, max_new_tokens=s.max_response_len,
                          temperature=s.temperature, top_p=s.top_p, top_k=s.top_k, key=key,
                          stop_ids=self.tokenizer.stop_ids)
        res, kept = out.result, out.kept
        self.filtered_total += out.num_filtered
        t_sample = time.perf_counter() - t0

        responses = self.tokenizer.decode_batch(res.completions())
        golds = [records[kept[int(i)]]["solution"] for i in res.prompt_index]
        verdicts = [verify(g, r) for g, r in zip(golds, responses)]
        rewards_N = np.array([self.reward.from_verdict(v) for v in verdicts], np.float32)
        adv_N = grpo.group_advantages(rewards_N, s.n, std_normalize=s.std_normalize) if len(rewards_N) else rewards_N
        kept_prompts = [prompt_ids[i] for i in kept]
        longest = max((len(kept_prompts[int(i)]) + int(n) for i, n in zip(res.prompt_index, res.lengths)), default=1)
        seq_len = next(t for t in self.seq_lens if t >= longest)
        batch = grpo.assemble_rollouts(kept_prompts, res.tokens, res.lengths, res.prompt_index, seq_len=seq_len,
                                       pad_id=self.tokenizer.pad_id, num_rows=self.rows)
        batch["advantages"] = np.zeros((self.rows,), np.float32)
        batch["advantages"][:len(adv_N)] = adv_N
        if s.old_logprobs == "sampler":
            batch["old_logprobs"] = np.zeros((self.rows, s.max_response_len), np.float32)
            batch["old_logprobs"][:len(res.logprobs)] = res.logprobs
        batch = shd.make_global_batch(batch, self.mesh)
        if self.ref_params is not None:
            # the first step's policy is the reference: its log-probs are the old ones (no forward)
            first = step == 0
            batch["ref_is_old"] = shd.make_global_batch(np.full((self.rows,), first), self.mesh)
            batch["ref_logprobs"] = (shd.make_global_batch(np.zeros((self.rows, s.max_response_len), np.float32),
                                                           self.mesh) if first else
                                     self.logprob_fn(self.ref_params, batch))
        t_score = time.perf_counter() - t0 - t_sample

        host = self._metrics(res, verdicts, rewards_N, kept_prompts, out.num_filtered, t_sample, t_score)
        if self.samples_path is not None and jax.process_index() == 0:
            self._log_samples(step, res, records, kept, responses, rewards_N, host, out.num_filtered)
        return batch, host

    def _metrics(self, res, verdicts, rewards_N, kept_prompts, num_filtered, t_sample, t_score) -> dict:
        lengths_N = res.lengths.astype(np.float64)
        groups = rewards_N.reshape(-1, self.s.n) if len(rewards_N) else np.zeros((0, self.s.n))
        mean = lambda xs: float(np.mean(xs)) if len(xs) else 0.0  # noqa: E731
        return {
            "reward_mean": mean(rewards_N),
            "reward_std": float(rewards_N.std()) if len(rewards_N) else 0.0,
            "verified_acc": mean([v.verified_correct for v in verdicts]),
            "answer_acc": mean([v.answer_correct for v in verdicts]),
            "process_acc": mean([v.process_acc for v in verdicts]),
            "response_len": mean(lengths_N),
            "response_len_max": float(lengths_N.max()) if len(lengths_N) else 0.0,
            "truncated_frac": mean(~res.done),
            "zero_adv_group_frac": mean(groups.std(axis=1) == 0),
            "filtered_prompts": float(num_filtered),
            "prompt_len": mean([len(p) for p in kept_prompts]),
            "tokens": float(lengths_N.sum()),
            "sample_s": t_sample,
            "score_s": t_score,
            # calls so far rerun with the exact decode softmax (non-finite log-probs; see Sampler)
            "sampler_exact_reruns": float(self.sampler.stats["exact_reruns"]),
        }

    def _log_samples(self, step, res, records, kept, responses, rewards_N, host, num_filtered) -> None:
        digest = hashlib.sha256(np.ascontiguousarray(res.tokens).tobytes()).hexdigest()[:16]
        example = {}
        if len(responses):
            r0 = records[kept[int(res.prompt_index[0])]]
            example = {"op": r0.get("op"), "template": r0.get("template"), "response": responses[0],
                       "gold": r0.get("solution"), "reward": float(rewards_N[0])}
        line = {"step": int(step) + 1, "rollout_digest": digest, "reward_mean": host["reward_mean"],
                "verified_acc": host["verified_acc"], "filtered_prompts": num_filtered, "example": example}
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line, ensure_ascii=False) + "\n")
