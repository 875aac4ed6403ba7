import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
REFERENCE = SHARED / "reference"


@pytest.fixture(scope="session")
def reference_dir():
    """../shared/reference (CI has it; a plain clone may not: skip then)."""
    if not REFERENCE.is_dir():
        pytest.skip("../shared/reference is not present")
    return REFERENCE


def load_config(spec, **overrides):
    """A config as the command line builds it (``"pretrain.py:base,cpu"``), unlocked, with dotted
    overrides given as keyword arguments with ``__`` for dots (``data__num_threads=0``)."""
    from interplay_jax.config import load_config as load
    return load(spec, {k.replace("__", "."): v for k, v in overrides.items()}, lock=False)
