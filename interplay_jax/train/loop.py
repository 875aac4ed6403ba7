"""The ONE training loop every stage uses (pre-training, mid-training, RL).

A stage gives a jitted ``step_fn(state, batch) -> (state, metrics)`` and a batch producer: either
an iterator of batches (pre/mid-training: the grain iterator, whose state goes into checkpoints) or
a callable ``produce(state, step_index) -> batch`` (RL: rollouts from the current policy), and runs
``Loop(LoopSettings(...), hooks).run(step_fn, state, batches)``. The loop does everything else:

- tqdm progress bar with ETA and a one-line summary every ``log_every`` steps;
- TensorBoard scalars (:class:`ScalarWriter`): every metric, tokens/s, MFU vs ``peak_flops``, and the
  ``eval_fn`` results (e.g. held-out loss per op bucket) every ``eval_every`` steps;
- the metrics of step t-1 are pulled to the host while step t runs (async dispatch);
- non-finite loss / grad_norm stops the run (:class:`TrainingDiverged`) without saving, so the last
  good checkpoint stays the latest;
- checkpoints every ``ckpt_every`` steps and at the end, each holding the data-iterator state; a step
  that both checkpoints and evaluates starts the (asynchronous) save first; a failed save stops the
  run (one :class:`~interplay_jax.checkpoint.CheckpointWriteError` line, at the next log row at the
  latest), the earlier checkpoints untouched;
- SIGINT / SIGTERM: finish the current step (an evaluation under way is abandoned at once), save, and
  return with ``reason="interrupted"``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import queue
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tensorboard.compat.proto.event_pb2 import Event
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tqdm.auto import tqdm

from interplay_jax.errors import UserError


class ScalarWriter:
    """TensorBoard scalars without TensorFlow, via the ``tensorboard`` package's own event writer.

    Same ``add_scalar / flush / close`` calls as tensorboardX's SummaryWriter; this one avoids
    tensorboardX's import of torch (~3 s per run).
    """

    def __init__(self, logdir):
        self.logdir = str(logdir)
        self._writer = EventFileWriter(self.logdir, flush_secs=30)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class TrainingDiverged(UserError):
    """Loss or gradient norm became NaN/inf; the message names the step and the last checkpoint."""


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int                 # steps completed (the state's step)
    reason: str               # "done" | "interrupted"
    history: list[dict]       # one dict per log interval (means over the interval)
    last_checkpoint: int | None


class _EvalAbandoned(BaseException):
    """Raised by the signal handler inside an evaluation (a BaseException: eval code that catches
    Exception does not swallow it)."""


class _StopFlag:
    """SIGINT/SIGTERM -> set a flag the loop checks between steps (main thread only); while
    ``in_eval`` the handler also raises :class:`_EvalAbandoned` so a long evaluation stops at once."""

    def __init__(self):
        self.signal = None
        self.in_eval = False
        self._old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signal is not None:  # second signal: give up at once
            raise KeyboardInterrupt
        self.signal = signum
        if self.in_eval:
            raise _EvalAbandoned

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _fmt_num(x: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(x) >= div:
            return f"{x / div:.1f}{unit}"
    return f"{x:.0f}"


def _fmt_time(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _finite(metrics: dict, keys=("loss", "grad_norm")) -> str | None:
    for k in keys:
        if k in metrics and not math.isfinite(float(metrics[k])):
            return k
    return None


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    total_steps: int
    log_every: int = 10
    ckpt_every: int = 0                # 0: a checkpoint only at the end
    eval_every: int = 0                # 0: eval only at the end (when there is an eval_fn)
    desc: str = "train"                # progress-bar label and TensorBoard scalar prefix
    progress: bool = True
    flops_per_token: float | None = None  # with peak_flops: MFU in the log
    peak_flops: float | None = None


class Loop:
    """Runs steps ``start_step+1 .. total_steps`` (see the module docstring).

    Hooks: ``checkpointer`` (an :class:`interplay_jax.checkpoint.Checkpointer`, or None),
    ``writer`` (:class:`ScalarWriter` or a tensorboardX SummaryWriter, or None), ``eval_fn(state) ->
    {name: float}``, ``meta`` (JSON saved with each checkpoint: stage, config, parent) and
    ``on_log(step, row)`` (called with each logged row).
    """

    def __init__(self, settings: LoopSettings, *, checkpointer=None, writer=None, eval_fn=None,
                 meta: dict | None = None, on_log: Callable[[int, dict], None] | None = None):
        self.s = settings
        self.checkpointer, self.writer, self.eval_fn, self.on_log = checkpointer, writer, eval_fn, on_log
        self.meta = dict(meta or {})
        self.history: list[dict] = []
        self.last_ckpt = checkpointer.latest_step() if checkpointer is not None else None
        self._stop = _StopFlag()
        self._window: dict[str, list[float]] = {}
        self._t_window = time.perf_counter()
        self._steps_in_window = 0
        # seconds by kind: training time only goes into tokens/s and MFU; the rest are their own metrics
        self.seconds = {"compile": 0.0, "eval": 0.0, "checkpoint": 0.0, "data_wait": 0.0}
        self._excluded = 0.0      # compile / eval / checkpoint seconds inside the current log window
        self._waited = 0.0        # seconds the loop waited for a batch inside the current log window

    @contextlib.contextmanager
    def _timed(self, kind: str):
        """Time a non-training activity: counted under ``kind`` and left out of the training time."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            self.seconds[kind] += dt
            self._excluded += dt

    # ------------------------------------------------------------------ pieces
    def _save(self, state, at: int, data_state) -> None:
        if self.checkpointer is None or at == self.last_ckpt:
            return
        with self._timed("checkpoint"):
            self.checkpointer.save(at, state, data_state=data_state, meta={**self.meta, "step": at})
        self.last_ckpt = at

    def _check(self, metrics: dict, at: int) -> None:
        bad = _finite(metrics)
        if bad is not None:
            where = (f"last good checkpoint: step {self.last_ckpt} in {self.checkpointer.directory}"
                     if self.checkpointer is not None and self.last_ckpt is not None else "no checkpoint was saved")
            raise TrainingDiverged(f"{bad} is {float(metrics[bad])} at step {at}; stopped ({where}); "
                                   f"lower the learning rate or check the data")

    def _absorb(self, metrics: dict, at: int) -> None:
        """Pull step ``at``'s metrics to the host; log a row at every ``log_every`` steps."""
        metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._check(metrics, at)
        for k, v in metrics.items():
            self._window.setdefault(k, []).append(v)
        self._steps_in_window += 1
        if at % self.s.log_every == 0 or at == self.s.total_steps:
            self._log(at)

    def _log(self, at: int) -> None:
        now = time.perf_counter()
        dt = max(now - self._t_window - self._excluded, 1e-9)      # training time of the window
        row = {k: (sum(v) / len(v) if k != "tokens" else sum(v)) for k, v in self._window.items()}
        row["step"] = at
        row["steps_per_s"] = self._steps_in_window / dt
        row["data_wait_frac"] = min(self._waited / dt, 1.0)
        if "tokens" in self._window:
            row["tokens_per_s"] = row["tokens"] / dt
            if self.s.flops_per_token and self.s.peak_flops:
                row["mfu"] = row["tokens_per_s"] * self.s.flops_per_token / self.s.peak_flops
        eta = (self.s.total_steps - at) / max(row["steps_per_s"], 1e-9)
        tqdm.write(_log_line(row, self.s.total_steps, eta))
        if self.writer is not None:
            for k, v in row.items():
                if k != "step":
                    self.writer.add_scalar(f"{self.s.desc}/{k}", v, at)
            for k, v in self.seconds.items():
                self.writer.add_scalar(f"time/{k}_s", v, at)
        if self.on_log is not None:
            self.on_log(at, row)
        if self.checkpointer is not None:
            self.checkpointer.check()      # a failed background save stops the run here
        self.history.append(row)
        self._window.clear()
        self._steps_in_window = 0
        self._t_window, self._excluded, self._waited = now, 0.0, 0.0

    def _evaluate(self, state, at: int) -> None:
        if self.eval_fn is None or self._stop.signal is not None:
            return
        try:
            self._stop.in_eval = True
            with self._timed("eval"):
                results = self.eval_fn(state)
        except _EvalAbandoned:
            tqdm.write(f"eval step {at}: abandoned (interrupted)")
            return
        finally:
            self._stop.in_eval = False
        if not results:
            return
        tqdm.write(f"eval step {at} | " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()))
        if self.writer is not None:
            for k, v in results.items():
                self.writer.add_scalar(f"eval/{k}", float(v), at)
        if self.history and self.history[-1]["step"] == at:
            self.history[-1].update({f"eval/{k}": float(v) for k, v in results.items()})

    # ------------------------------------------------------------------ the loop
    def run(self, step_fn: Callable, state, batches: Iterator | Callable, *, start_step: int = 0,
            put_batch: Callable | None = None, data_state_fn: Callable[[], Any] | None = None) -> LoopResult:
        """``batches``: an iterator of host batches (its ``get_state()`` is checkpointed) or a callable
        ``(state, step_index) -> batch`` (RL). ``put_batch``: host batch -> device batch.
        ``data_state_fn() -> JSON-able``: what to checkpoint as the data state instead."""
        s = self.s
        produce = batches if (callable(batches) and not hasattr(batches, "__next__")) else None
        iterator = None if produce is not None else batches

        def data_state():
            if data_state_fn is not None:
                return data_state_fn()
            return iterator.get_state() if iterator is not None and hasattr(iterator, "get_state") else None

        step, pending, reason = start_step, None, "done"   # pending: (metrics on device, step) not yet pulled
        bar = tqdm(total=s.total_steps, initial=start_step, desc=s.desc, disable=not s.progress,
                   dynamic_ncols=True, leave=False)
        try:
            with self._stop as stop:
                while step < s.total_steps:
                    if stop.signal is not None:
                        reason = "interrupted"
                        break
                    t0 = time.perf_counter()
                    if produce is not None:
                        batch = produce(state, step)
                    else:
                        try:
                            batch = next(iterator)
                        except StopIteration:
                            tqdm.write(f"data ran out after {step} steps (of {s.total_steps}); stopping")
                            break
                    if put_batch is not None:
                        batch = put_batch(batch)
                    if produce is None:          # (RL's rollouts are its work, not a wait)
                        self._waited += time.perf_counter() - t0
                        self.seconds["data_wait"] += time.perf_counter() - t0
                    if step == start_step:       # the first call compiles the step
                        with self._timed("compile"):
                            state, metrics = step_fn(state, batch)
                            jax.block_until_ready(metrics)
                    else:
                        state, metrics = step_fn(state, batch)
                    step += 1
                    if pending is not None:        # pull step t-1 while step t runs
                        self._absorb(*pending)
                    pending = (metrics, step)
                    bar.update(1)
                    boundary = bool(s.ckpt_every) and step % s.ckpt_every == 0
                    do_eval = bool(s.eval_every) and step % s.eval_every == 0
                    if boundary or do_eval or step == s.total_steps:
                        self._absorb(*pending)     # never checkpoint a diverged state
                        pending = None
                        if boundary:               # the async save runs while the eval does
                            self._save(state, step, data_state())
                        if do_eval:
                            self._evaluate(state, step)
                if pending is not None:
                    self._absorb(*pending)
                self._save(state, step, data_state())
                if step == s.total_steps and not (s.eval_every and step % s.eval_every == 0):
                    self._evaluate(state, step)
        finally:
            bar.close()
            if self.checkpointer is not None:
                self.checkpointer.wait()
        if reason == "interrupted":
            tqdm.write(f"interrupted at step {step}: checkpoint saved; rerun the same command to resume")
        tqdm.write(f"{s.desc}: " + ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items()))
        if self.writer is not None:
            self.writer.flush()
        return LoopResult(state=state, step=step, reason=reason, history=self.history, last_checkpoint=self.last_ckpt)


def _log_line(row: dict, total_steps: int, eta: float) -> str:
    line = [f"step {row['step']}/{total_steps}"]
    for k, fmt in (("loss", "{:.4f}"), ("lr", "{:.2e}"), ("grad_norm", "{:.3f}")):
        if k in row:
            line.append(f"{k} " + fmt.format(row[k]))
    if "tokens_per_s" in row:
        line.append(f"{_fmt_num(row['tokens_per_s'])} tok/s")
    if "mfu" in row:
        line.append(f"MFU {100 * row['mfu']:.2f}%")
    if row.get("data_wait_frac", 0) >= 0.05:
        line.append(f"input-bound {100 * row['data_wait_frac']:.0f}%")
    line.append(f"eta {_fmt_time(eta)}")
    return " | ".join(line)


class DevicePrefetch:
    """Host batches put on the device ``depth`` steps ahead by a background thread, so the next batch
    is there while the step runs. ``get_state()`` is the data iterator's state after the last batch
    the loop took (what a checkpoint must record), not after the prefetched ones."""

    _END = object()

    def __init__(self, iterator, put: Callable, depth: int = 2):
        self._it, self._put = iterator, put
        self._q: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
        self._state = iterator.get_state() if hasattr(iterator, "get_state") else None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="device-prefetch", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        try:
            for batch in self._it:
                state = self._it.get_state() if hasattr(self._it, "get_state") else None
                item = (self._put(batch), state)
                while not self._stop.is_set():
                    try:
                        self._q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._q.put(self._END)
        except BaseException as e:  # noqa: BLE001 — handed to the loop's thread, raised there
            self._q.put(e)

    def __iter__(self):
        return self

    def __next__(self):
        item = self._q.get()
        if item is self._END:
            self._q.put(self._END)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        batch, self._state = item
        return batch

    def get_state(self):
        return self._state

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
