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


INTERRUPTED_EXIT = 130


def exit_interrupted(message: str) -> None:
    """Print ``message`` on stderr and end the process with status 130, skipping the interpreter's
    teardown. The stage has already saved its checkpoint and closed its files; what can still be
    running is device work an interrupted evaluation dispatched and never waited for. Tearing the
    runtime down under it crashed the process once (a segfault after this message, seen in CI), so
    an interrupted run ends here instead, after multiprocessing's own exit work (data workers)."""
    import sys
    print(message, file=sys.stderr)
    mp = sys.modules.get("multiprocessing.util")
    if mp is not None and hasattr(mp, "_exit_function"):
        mp._exit_function()        # what multiprocessing runs at exit: join workers, unlink semaphores
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(INTERRUPTED_EXIT)
