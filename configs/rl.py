"""GRPO post-training configs: ``--config=configs/rl.py:<data>[,<scale>][,<reward>][,dr_grpo] --config.init_from=RUN``.

Starts from a pre-training or mid-training run (``init_from``: its run dir or ``.../checkpoints/<step>``,
or an HF directory such as a released checkpoint; default ``runs/midtrain_mid_<scale>``; the model is
read from the parent's lineage, or the HF directory's config.json, unless ``model.preset`` is set).

data (default ``op11-14``): the study's RL prompt regimes: ``op7-10``, ``op9-12``, ``op11-14``,
``op17-20``, ``uniform`` (op2-20), contexts A/B/C in thirds; ``edge`` (the study's advice: probe the
parent on ``data.edge.ops`` and keep the ops, or with ``keep_prompts`` the prompts, it fails at pass@1
but solves at pass@n; the choice goes to WORKDIR/edge.json and the lineage); context mixes ``ctxmixB<share>`` (share of
context B in percent, the rest A; 0, 1, 2, 10, 50, 100), over op2-20 unless ``data.ops`` is set.
scale (default ``cpu``):
  paper   the study: 1024 prompts x 6 rollouts per step, T 1.0, top-p 1, prompt <= 1024 and response
          <= 1024 tokens, 4 mini-batches (one pass), k3 KL 1e-3, AdamW lr 1e-6 constant, wd 0.01,
          clip 1.0, 204.8K prompts = 200 steps; rollouts in chunks of 256 prompts, decoded in chunks of
          128 steps; the update's micro-batch is the largest that fits the device (memory and speed
          only: the objective is unchanged).
  mini    one GPU: 32 prompts x 8 rollouts, responses <= 768 tokens, 60 steps, lr 1e-5.
  cpu     8 prompts x 4 rollouts, responses <= 512 tokens, 20 steps, lr 1e-5: minutes on 2 CPU cores.
  quick   4 prompts x 4 rollouts, prompts <= 512 (one padded length: one compilation), responses
          <= 128 tokens, 2 steps: the quickstart / tests.
reward (default ``outcome``): outcome, strict, mixed<α> (mixed0.5, mixed0.2), original_mixed<α>,
  original_strict (docs/metrics.md). ``dr_grpo``: Dr.GRPO (seq-sum / constant aggregation, no std normalisation).
Examples: ``configs/rl.py:op11-14,paper --config.init_from=runs/pretrain_base_paper``,
``configs/rl.py:op11-14,mixed0.5,paper``, ``configs/rl.py:ctxmixB10,cpu --config.init_from=...``.
Prompts: the generator with the RL split seed (``data.source=generator``), or a JSONL split
(``data.source=jsonl --config.data.data_dir=DIR --config.data.split=heldout``); ``data.exclude`` is a
comma-separated list of JSONL files / dirs (e.g. the eval set) whose problems RL must never see.
"""
import re

import ml_collections

from interplay_jax.config import parse_preset

SCALES = ("cpu", "quick", "mini", "paper")
DATA = ("op7-10", "op9-12", "op11-14", "op17-20", "uniform", "edge", re.compile(r"ctxmixB\d*\.?\d+"))
REWARDS = ("outcome", "strict", "original_strict", re.compile(r"(original_)?mixed\d*\.?\d+"))


def get_config(arg=None):
    p = parse_preset(arg, "configs/rl.py", data=(DATA, "op11-14"), scale=(SCALES, "cpu"),
                     reward=(REWARDS, "outcome"), variant=(("dr_grpo",), ""))
    data, scale, reward, dr = p["data"], p["scale"], p["reward"], p["variant"] == "dr_grpo"
    c = ml_collections.ConfigDict()
    c.stage = "rl"
    c.workdir = f"runs/rl_{data}_{reward}{'_drgrpo' if dr else ''}_{scale}"
    c.seed = 0
    c.tokenizer = ""                   # a tokenizer.json; "" = the default tokenizer (built once, cached)
    # parent run dir (pre- or mid-training) or its checkpoints/<step>
    c.init_from = f"runs/midtrain_mid_{'cpu' if scale == 'quick' else scale}"
    c.init_step = -1                   # parent checkpoint step (-1: its latest)
    # empty preset: the parent's model (from its lineage); other non-None fields override it
    c.model = ml_collections.ConfigDict(dict(preset="", dtype=None, param_dtype=None, remat=None, attention=None))
    c.data = ml_collections.ConfigDict(dict(
        source="generator",            # "generator" (RL split seed) | "jsonl" (data_dir/split)
        mixture=data,
        ops=(),                        # override the mixture's ops, e.g. (11, 12, 13, 14)
        modes="normalforward",
        data_dir="",
        split="heldout",
        exclude="",                    # comma-separated JSONL files/dirs never used as RL prompts
        # mixture "edge": probe the parent per op and train on the ops (or prompts) at its edge of
        # competence: strict pass@1 <= pass1_max and pass@n >= passk_min (interplay_jax/rl/edge.py)
        edge=ml_collections.ConfigDict(dict(
            ops="2-20", per_op=16, n=16, pass1_max=0.5, passk_min=0.1, keep_prompts=False,
            max_new_tokens=1024, batch_prompts=8))))
    c.rl = ml_collections.ConfigDict(dict(
        reward=reward,
        num_prompts=1024,              # prompts per step
        n=6,                           # rollouts per prompt (the GRPO group)
        temperature=1.0, top_p=1.0, top_k=0,
        max_prompt_len=1024,           # longer prompts are dropped and counted
        max_response_len=1024,         # rollouts that never stop are cut here and scored
        prompt_budget=204_800,         # prompts per epoch; total steps = budget // num_prompts
        total_steps=0,                 # > 0 overrides the budget
        num_minibatches=4,             # optimizer updates per step (one pass over the rollouts)
        micro_batch_size=0,            # rollouts per forward/backward inside a mini-batch (0: whole)
        rollout_batch_prompts=0,       # prompts per sampler call (0: all at once)
        decode_chunk=0,                # decode steps per chunk: finished rows are dropped between chunks
                                       # (0: one chunk); on CPU every decode step reads only written slots
        decode_kernel="xla",           # decode attention: "xla" (every cache slot) | "pallas" (GPU kernel:
                                       # only slots below the write pointer; not yet timed on a GPU)
        prompt_buckets=""))            # comma-separated padded prompt lengths ("": 16, 32, ..., 2048);
                                       # each bucket compiles the sampler and the update once
    c.grpo = ml_collections.ConfigDict(dict(
        clip_eps=0.2, dual_clip=3.0, kl_coef=1e-3, entropy_coef=0.0,
        loss_agg="dr_grpo" if dr else "token-mean",   # token-mean | seq-mean-token-mean | dr_grpo
        std_normalize=not dr,          # divide advantages by the group std (GRPO); False = Dr.GRPO
        dr_grpo_constant=0.0,          # Dr.GRPO divisor (0: rl.max_response_len)
        logprob_temperature=False,     # True: divide logits by rl.temperature in the loss (verl-style)
        old_logprobs="recompute"))     # "recompute" (a forward in the update) | "sampler" (the rollouts')
    c.optimizer = ml_collections.ConfigDict(dict(
        lr=1e-6, min_lr=0.0, warmup_frac=0.0, warmup_steps=0, schedule="constant",
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.log_every = 1
    c.ckpt_every = 20
    c.keep_checkpoints = 3
    c.progress = True
    if scale == "paper":
        # memory and speed only (the objective is unchanged): 256 prompts x 6 per sampler call (a KV
        # cache of ~19 GiB in bf16), decode in chunks of 256 steps (finished rows dropped between
        # chunks: 1.4x on an H200); micro_batch_size 0 = the largest micro-batch whose update fits
        c.rl.rollout_batch_prompts = 256
        c.rl.decode_chunk = 256
    elif scale == "mini":
        # micro-batches of 64 rollouts: the update compiles to ~11 GiB on an H200 (128: ~22 GiB)
        c.rl.update(dict(num_prompts=32, n=8, max_response_len=768, prompt_budget=32 * 60, num_minibatches=2,
                         decode_chunk=128, micro_batch_size=64))
        c.optimizer.lr = 1e-5
        c.ckpt_every = 10
    elif scale == "cpu":
        c.rl.update(dict(num_prompts=8, n=4, max_response_len=512, prompt_budget=8 * 20, num_minibatches=2))
        c.optimizer.lr = 1e-5
        c.ckpt_every = 10
    elif scale == "quick":
        c.rl.update(dict(num_prompts=4, n=4, max_prompt_len=512, max_response_len=128, prompt_budget=4 * 2,
                         num_minibatches=2, prompt_buckets="512"))
        c.optimizer.lr = 1e-5
        c.ckpt_every = 1
    return c
