"""A run = one stage config (file, preset, overrides) + the runs it depends on.

An experiment definition (``experiments/e1.py`` ... at the repo root, loaded by path like a config
file) exposes ``runs(scale) -> list[Run]``; the order of the list is irrelevant, the DAG comes from
``parent`` (init_from), ``compare`` (eval inputs) and ``refs`` (e.g. the tokenizer run).
Run directories are ``<root>/<experiment>/<run name>``, named so a person can tell what each is.
"""
from __future__ import annotations

import ast
import dataclasses
import pathlib
import shlex

from interplay_jax import config as config_lib
from interplay_jax.errors import ConfigError

EXPERIMENTS_DIR = config_lib.REPO / "experiments"
EXPERIMENTS = ("E1", "E2", "E3", "E4", "E5", "E7")
ALIASES = {"E6": "E5"}   # E5 and E6 are one grid (context share in RL) at two readouts
SCALES = ("mini", "paper", "cpu")      # every experiment's; a definition may add its own (its ``SCALES``)
DONE_MARKER = "EXPERIMENT_RUN_DONE"


@dataclasses.dataclass
class Run:
    name: str                          # directory name, e.g. "rl_op11-14_from_base"
    config: str                        # file in configs/, e.g. "rl.py"
    arg: str = ""                      # the preset after ':'
    overrides: dict = dataclasses.field(default_factory=dict)  # dotted key -> value
    parent: str | None = None          # run whose checkpoint this one starts from (init_from)
    compare: tuple = ()                # eval runs: names of the runs whose checkpoints are evaluated
    note: str = ""                     # what this run is, for people
    refs: dict = dataclasses.field(default_factory=dict)  # config key -> (run name, path inside it)

    def deps(self) -> list[str]:
        out = ([self.parent] if self.parent else []) + list(self.compare)
        return out + [name for name, _ in self.refs.values() if name not in out]


def experiment_module(name: str):
    """The definition module of experiment ``name`` (``experiments/<name>.py``)."""
    key = ALIASES.get(name.upper(), name.upper())
    if key not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS + tuple(ALIASES))}")
    return config_lib.load_module(EXPERIMENTS_DIR / f"{key.lower()}.py")


def expand(name: str, scale: str) -> list[Run]:
    """The runs of experiment ``name`` at ``scale`` in dependency order."""
    module = experiment_module(name)
    known = getattr(module, "SCALES", SCALES)
    if scale not in known:
        raise ConfigError(f"unknown scale {scale!r} for {name.upper()}; known: {', '.join(known)}")
    runs = module.runs(scale)
    return topo_order(runs)


def apply_overrides(runs: list[Run], specs: list[str]) -> None:
    """``RUN.KEY=VALUE`` strings (VALUE parsed as a Python literal when it is one) into the runs."""
    by_name = {r.name: r for r in runs}
    for spec in specs:
        target, eq, raw = spec.partition("=")
        name, dot, key = target.partition(".")
        if not (eq and dot and key):
            raise ConfigError(f"--override {spec!r}: expected RUN.KEY=VALUE, e.g. base.total_steps=1500")
        if name not in by_name:
            raise ConfigError(f"--override {spec!r}: no run named {name!r}; runs: {', '.join(by_name)}")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
        by_name[name].overrides[key] = value


def topo_order(runs: list[Run]) -> list[Run]:
    by_name = {}
    for r in runs:
        if r.name in by_name:
            raise ConfigError(f"two runs are named {r.name!r}")
        by_name[r.name] = r
    order, state = [], {}

    def visit(r: Run, path: tuple):
        if state.get(r.name) == "done":
            return
        if state.get(r.name) == "active":
            raise ConfigError(f"dependency cycle: {' -> '.join(path + (r.name,))}")
        state[r.name] = "active"
        for d in r.deps():
            if d not in by_name:
                raise ConfigError(f"run {r.name!r} depends on unknown run {d!r}")
            visit(by_name[d], path + (r.name,))
        state[r.name] = "done"
        order.append(r)

    for r in runs:
        visit(r, ())
    return order


def resolved_overrides(run: Run, root: pathlib.Path) -> dict:
    """The run's overrides plus workdir / init_from / checkpoints resolved to directories."""
    out = dict(run.overrides)
    out["workdir"] = str(root / run.name)
    for key, (name, rel) in run.refs.items():
        out[key] = str(root / name / rel)
    if run.parent:
        out["init_from"] = str(root / run.parent)
    if run.compare:
        out["checkpoints"] = ",".join(str(root / c) for c in run.compare)
    return out


def load_config(run: Run, root: pathlib.Path):
    """Build the run's ml_collections config exactly as the command line would."""
    path = config_lib.CONFIGS_DIR / run.config
    if not path.is_file():
        raise ConfigError(f"run {run.name!r}: no config file {path}")
    spec = run.config + (f":{run.arg}" if run.arg else "")
    config = config_lib.load_config(spec, lock=False)
    for key, value in resolved_overrides(run, root).items():
        add_model_field(config, key)
        config_lib.override(config, key, value, where=f"run {run.name!r}: ")
    config.lock()
    return config


def add_model_field(config, key: str) -> None:
    """Let ``model.<field>`` override any ModelConfig field (e.g. ``base.model.num_layers=12``) even
    when the config's model block names only a preset: the missing field is added (as None) so
    :func:`interplay_jax.config.override` can set it; the model validates the value."""
    from interplay_jax.model.qwen2 import ModelConfig

    head, _, field = key.partition(".")
    if head != "model" or "." in field or "model" not in config or field in config.model:
        return
    if field in {f.name for f in dataclasses.fields(ModelConfig)}:
        with config.unlocked():
            config.model[field] = None


def command(run: Run, root: pathlib.Path) -> str:
    """One shell command that runs ``run`` (for a cluster scheduler)."""
    cfg = f"configs/{run.config}" + (f":{run.arg}" if run.arg else "")
    parts = ["python", "-m", "interplay_jax.main", f"--config={cfg}"]
    parts += [f"--config.{k}={','.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
              for k, v in resolved_overrides(run, root).items()]
    return " ".join(shlex.quote(p) for p in parts)
