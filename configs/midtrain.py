"""Mid-training configs: ``--config=configs/midtrain.py[:mid][,<scale>] [--config.init_from=RUN_DIR]``.

Continues a pre-trained run (``init_from``: its run dir, or ``.../checkpoints/<step>``; params only,
fresh optimizer and schedule; default: the pretrain run of the same scale,
``runs/pretrain_base_<scale>``, or an HF directory such as a released checkpoint, whose config.json
then gives the architecture and whose tokenizer.json is the default tokenizer) with the same objective:
mixture ``mid`` (20% op2-10 + 80% op11-14), lr 1e-4, warmup 15%, cosine to 3e-5 (the release's
mid-training config scripts/composition/op-difficulty-10B/pt-diff2_10-tok10B-lr1e-4-bs512k-schedcos-
minlr3e-5/id2-10_0.2easy_0.3medium_0.5hard_cpt11-14.yaml, commit c49c55d: learning_rate line 33,
min_lr 38, warmup_ratio 39). Scales as in configs/pretrain.py:
  paper  paper100m, 256 x 2048 batch, 2.10B tokens (4,000 steps: the 2.10B budget of the
         compute-matched study at beta = 0; set --config.total_tokens for the others);
  mini   the small model, 1,000 steps of 32 x 1024;
  cpu    tiny, 100 steps of 8 x 1024 (minutes).
"""
from interplay_jax.config import load_config, parse_preset

SCALES = ("cpu", "mini", "paper")


def get_config(arg=None):
    p = parse_preset(arg, "configs/midtrain.py", mixture=(("mid",), "mid"), scale=(SCALES, "cpu"))
    scale = p["scale"]
    c = load_config(f"pretrain.py:{scale}", lock=False)
    c.stage = "midtrain"
    c.mixture = p["mixture"]
    c.workdir = f"runs/midtrain_{p['mixture']}_{scale}"
    c.init_from = f"runs/pretrain_base_{scale}"
    c.optimizer.warmup_frac = 0.15
    if scale == "paper":
        c.optimizer.lr = 1e-4                    # the release's mid-training config (docstring)
        c.eval_every = 250
        c.total_tokens = 4000 * 256 * 2048
    elif scale == "mini":
        c.total_tokens = 32 * 1024 * 1000
    else:
        c.total_tokens = 8 * 1024 * 100          # 100 steps
    return c
