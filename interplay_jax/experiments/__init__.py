"""Experiment grids (the study's E1-E7) as DAGs of runs: the machinery (``dag``, ``grid``, ``run``,
``report``). The definitions live in the repo's top-level ``experiments/`` directory, loaded by path
like config files."""
