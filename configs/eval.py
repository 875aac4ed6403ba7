"""Evaluation configs: ``--config=configs/eval.py[:preset] --config.checkpoints=DIR1,DIR2``.

Each checkpoint is one of our run dirs (lineage.json + checkpoints/, latest step unless
``--config.step``) or an HF Qwen2 directory (config.json + safetensors + tokenizer.json), e.g. the
study's released models; either way the checkpoint's own record (lineage / config.json) gives the
architecture, so a 103M (paper100m) or 45M (release45m, head dim 72) checkpoint needs no preset. All are scored on the same eval set; the first is the base of the delta
tables. Outputs in WORKDIR: results.json (combined), report.md, passk_curves.png, per_op.png,
error_types.png, deltas.png, and WORKDIR/<name>/{samples.jsonl, results.json} per checkpoint.
Rerunning an interrupted evaluation resumes from samples.jsonl.

Presets:
  paper  (default) the study's protocol: ops 2..20, 200 prompts/op (contexts A/B/C round-robin,
         forward), n = 128 samples at T = 0.7, top-p 1, <= 1024 new tokens, stop at </answer>.
  mini   ops 2..20, 16 prompts/op, n = 16, <= 768 new tokens (one GPU, minutes).
  cpu    a few ops and prompts, n = 4, short generations: minutes on 2 CPU cores.
Eval set: ``eval.source=generator`` (own seed namespace; ``eval.exclude`` = training JSONL files /
dirs whose hashes are excluded) or ``eval.source=jsonl --config.eval.files=val/`` (the published
``val/opN-200.jsonl`` / ``test/opN-1k.jsonl``; ``eval.per_op`` caps prompts per op).
Buckets: ``--config.buckets="ID:2-10,OOD-edge:11-14,OOD-hard:15-20"``.
"""
import ml_collections

from interplay_jax.config import parse_preset

SCALES = ("paper", "mini", "cpu")


def get_config(arg=None):
    preset = parse_preset(arg, "configs/eval.py", scale=(SCALES, "paper"))["scale"]
    c = ml_collections.ConfigDict()
    c.stage = "eval"
    c.workdir = f"runs/eval_{preset}"
    c.seed = 0
    c.checkpoints = f"runs/pretrain_base_{preset}"  # comma-separated run dirs / HF dirs (default: the
                                       # pre-training run of the same scale)
    c.names = ""                       # optional comma-separated display names (default: dir names)
    c.step = -1                        # checkpoint step for our run dirs (-1: latest)
    c.tokenizer = ""                   # override the tokenizer.json (default: the checkpoint's)
    c.model_dtype = ""                 # override the compute dtype (e.g. float32 on CPU)
    c.eval = ml_collections.ConfigDict(dict(
        source="generator",            # "generator" | "jsonl"
        files="",                      # jsonl: comma-separated files / directories
        ops="2-20",                    # "2-20" or "2,5,11" (ranges allowed)
        contexts="A,B,C",
        modes="normalforward",         # comma-separated: normalforward, forwardreverse
        per_op=200,
        exclude=""))                   # training JSONL files / dirs whose problems are excluded
    c.sampling = ml_collections.ConfigDict(dict(
        n=128, temperature=0.7, top_p=1.0, top_k=0, max_new_tokens=1024, max_prompt_len=1024,
        batch_prompts=8))              # prompts per sampler call (rows = batch_prompts * n)
    c.buckets = "ID:2-10,OOD-edge:11-14,OOD-hard:15-20"
    c.gold_nll = True
    c.progress = True
    if preset == "mini":
        c.eval.per_op = 16
        c.sampling.n = 16
        c.sampling.max_new_tokens = 768
    elif preset == "cpu":
        c.eval.ops = "2,4,11,15"
        c.eval.per_op = 3
        c.sampling.n = 4
        c.sampling.max_new_tokens = 128
        c.sampling.batch_prompts = 4
    return c
