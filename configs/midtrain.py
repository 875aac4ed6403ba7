"""Mid-training configs: ``--config=configs/midtrain.py:<mixture>[,<scale>] --config.init_from=RUN_DIR``.

Continues a pre-trained run (``init_from``: its run dir, or ``.../checkpoints/<step>``; params only,
fresh optimizer and schedule) with the same objective (SPEC §4): mixture ``mid`` (20% op2-10 + 80%
op11-14), lr 1e-4, warmup 15%, cosine to 3e-5. Scales as in configs/pretrain.py:
``paper`` = paper100m, 256 x 2048 batch, 2.10B tokens (4,000 steps: the 2.10B budget of the
compute-matched study, beta = 0; set --config.total_tokens for the others) ; ``cpu`` = tiny, minutes.
"""
import importlib.util
import pathlib

_spec = importlib.util.spec_from_file_location("_pretrain_config", pathlib.Path(__file__).with_name("pretrain.py"))
_pretrain = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_pretrain)


def get_config(arg=None):
    c = _pretrain.train_config("midtrain", arg, "mid")
    _, scale = _pretrain.parse_arg(arg, "mid")
    c.optimizer.warmup_frac = 0.15
    if scale == "paper":
        c.optimizer.lr = 1e-4
        c.eval_every = 250
        c.total_tokens = 4000 * 256 * 2048
    else:
        c.total_tokens = 8 * 1024 * 100          # 100 steps
    return c
