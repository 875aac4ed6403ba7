"""The ONE training loop every stage uses (pre-training, mid-training, RL).

A stage gives a jitted ``step_fn(state, batch) -> (state, metrics)`` and a batch producer: either
an iterator of batches (pre/mid-training: the grain iterator, whose state goes into checkpoints) or
a callable ``produce(state, step_index) -> batch`` (RL: rollouts from the current policy). The loop
does everything else:

- tqdm progress bar with ETA and a one-line summary every ``log_every`` steps;
- TensorBoard scalars (:class:`ScalarWriter`, or a tensorboardX SummaryWriter): every metric, tokens/s, MFU vs ``peak_flops``, and the
  ``eval_fn`` results (e.g. held-out loss per op bucket) every ``eval_every`` steps;
- the metrics of step t-1 are pulled to the host while step t runs (async dispatch);
- non-finite loss / grad_norm stops the run (:class:`TrainingDiverged`) without saving, so the last
  good checkpoint stays the latest;
- checkpoints every ``ckpt_every`` steps and at the end, each holding the data-iterator state;
- SIGINT / SIGTERM: finish the current step, save, and return with ``reason="interrupted"``.
"""
from __future__ import annotations

import dataclasses
import math
import signal
import threading
import time
from typing import Any, Callable, Iterator

import jax
import numpy as np
from tqdm.auto import tqdm

from interplay_jax.errors import UserError


class ScalarWriter:
    """TensorBoard scalars without TensorFlow, via the ``tensorboard`` package's own event writer.

    Same ``add_scalar / flush / close`` calls as tensorboardX's SummaryWriter (which may be passed to
    :func:`run_loop` instead); this one avoids tensorboardX's import of torch (~3 s per run).
    """

    def __init__(self, logdir):
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        self.logdir = str(logdir)
        self._writer = EventFileWriter(self.logdir, flush_secs=30)

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary
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


class _StopFlag:
    """SIGINT/SIGTERM -> set a flag the loop checks between steps (main thread only)."""

    def __init__(self):
        self.signal = None
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


def run_loop(*, step_fn: Callable, state, batches: Iterator | Callable, total_steps: int,
             start_step: int = 0, checkpointer=None, log_every: int = 10, ckpt_every: int = 0,
             eval_every: int = 0, eval_fn: Callable | None = None, writer=None,
             flops_per_token: float | None = None, peak_flops: float | None = None,
             meta: dict | None = None, desc: str = "train", put_batch: Callable | None = None,
             on_log: Callable[[int, dict], None] | None = None, progress: bool = True,
             data_state_fn: Callable[[], Any] | None = None) -> LoopResult:
    """Run steps ``start_step+1 .. total_steps`` and return a :class:`LoopResult`.

    ``checkpointer``: an :class:`interplay_jax.checkpoint.Checkpointer` (None: no checkpoints).
    ``batches``: iterator of host batches (its ``get_state()`` is checkpointed if it has one) or a
    callable ``(state, step_index) -> batch``. ``put_batch``: host batch -> device batch (e.g.
    ``make_global_batch``). ``writer``: a :class:`ScalarWriter` / tensorboardX SummaryWriter (or None). ``meta``: JSON
    saved with each checkpoint (stage, config, parent). ``eval_fn(state) -> {name: float}``.
    ``data_state_fn() -> JSON-able``: what to checkpoint as the data state (default: the iterator's
    ``get_state()``; e.g. an RL prompt iterator's state when ``batches`` is a callable).
    """
    produce = batches if (callable(batches) and not hasattr(batches, "__next__")) else None
    iterator = None if produce is not None else batches
    meta = dict(meta or {})
    history: list[dict] = []
    last_ckpt = checkpointer.latest_step() if checkpointer is not None else None
    window: dict[str, list[float]] = {}
    t_window = time.perf_counter()
    t_start = t_window
    steps_in_window = 0
    step = start_step

    def data_state():
        if data_state_fn is not None:
            return data_state_fn()
        return iterator.get_state() if iterator is not None and hasattr(iterator, "get_state") else None

    def save(at: int):
        nonlocal last_ckpt
        if checkpointer is None or at == last_ckpt:
            return
        checkpointer.save(at, state, data_state=data_state(), meta={**meta, "step": at})
        last_ckpt = at

    def check(metrics: dict, at: int):
        bad = _finite(metrics)
        if bad is not None:
            where = (f"last good checkpoint: step {last_ckpt} in {checkpointer.directory}"
                     if checkpointer is not None and last_ckpt is not None else "no checkpoint was saved")
            raise TrainingDiverged(f"{bad} is {float(metrics[bad])} at step {at}; stopped ({where}); "
                                   f"lower the learning rate or check the data")

    def absorb(metrics: dict, at: int):
        nonlocal t_window, steps_in_window
        metrics = {k: float(np.asarray(v)) for k, v in metrics.items()}
        check(metrics, at)
        for k, v in metrics.items():
            window.setdefault(k, []).append(v)
        steps_in_window += 1
        if at % log_every == 0 or at == total_steps:
            now = time.perf_counter()
            dt = max(now - t_window, 1e-9)
            row = {k: (sum(v) / len(v) if k != "tokens" else sum(v)) for k, v in window.items()}
            row["step"] = at
            row["steps_per_s"] = steps_in_window / dt
            if "tokens" in window:
                row["tokens_per_s"] = row["tokens"] / dt
                if flops_per_token and peak_flops:
                    row["mfu"] = row["tokens_per_s"] * flops_per_token / peak_flops
            eta = (total_steps - at) / max(row["steps_per_s"], 1e-9)
            line = [f"step {at}/{total_steps}"]
            for k, fmt in (("loss", "{:.4f}"), ("lr", "{:.2e}"), ("grad_norm", "{:.3f}")):
                if k in row:
                    line.append(f"{k} " + fmt.format(row[k]))
            if "tokens_per_s" in row:
                line.append(f"{_fmt_num(row['tokens_per_s'])} tok/s")
            if "mfu" in row:
                line.append(f"MFU {100 * row['mfu']:.2f}%")
            line.append(f"eta {_fmt_time(eta)}")
            tqdm.write(" | ".join(line))
            if writer is not None:
                for k, v in row.items():
                    if k not in ("step",):
                        writer.add_scalar(f"{desc}/{k}", v, at)
            if on_log is not None:
                on_log(at, row)
            history.append(row)
            window.clear()
            steps_in_window = 0
            t_window = now

    def evaluate(at: int):
        if eval_fn is None:
            return
        results = eval_fn(state)
        if results:
            tqdm.write(f"eval step {at} | " + " | ".join(f"{k} {v:.4f}" for k, v in results.items()))
            if writer is not None:
                for k, v in results.items():
                    writer.add_scalar(f"eval/{k}", float(v), at)
            if history and history[-1]["step"] == at:
                history[-1].update({f"eval/{k}": float(v) for k, v in results.items()})

    bar = tqdm(total=total_steps, initial=start_step, desc=desc, disable=not progress,
               dynamic_ncols=True, leave=False)
    pending = None  # (step, metrics on device) not yet pulled to the host
    reason = "done"
    try:
        with _StopFlag() as stop:
            while step < total_steps:
                if stop.signal is not None:
                    reason = "interrupted"
                    break
                if produce is not None:
                    batch = produce(state, step)
                else:
                    try:
                        batch = next(iterator)
                    except StopIteration:
                        tqdm.write(f"data ran out after {step} steps (of {total_steps}); stopping")
                        break
                if put_batch is not None:
                    batch = put_batch(batch)
                state, metrics = step_fn(state, batch)
                step += 1
                if pending is not None:        # pull step t-1 while step t runs
                    absorb(*pending)
                pending = (metrics, step)
                bar.update(1)
                boundary = (ckpt_every and step % ckpt_every == 0)
                do_eval = eval_every and step % eval_every == 0
                if boundary or do_eval or step == total_steps:
                    absorb(*pending)           # never checkpoint a diverged state
                    pending = None
                    if do_eval:
                        evaluate(step)
                    if boundary:
                        save(step)
            if pending is not None:
                absorb(*pending)
                pending = None
            if step == total_steps and eval_fn is not None and not (eval_every and step % eval_every == 0):
                evaluate(step)
            save(step)
    finally:
        bar.close()
        if checkpointer is not None:
            checkpointer.wait()
    if reason == "interrupted":
        tqdm.write(f"interrupted at step {step}: checkpoint saved; rerun the same command to resume")
    if writer is not None:
        writer.flush()
    return LoopResult(state=state, step=step, reason=reason, history=history, last_checkpoint=last_ckpt)
