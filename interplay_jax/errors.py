"""User-facing errors: anything the user can fix (bad config, bad data, missing files).

``interplay_jax.main`` turns these into one line on stderr and exit status 2, never a traceback.
This module imports nothing heavy so the task layer (no JAX) can raise these too.
``INTERPLAY_VERBOSE=1`` (``main --verbose``) shows the traceback behind such a line, and the logs
and warnings of the libraries below (orbax) that are otherwise kept quiet.
"""
import os

VERBOSE_ENV = "INTERPLAY_VERBOSE"


def verbose() -> bool:
    """Whether the user asked for tracebacks (``INTERPLAY_VERBOSE`` set and not "0")."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


class UserError(Exception):
    """An error caused by the user's input; its message is shown as one line."""


class ConfigError(UserError):
    """A configuration that cannot run (unknown key, clashing sizes, missing parent...)."""


class DataError(UserError):
    """Malformed input data (e.g. a bad JSONL line: the message names file and line)."""
