"""Entry point: ``python -m interplay_jax.main --config=configs/<x>.py[:preset] --config.a.b=v``.

The config's ``stage`` field picks the stage (interplay_jax.stages), which validates the config and
runs. User errors (bad config, bad data, a corrupt checkpoint, a workdir in use) print one line and
exit 2; an interrupted run (SIGINT / SIGTERM, its checkpoint saved) exits 130. ``--verbose`` (or
``INTERPLAY_VERBOSE=1``) prints the traceback behind the line.
"""
from __future__ import annotations

import os
import re
import sys
import traceback

from absl import app, flags
from ml_collections import config_flags

from interplay_jax.errors import VERBOSE_ENV, UserError, exit_interrupted, verbose
from interplay_jax.stages import run_config

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file[:preset].",
                                          lock_config=True)
_VERBOSE = flags.DEFINE_bool("verbose", False, "On an error, print the traceback behind the one-line "
                             "message (same as INTERPLAY_VERBOSE=1).")


def _main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    if _VERBOSE.value:
        os.environ[VERBOSE_ENV] = "1"
    config = _CONFIG.value
    if config is None:
        print("error: --config=configs/<x>.py[:preset] is required", file=sys.stderr)
        sys.exit(2)
    try:
        run_config(config)
    except UserError as e:
        if verbose():
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        if verbose():
            traceback.print_exc()
        exit_interrupted("interrupted: rerun the same command to resume")


_WHOLE_SCI = re.compile(r"^[+]?\d+(\.\d+)?[eE]\+?\d+$")


def _integral_literals(argv):
    """``--config.total_tokens=2.1e9`` -> ``2100000000``: a token budget reads best in scientific
    notation but is an int field; an integral literal in that form is written out in digits (which a
    float field accepts as well). Other values are left as they are."""
    out = []
    for a in argv:
        key, eq, value = a.partition("=")
        if key.startswith("--config.") and eq and _WHOLE_SCI.match(value):
            number = float(value)
            if number.is_integer() and number <= 2 ** 53:   # exact in a float
                a = f"{key}={int(number)}"
        out.append(a)
    return out


def _parse_flags(argv):
    """absl's flag parsing, but a bad --config (unknown key such as --config.optimizer.lrr=1, a
    value of the wrong type, an unknown preset) is one line on stderr and exit 2."""
    try:
        return flags.FLAGS(_integral_literals(argv))
    except UserError as e:                      # e.g. an unknown preset word
        print(f"error: bad --config: {e}", file=sys.stderr)
        sys.exit(2)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        text = str(e).encode().decode("unicode_escape") if "\\n" in str(e) else str(e)
        lines = [ln.strip(" '\"") for ln in text.splitlines() if ln.strip(" '\"")]
        if isinstance(e, (AttributeError, KeyError)):
            msg = f"unknown config key {lines[0]!r}" + (f" ({lines[1]})" if len(lines) > 1 else "")
        else:
            msg = lines[-1] if lines else type(e).__name__
        print(f"error: bad --config: {msg}", file=sys.stderr)
        sys.exit(2)


def main():
    app.run(_main, flags_parser=_parse_flags)


if __name__ == "__main__":
    main()
