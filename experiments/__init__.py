"""The study's experiments (SPEC §7) as run grids: ``python -m interplay_jax.experiments.run E1 --scale=mini``.

Each module exposes ``runs(scale) -> list[Run]`` (scale ``paper`` or ``mini``) and ``PUBLISHED``,
the study's numbers the report prints beside ours.
"""
