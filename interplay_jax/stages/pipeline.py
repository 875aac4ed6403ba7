"""Stage ``pipeline``: run several stages in order, each in ``WORKDIR/<name>/`` (the quickstart).

``config.stages`` is a comma-separated list of names ("generate,tokenizer,pretrain,midtrain");
``config.<name>`` is that stage's full config (with its own ``stage`` field). Any string field of a
sub-config may say ``{workdir}``: it becomes the pipeline's workdir, which is how stages are wired
(e.g. ``pretrain.tokenizer = "{workdir}/tokenizer/tokenizer.json"``, ``midtrain.init_from =
"{workdir}/pretrain"``). A finished stage leaves ``WORKDIR/<name>/pipeline_done.json`` and is skipped
on a rerun; an unfinished one resumes (rerun the same command).
"""
from __future__ import annotations

import copy
import json
import pathlib
import time

from interplay_jax import checkpoint as ck
from interplay_jax import stages
from interplay_jax.config import parse_list, require

DONE_FILE = "pipeline_done.json"


def _fill(cfg, workdir: str):
    """Replace ``{workdir}`` in every string field (recursively) of an unlocked ConfigDict."""
    for key in list(cfg.keys()):
        value = cfg[key]
        if hasattr(value, "keys") and hasattr(value, "unlocked"):
            _fill(value, workdir)
        elif isinstance(value, str) and "{workdir}" in value:
            cfg[key] = value.replace("{workdir}", workdir)


def sub_config(config, name: str):
    """The config of stage ``name`` with its workdir and ``{workdir}`` references filled in."""
    workdir = str(pathlib.Path(str(config.workdir)).absolute())
    sub = copy.deepcopy(config[name])
    with sub.unlocked():
        sub.workdir = str(pathlib.Path(workdir) / name)
        _fill(sub, workdir)
    return sub


def _describe(name: str, out, subdir: pathlib.Path) -> list[str]:
    lines = [f"  {name:<10} {subdir}"]
    if isinstance(out, dict):
        if out.get("paths"):  # eval
            paths = out["paths"]
            lines.append(f"             results {paths.get('results')}")
            lines.append(f"             report  {paths.get('markdown')} (+ figures beside it)")
        if out.get("checkpoints_dir"):
            fin = out.get("final") or {}
            loss = f", final loss {fin['loss']:.4f}" if "loss" in fin else ""
            lines.append(f"             checkpoints {out['checkpoints_dir']} (step {out.get('checkpoint')}){loss}")
            lines.append(f"             tensorboard {out.get('tensorboard_dir')}")
            held = {k.split('/', 1)[1]: v for k, v in fin.items() if k.startswith("eval/heldout_loss/")}
            if held:
                lines.append("             held-out loss " + ", ".join(f"{k} {v:.3f}" for k, v in held.items()))
    return lines


def run(config):
    workdir = pathlib.Path(str(config.workdir)).absolute()
    lock = ck.lock_workdir(workdir, "pipeline run")     # one pipeline per root (each stage locks its own)
    try:
        return _run(config, workdir)
    finally:
        lock.release()


def _run(config, workdir: pathlib.Path):
    t0 = time.time()
    names = parse_list(config.stages)
    outputs = {}
    for i, name in enumerate(names, 1):
        sub = sub_config(config, name)
        subdir = pathlib.Path(sub.workdir)
        done = subdir / DONE_FILE
        if done.is_file():
            print(f"[{i}/{len(names)}] {name}: done earlier ({done}); skipping")
            outputs[name] = json.loads(done.read_text()).get("output")
            continue
        print(f"[{i}/{len(names)}] {name}: {sub.stage} -> {subdir}")
        t = time.time()
        out = stages.run_config(sub)
        if isinstance(out, dict) and out.get("reason") not in (None, "done"):
            print(f"pipeline stopped in {name} ({out.get('reason')}); rerun the same command to resume")
            return {"stopped_in": name, "outputs": outputs}
        subdir.mkdir(parents=True, exist_ok=True)
        if isinstance(out, dict) and "summaries" in out:  # eval: keep the headline, not every sample
            out = {"paths": out["paths"], "pass_at_k": {n: s["pass_at_k"] for n, s in out["summaries"].items()}}
        safe = json.loads(json.dumps(out, default=str)) if out is not None else None
        done.write_text(json.dumps({"stage": sub.stage, "seconds": round(time.time() - t, 1), "output": safe},
                                   indent=2))
        outputs[name] = safe
    lines = [f"pipeline done in {time.time() - t0:.0f}s; everything is under {workdir}:"]
    for name in names:
        lines += _describe(name, outputs.get(name), workdir / name)
    lines.append(f"TensorBoard: tensorboard --logdir {workdir}")
    trained = [n for n in names if config[n].stage in ("pretrain", "midtrain", "rl")]
    if trained:
        lines.append(f"Lineage:     python -m interplay_jax.lineage {workdir / trained[-1]} --digest")
    print("\n".join(lines))
    (workdir / "pipeline_summary.json").write_text(json.dumps(outputs, indent=2, default=str))
    return outputs


def validate(config, check_files: bool = True) -> None:
    """Every sub-stage's static checks (files made by earlier stages are checked when they run)."""
    require("stages" in config and "workdir" in config, "pipeline config needs 'stages' and 'workdir'")
    names = parse_list(config.stages)
    require(bool(names), "pipeline: stages is empty")
    for name in names:
        require(name in config and hasattr(config[name], "get") and "stage" in config[name],
                f"pipeline: stage {name!r} has no sub-config (expected config.{name} with a 'stage' field)")
        sub = config[name]
        require(sub.stage in stages.STAGES and sub.stage != "pipeline",
                f"pipeline: {name}.stage={sub.stage!r} is not a runnable stage")
        if sub.stage in ("pretrain", "midtrain", "rl"):   # the others need files made by earlier stages
            stages.validate(sub, check_files=False)
