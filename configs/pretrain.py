"""Pre-training configs: ``--config=configs/pretrain.py[:<mixture>][,<scale>]``.

mixture (default ``base``): base (20/30/50 over op2-4/5-7/8-10), hard0.1, hard5, hard20, hard33
(uniform op2-10), hard50, ctxB0, ctxB0.1, ctxB1, ctxB10 (op2-20 context A + op2 context B), or any
other preset of interplay_jax.task.mixture (docs/mixtures.md); ``--config.mixture`` also takes a JSON
list of components (``'[{"ops": [2, 3], "weight": 1, "contexts": ["A"]}]'``).
scale (default ``cpu``):
  paper  the study's numbers, as in the release's pre-training config of the paper's base model
         (README at commit 04be88c: "The underlying pre-training config is" R =
         scripts/composition/op-difficulty-10B/pt-diff2_10-tok10B-lr1e-4-bs512k-schedcos-minlr3e-5/
         id2-10_0.2easy_0.3medium_0.5hard.yaml, commit c49c55d):
         model paper100m (R line 2: model_configs/qwen2_100M), bf16 (R 41); 10B tokens, one epoch
         (R 56, 35); 256 x 2048 rows = 512K tokens (R 31-32: 64 per GPU x 4 GPUs, cutoff_len 2048 R 14);
         peak lr 1e-4 (R 33), cosine to min lr 3e-5 (R 36-38), warmup 5% (R 39), wd 0.1 (R 34),
         clip 1.0 (R 40); AdamW (0.9, 0.999, 1e-8) are the HF Trainer defaults (not in R).
         The paper text says peak lr 2e-4, as do the release's 5B-token op2-14 configs of commit
         c6676bc (LLaMA-Factory/examples/difficulty/*.yaml, line 31-33; one 3e-4), of which
         debug.yaml loads the 45M model (line 2; preset release45m): --config.optimizer.lr=2e-4
         [--config.model.preset=release45m].
  mini   one GPU: the ``small`` model (bf16), 32 x 1024 rows, 2,000 steps, lr 1e-3 -> 3e-4.
  cpu    the ``tiny`` model, 8 x 1024 batch, 200 steps, lr 1e-3 -> 3e-4 (10x the paper's: a tiny
         model in a few hundred steps), finishes in minutes on 2 CPU cores.
Examples: ``configs/pretrain.py`` (base,cpu), ``configs/pretrain.py:hard50,paper``,
``configs/pretrain.py:ctxB1,cpu --config.workdir=runs/ctxB1``.
Data: the generator on the fly (``data.source=generator``) or files of the generate stage / the
published dataset (``data.source=jsonl --config.data.data_dir=DIR``). ``tokenizer``: a tokenizer.json
(make one with configs/tokenizer.py); empty = the default tokenizer, built once and cached.
"""
import ml_collections

from interplay_jax.config import parse_preset
from interplay_jax.task.mixture import PRESETS as MIXTURES

SCALES = ("cpu", "mini", "paper")


def train_config(stage: str, mixture: str, scale: str) -> ml_collections.ConfigDict:
    """The fields of the pretrain / midtrain stages (configs/midtrain.py changes its own)."""
    c = ml_collections.ConfigDict()
    c.stage = stage
    c.workdir = f"runs/{stage}_{mixture}_{scale}"
    c.seed = 0
    c.mixture = mixture
    c.modes = "normalforward"          # comma-separated default mode mix of the mixture
    c.tokenizer = ""                   # a tokenizer.json; "" = the default tokenizer (built once, cached)
    c.data = ml_collections.ConfigDict(dict(
        source="generator",            # "generator" (on the fly) | "jsonl" (data_dir in the published layout)
        data_dir="",
        exclude="",                    # comma-separated JSONL files/dirs never to train on (e.g. eval sets)
        buffer_docs=256,               # first-fit-decreasing packing window (documents)
        num_threads=0,                 # grain read threads per process; 0 reads in the packing thread: the
                                       # generator and JSON parsing hold the GIL, so a reader thread only
                                       # contends with the packer (3x slower on this CPU, BUILD_NOTES)
        workers=8,                     # worker processes generating, tokenizing and packing (0: in-process);
                                       # a run resumes only with the count it started with
        worker_buffer=2,               # batches each worker prepares ahead
        prefetch=2))                   # batches put on the device ahead of the step
    c.init_from = ""                   # parent run dir (or its checkpoints/<step>): params only
    c.init_step = -1                   # parent checkpoint step (-1: its latest)
    c.model = ml_collections.ConfigDict(dict(preset="paper100m", dtype="bfloat16"))
    c.seq_len = 2048
    c.batch_size = 256                 # global rows per optimizer step
    c.per_device_batch = 32            # rows per device per micro-step: grad accumulation follows
                                       # (256 / (32 x 1 GPU) = 8 micro-steps; 1 on 8 GPUs); 0: use grad_accum_steps
    c.grad_accum_steps = 1
    c.total_tokens = 10_000_000_000
    c.total_steps = 0                  # > 0 overrides total_tokens
    c.document_mask = False            # the original: plain causal attention across packed docs
    c.optimizer = ml_collections.ConfigDict(dict(  # the release's paper run (see the docstring)
        lr=1e-4, min_lr=3e-5, warmup_frac=0.05, warmup_steps=0, schedule="cosine",
        b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1, grad_clip=1.0))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.log_every = 10
    c.ckpt_every = 1000
    c.keep_checkpoints = 3
    c.eval_every = 500
    c.eval = ml_collections.ConfigDict(dict(
        buckets="ID:2-10,OOD-edge:11-14,OOD-hard:15-20",  # held-out loss per op bucket
        per_bucket=256, batch_size=32,
        sample_prompts=16,             # small-n pass@k on held-out prompts per bucket (0: off)
        sample_n=8, sample_max_new_tokens=1024))
    c.peak_flops = 990e12              # per device (H100 bf16 dense), for MFU
    c.progress = True
    if scale == "mini":
        c.model = ml_collections.ConfigDict(dict(preset="small", dtype="bfloat16"))
        c.seq_len = 1024
        c.batch_size = 32
        c.total_tokens = 32 * 1024 * 2000        # 2,000 steps
        c.ckpt_every = 250
        c.eval_every = 250
        c.eval.per_bucket = 64
        c.eval.sample_prompts = 0
        c.optimizer.lr = 1e-3
        c.optimizer.min_lr = 3e-4
    elif scale == "cpu":
        c.model = ml_collections.ConfigDict(dict(preset="tiny", dtype="float32"))
        c.seq_len = 1024
        c.batch_size = 8
        c.per_device_batch = 0
        c.data.workers = 0
        c.total_tokens = 8 * 1024 * 200          # 200 steps
        c.ckpt_every = 50
        c.eval_every = 50
        c.eval.per_bucket = 16
        c.eval.batch_size = 8
        c.eval.sample_prompts = 0               # on with e.g. --config.eval.sample_prompts=2
        c.eval.sample_n = 4
        c.eval.sample_max_new_tokens = 192
        # fp32 peak of a 2-core AVX-512 CPU (2 cores x 2.6 GHz x 2 FMA units x 16 lanes x 2 flops; a jitted
        # 1024^3 matmul reaches 320 GFLOP/s on the build machine): MFU read >100% against the old 1e11
        c.peak_flops = 3.3e11
        # a 1M-parameter model learns little in 200 steps at the paper's 1e-4: 10x (both stages)
        c.optimizer.lr = 1e-3
        c.optimizer.min_lr = 3e-4
    return c


def get_config(arg=None):
    p = parse_preset(arg, "configs/pretrain.py", mixture=(tuple(MIXTURES), "base"), scale=(SCALES, "cpu"))
    return train_config("pretrain", p["mixture"], p["scale"])
