"""The persistent XLA compilation cache, on by default for every stage.

``stages.run_config`` (the one path of main, the pipeline stage and the experiment runner) calls
:func:`enable` before a stage runs, so a rerun, a resumed run or a sibling run with the same shapes
loads its compiled programs from disk instead of compiling them again.

Where the cache lives (first match wins):

1. an off switch: ``INTERPLAY_COMPILE_CACHE=off`` (or ``0``, ``false``, ``no``, ``none``) in the
   environment, or a config field ``compile_cache = "off"``: no persistent cache at all;
2. ``JAX_COMPILATION_CACHE_DIR`` in the environment (JAX's own setting) is left as it is;
3. a config field ``compile_cache = "<dir>"`` (configs may carry one; none does by default);
4. ``INTERPLAY_COMPILE_CACHE=<dir>``;
5. ``<cache root>/xla``, the cache root being ``$INTERPLAY_CACHE`` or ``~/.cache/interplay_jax``
   (:func:`interplay_jax.files.cache_dir`, where the default tokenizer is cached too).

Programs that took less than ``INTERPLAY_COMPILE_CACHE_MIN_SECS`` (default 0.5 s; JAX's own default
is 1 s) to compile are not written. :func:`stats` counts, for this process, compilations that went
through the cache, hits, JAX's estimate of the seconds saved and the seconds spent compiling or
loading (JAX's monitoring events); ``run_config`` prints them after a stage (:func:`summary_line`).
The cache key covers the program, the jax/jaxlib version, the backend and the compile options; an
entry is never stale. The cache directory is trusted code: do not share it with untrusted users.
"""
from __future__ import annotations

import os
import pathlib
import threading

from interplay_jax.host import OFF_WORDS  # the one list of an env switch's "off" words

ENV_DIR = "INTERPLAY_COMPILE_CACHE"
ENV_MIN_SECS = "INTERPLAY_COMPILE_CACHE_MIN_SECS"
DEFAULT_MIN_SECS = 0.5

_lock = threading.Lock()
_stats = {"requests": 0, "hits": 0, "saved_s": 0.0, "compile_s": 0.0}
_listening = False


def resolve(setting=None, env=None) -> str | None:
    """The cache directory for a config field value ``setting`` (None / "" = unset) and an
    environment mapping (default ``os.environ``); None means the cache is off."""
    env = os.environ if env is None else env
    setting = "" if setting is None else str(setting).strip()
    env_dir = str(env.get(ENV_DIR, "") or "").strip()
    if setting.lower() in OFF_WORDS or env_dir.lower() in OFF_WORDS:
        return None
    if env.get("JAX_COMPILATION_CACHE_DIR"):
        return str(env["JAX_COMPILATION_CACHE_DIR"])
    if setting:
        return setting
    if env_dir:
        return env_dir
    from interplay_jax.files import cache_dir
    return str(cache_dir() / "xla")


def _min_secs(env) -> float:
    raw = env.get(ENV_MIN_SECS, "")
    try:
        return float(raw) if str(raw).strip() else DEFAULT_MIN_SECS
    except ValueError:
        return DEFAULT_MIN_SECS


def enable(config=None, env=None) -> str | None:
    """Point JAX's persistent compilation cache at :func:`resolve`'s directory (or turn it off).
    Idempotent; switching directories within a process resets JAX's cache object. Returns the
    directory (None: off)."""
    import jax
    from jax._src import compilation_cache as cc

    env = os.environ if env is None else env
    setting = config.get("compile_cache", None) if config is not None and hasattr(config, "get") else None
    path = resolve(setting, env)
    _listen()
    if path is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    pathlib.Path(path).mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    if jax.config.jax_compilation_cache_dir != path:
        if cc.is_initialized():
            cc.reset_cache()          # the cache object is built once per process, on first use
        jax.config.update("jax_compilation_cache_dir", path)
    if not env.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", _min_secs(env))
    return path


def _listen() -> None:
    """Count cache requests / hits / seconds with JAX's monitoring events (once per process)."""
    global _listening
    with _lock:
        if _listening:
            return
        _listening = True
    from jax import monitoring

    def on_event(event, **kwargs):
        if event == "/jax/compilation_cache/compile_requests_use_cache":
            _stats["requests"] += 1
        elif event == "/jax/compilation_cache/cache_hits":
            _stats["hits"] += 1

    def on_duration(event, duration, **kwargs):
        if event == "/jax/compilation_cache/compile_time_saved_sec":
            _stats["saved_s"] += max(float(duration), 0.0)
        elif event == "/jax/core/compile/backend_compile_duration":
            _stats["compile_s"] += float(duration)

    monitoring.register_event_listener(on_event)
    monitoring.register_event_duration_secs_listener(on_duration)


def stats() -> dict:
    """This process's counts so far: requests (compilations that consulted the cache), hits,
    saved_s (JAX's estimate: the stored compile time, whole seconds, minus the load time) and
    compile_s (seconds in compile-or-load, hits included)."""
    return dict(_stats)


def entries(path) -> int:
    """Number of compiled programs stored under ``path``."""
    p = pathlib.Path(path)
    return sum(1 for f in p.glob("*-cache")) if p.is_dir() else 0


def summary_line(path, before: dict | None = None) -> str:
    """One line for the console: hits since ``before`` (a :func:`stats` snapshot) and entries."""
    now, before = stats(), before or {}
    d = {k: now[k] - before.get(k, 0) for k in now}
    return (f"compile cache {path}: {d['hits']} of {d['requests']} compilations loaded from disk "
            f"({d['compile_s']:.1f} s compiling or loading, ~{d['saved_s']:.0f} s saved); "
            f"{entries(path)} entries")
