"""Entry point: ``python -m interplay_jax.main --config=configs/<x>.py[:preset] --config.a.b=v``.

The config's ``stage`` field picks the stage module ``interplay_jax.stages.<stage>``, whose
``run(config)`` does the work. User errors (bad config, bad data) print one line and exit 2.
"""
from __future__ import annotations

import importlib
import sys

from absl import app, flags
from ml_collections import config_flags

from interplay_jax import config as config_lib
from interplay_jax.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file[:preset].",
                                          lock_config=True)



def run_config(config):
    """Validate ``config`` and run its stage; returns whatever the stage returns."""
    config_lib.validate(config)
    stage = config.stage
    module_name = "train" if stage in ("pretrain", "midtrain") else stage
    module = importlib.import_module(f"interplay_jax.stages.{module_name}")
    return module.run(config)


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = _CONFIG.value
    if config is None:
        print("error: --config=configs/<x>.py[:preset] is required", file=sys.stderr)
        sys.exit(2)
    try:
        run_config(config)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def main():
    app.run(_main)


if __name__ == "__main__":
    main()
