"""Experiment grids (the study's E1-E7) as DAGs of runs; definitions live in the top-level
``experiments/`` package, the machinery here (``dag``, ``run``, ``report``)."""
