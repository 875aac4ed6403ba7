"""Quickstart: ``python -m interplay_jax.main --config=configs/quickstart.py [--config.workdir=DIR]``.

Runs generate -> tokenizer -> pretrain -> midtrain with a tiny model on 2 CPU cores in a few
minutes, each stage in ``WORKDIR/<stage>/`` (rerun the same command to resume / skip finished
stages), then prints where everything went (checkpoints, TensorBoard, held-out losses, lineage).
The stages use the full configs of configs/{generate,tokenizer,pretrain,midtrain}.py, shrunk:
  generate   300 train + 20 held-out + 20 eval problems of the base mixture (JSONL, published layout)
  tokenizer  BPE trained on those train documents
  pretrain   tiny model on the generated JSONL (held-out excluded by hash), 40 steps of 4 x 1024
  midtrain   from the pretrain checkpoint, the ``mid`` mixture generated on the fly, 20 steps
  rl         GRPO from the midtrain checkpoint on op11-14 prompts (quick preset: 2 steps of 4 x 4 rollouts)
  eval       pass@k of every checkpoint (cpu preset: 4 ops x 3 prompts x 4 samples): WORKDIR/eval/results.json,
             report.md and figures
Override any sub-stage field, e.g. ``--config.pretrain.total_steps=100``.
"""
import ml_collections

from interplay_jax.config import load_config


def _load(name, arg):
    return load_config(f"{name}.py:{arg}", lock=False)


def _shrink(c, steps, ckpt_every):
    c.model.preset = "tiny"
    c.seq_len = 1024
    c.batch_size = 4
    c.total_steps = steps
    c.log_every = 5
    c.ckpt_every = ckpt_every
    c.eval_every = ckpt_every
    c.eval.per_bucket = 8
    c.eval.batch_size = 4
    c.eval.buckets = "ID:2-10,OOD-edge:11-14"
    return c


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.stage = "pipeline"
    c.workdir = "runs/quickstart"
    c.seed = 0
    c.stages = "generate,tokenizer,pretrain,midtrain,rl,eval"

    c.generate = _load("generate", "tiny")

    c.tokenizer = _load("tokenizer", "tiny")
    c.tokenizer.source = "jsonl"
    c.tokenizer.jsonl = "{workdir}/generate/train/**/*.jsonl"
    c.tokenizer.num_docs = 0

    c.pretrain = _shrink(_load("pretrain", "base,cpu"), steps=40, ckpt_every=20)
    c.pretrain.tokenizer = "{workdir}/tokenizer/tokenizer.json"
    c.pretrain.data.source = "jsonl"
    c.pretrain.data.data_dir = "{workdir}/generate"

    c.midtrain = _shrink(_load("midtrain", "mid,cpu"), steps=20, ckpt_every=10)
    c.midtrain.tokenizer = "{workdir}/tokenizer/tokenizer.json"
    c.midtrain.init_from = "{workdir}/pretrain"
    c.midtrain.eval.update(dict(sample_prompts=1, sample_n=2, sample_max_new_tokens=96))  # sampled pass@k in TB

    c.rl = _load("rl", "op11-14,quick")
    c.rl.tokenizer = "{workdir}/tokenizer/tokenizer.json"
    c.rl.init_from = "{workdir}/midtrain"
    c.rl.data.exclude = "{workdir}/generate"

    c.eval = _load("eval", "cpu")
    c.eval.checkpoints = "{workdir}/pretrain,{workdir}/midtrain,{workdir}/rl"
    c.eval.names = "pretrain,midtrain,rl"
    c.eval.eval.exclude = "{workdir}/generate"
    return c
