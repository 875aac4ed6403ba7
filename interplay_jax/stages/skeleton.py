"""The skeleton every training stage (pretrain, midtrain, rl) runs on.

A stage's ``run(config)`` reads top to bottom:

    run = StageRun(config)                      # run dir, logs, distributed, host settings, mesh, checkpointer
    start = run.start(abstract, shardings, tx, fresh=...)   # resume | init_from params | fresh
    if run.finished(start, steps): return run.previous_summary()
    run.write_lineage(start, model_cfg, tokenizer=...)
    result = Loop(settings, **run.hooks(start), eval_fn=...).run(step_fn, start.state, batches, ...)
    return run.finish(result, steps, model_cfg, ...)

Run directory: ``lineage.json`` (stage, config, parent, model, tokenizer), ``checkpoints/``, ``tb/``
(TensorBoard), ``summary.json`` (written only when the run finished), ``.lock`` (one process per
workdir: a second one is refused in one line; a killed run's lock is taken over).
Resume takes the newest checkpoint that reads and verifies; a bad one is reported in one line and
moved to ``checkpoints/corrupt-<step>/``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging as absl_logging

from interplay_jax import checkpoint as ck
from interplay_jax import host
from interplay_jax.errors import ConfigError
from interplay_jax.sampling.policy import is_hf_dir, load_params
from interplay_jax.files import file_digest
from interplay_jax.task.tokenizer import Tokenizer, default_tokenizer_path
from interplay_jax.train import sharding as shd
from interplay_jax.train.loop import ScalarWriter

SUMMARY_FILE = "summary.json"


def quiet_logs() -> None:
    """orbax / absl log every checkpoint step at INFO: keep the console to our own lines."""
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("absl").setLevel(logging.WARNING)


def load_tokenizer(config) -> tuple[Tokenizer, dict]:
    """The config's ``tokenizer`` (a tokenizer.json); when it is empty, the tokenizer.json of an HF
    ``init_from`` directory (a released checkpoint comes with its own), else the default tokenizer
    (built once and cached). Returns (tokenizer, {"path", "sha256"}) for the lineage."""
    path = str(config.get("tokenizer", "") or "")
    init_from = str(config.get("init_from", "") or "")
    if not path and init_from and is_hf_dir(init_from) and (pathlib.Path(init_from) / "tokenizer.json").is_file():
        path = str(pathlib.Path(init_from) / "tokenizer.json")
    if not path:
        path = str(default_tokenizer_path(progress=bool(config.get("progress", True))))
    p = pathlib.Path(path)
    if p.is_dir():
        p = p / "tokenizer.json"
    if not p.is_file():
        raise ConfigError(f"tokenizer {p} does not exist (make one with configs/tokenizer.py, or leave "
                          f"--config.tokenizer empty for the default one)")
    return Tokenizer.load(p), {"path": str(p.absolute()), "sha256": file_digest(p)}


@dataclasses.dataclass
class Start:
    state: Any                 # the train state {step, params, opt_state}
    step: int                  # steps already done
    data_state: Any            # the data iterator's checkpointed state (resume only)
    parent: dict | None        # {run_dir, step} of the run this one started from


class StageRun:
    """The run directory, mesh and checkpointer of one training stage (see the module docstring)."""

    def __init__(self, config, stage: str | None = None):
        quiet_logs()
        self.t0 = time.time()
        self.config = config
        self.stage = str(stage or config.stage)
        self.workdir = pathlib.Path(str(config.workdir)).absolute()
        self.workdir.mkdir(parents=True, exist_ok=True)
        shd.initialize_distributed(config.get("distributed"))
        host.configure()  # on CPU: each program's temporary block stays in the heap (interplay_jax/host.py)
        self.mesh = shd.mesh_from_config(config.get("mesh"))
        self.is_main = jax.process_index() == 0
        self.lock = ck.lock_workdir(self.workdir, f"{self.stage} run") if self.is_main else None
        self.checkpointer = ck.Checkpointer(self.workdir, max_to_keep=int(config.keep_checkpoints))
        self.tb_dir = self.workdir / "tb"
        self.writer = None

    # ------------------------------------------------------------------ state
    def start(self, abstract_state, shardings, tx, fresh: Callable[[], Any] | None = None) -> Start:
        """Resume from this run's newest good checkpoint; else the params of ``init_from`` (a run dir or
        one of its checkpoints, verified, or an HF directory) with a fresh optimizer; else ``fresh()``."""
        target = ck.abstract_target(abstract_state, shardings)
        if self.checkpointer.latest_step() is not None:
            step, state, data_state, meta = self._restore_newest_good(target)
            print(f"{self.stage}: resuming {self.workdir} from step {step}")
            return Start(state, step, data_state, meta.get("parent"))
        init_from = str(self.config.get("init_from", "") or "")
        if init_from and is_hf_dir(init_from):
            return self._start_from_hf(init_from, target, shardings, tx)
        if init_from:
            init_step = int(self.config.get("init_step", -1))
            try:
                params, prun, pstep = ck.restore_params(init_from, target=target["params"],
                                                        step=init_step if init_step >= 0 else None)
            except ck.CorruptCheckpoint as e:
                raise ck.CorruptCheckpoint(e.step_dir, f"{e.reason} (init_from; pick another step of it with "
                                                       f"--config.init_step)") from None
            state = {"step": jax.device_put(np.zeros((), np.int32), shardings["step"]), "params": params,
                     "opt_state": jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)}
            print(f"{self.stage}: starting from {prun} step {pstep} (params; fresh optimizer and schedule)")
            return Start(state, 0, None, {"run_dir": str(prun), "step": int(pstep)})
        if fresh is None:
            raise ConfigError(f"{self.stage}: init_from is empty; set --config.init_from=<parent run dir>")
        lineage = self.workdir / ck.LINEAGE_FILE
        parent = ck.read_lineage(self.workdir).get("parent") if lineage.exists() else None
        return Start(fresh(), 0, None, parent)

    def _start_from_hf(self, path: str, target, shardings, tx) -> Start:
        """``init_from`` an HF directory (e.g. a released checkpoint): its params with a fresh
        optimizer; the stage built its model from the directory's config.json
        (``sampling.policy.init_model_config`` / ``parent_model_config``), so the shapes agree."""
        params, hf_dir, _ = load_params(path, target["params"])
        state = {"step": jax.device_put(np.zeros((), np.int32), shardings["step"]), "params": params,
                 "opt_state": jax.jit(tx.init, out_shardings=shardings["opt_state"])(params)}
        print(f"{self.stage}: starting from HF checkpoint {hf_dir} (params; fresh optimizer and schedule)")
        return Start(state, 0, None, {"run_dir": str(hf_dir), "step": 0})

    def _restore_newest_good(self, target):
        """Resume from the newest checkpoint that reads and verifies; each one that does not is
        reported in one line and moved to ``checkpoints/corrupt-<step>/``. None left: ConfigError."""
        def report(step, error, aside):
            if self.is_main:
                print(f"{self.stage}: checkpoint step {step} is unusable ({error.reason}); moved it to {aside}; "
                      f"trying the previous one", flush=True)
        return self.checkpointer.restore_newest_good(target, on_bad=report)

    def finished(self, start: Start, total_steps: int) -> bool:
        return start.step >= total_steps and (self.workdir / SUMMARY_FILE).is_file()

    def previous_summary(self) -> dict:
        self.close()
        print(f"{self.stage}: {self.workdir} already finished; nothing to do")
        return json.loads((self.workdir / SUMMARY_FILE).read_text())

    def write_lineage(self, start: Start, model_cfg, **extra) -> None:
        """``lineage.json``: written when the run starts (not on resume, which keeps the original)."""
        if self.is_main and (start.step == 0 or not (self.workdir / ck.LINEAGE_FILE).exists()):
            ck.write_lineage(self.workdir, self.stage, self.config, start.parent, model_params=model_cfg.num_params(),
                             model=dataclasses.asdict(model_cfg), **extra)

    # ------------------------------------------------------------------ loop
    def hooks(self, start: Start) -> dict:
        """The shared loop's checkpointer, TensorBoard writer and checkpoint metadata."""
        self.writer = ScalarWriter(self.tb_dir) if self.is_main else None
        meta = {"stage": self.stage, "config": ck.config_to_dict(self.config), "parent": start.parent}
        return {"checkpointer": self.checkpointer, "writer": self.writer, "meta": meta}

    def close(self) -> None:
        """Wait for the last checkpoint, close the writer, release the workdir lock."""
        try:
            self.checkpointer.close()
        finally:
            if self.writer is not None:
                self.writer.close()
                self.writer = None
            if self.lock is not None:
                self.lock.release()

    def finish(self, result, total_steps: int, model_cfg, start: Start, headline: str = "", **extra) -> dict:
        """Close the checkpointer and writer; for a finished run write and return ``summary.json``.
        An interrupted run (its checkpoint saved) raises KeyboardInterrupt: main exits 130."""
        self.close()
        if result.reason == "interrupted":
            raise KeyboardInterrupt(f"{self.stage} interrupted at step {result.step}")
        last = result.history[-1] if result.history else {}
        summary = {
            "stage": self.stage, "run_dir": str(self.workdir), "steps": result.step, "total_steps": total_steps,
            "reason": result.reason, "checkpoint": result.last_checkpoint,
            "checkpoints_dir": str(self.checkpointer.directory), "tensorboard_dir": str(self.tb_dir),
            "model_params": model_cfg.num_params(),
            "final": {k: v for k, v in last.items() if isinstance(v, (int, float))},
            # multi-host: python -m interplay_jax.lineage RUN --digest
            "params_digest": (ck.params_digest(result.state["params"])
                              if result.reason == "done" and jax.process_count() == 1 else None),
            "parent": start.parent, **extra, "wall_s": round(time.time() - self.t0, 1),
        }
        if self.is_main:
            (self.workdir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2))
            print(f"{self.stage}: {result.reason} at step {result.step}/{total_steps}{headline}; "
                  f"checkpoints {self.checkpointer.directory}; tensorboard {self.tb_dir}")
        return summary
