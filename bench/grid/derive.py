"""A grid derived from another: `derive: {from: paper, ...cuts}` (config/grids/paper-tiny.yaml).

The derived grid has the source's blocks, tasks, shifts, methods, hyperparameter keys and sweep values; only
these change, mechanically:
- models: each model -> the tiny stand-in of its architecture (config/models.yaml: the `source: tiny` entry
  whose config has that model_type); the models of a block that map to one stand-in collapse into it;
- tasks: a task whose training data lies on the hub -> its `offline` twin in config/tasks.yaml (the same
  template, metrics and shift names on local files);
- seeds (and data seeds): the first `seeds` of each block;
- train sizes: an integer n -> ceil(n * train_sizes.scale), `full` -> train_sizes.full;
- eval limits: at most `eval_limit` examples per eval set;
- hyperparameters named in `hp_max`: at most that value (0 stays 0); a cap that would merge two sweep values
  is refused, since every sweep value is kept.
Nothing here reads a model or data file: it runs while Snakemake plans.
"""

from __future__ import annotations

import math

from bench.api.errors import BenchError


def tiny_stand_in(model: str) -> str:
    """The registry's tiny model of `model`'s architecture (a tiny model is its own stand-in)."""
    from bench.harness.models import get_model_spec, model_names

    spec = get_model_spec(model)
    if spec.source == "tiny":
        return model
    found = [
        name
        for name in model_names()
        if get_model_spec(name).source == "tiny" and get_model_spec(name).architecture == spec.architecture
    ]
    if not found:
        raise BenchError(
            f"model {model} (architecture {spec.architecture}) has no tiny stand-in: add a `source: "
            f"tiny` entry with config.model_type {spec.architecture} to config/models.yaml"
        )
    return found[0]


def offline_task(task: str) -> str:
    """The task's `offline` twin in config/tasks.yaml where its training data lies on the hub, else the task."""
    from bench.harness.tasks import task_offline_twin

    return task_offline_twin(task) or task


def _capped(value, cap):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return value
    return min(value, cap)


def _cap_hp(hp: dict, caps: dict, where: str) -> dict:
    out = {}
    for key, value in hp.items():
        if key in caps and isinstance(value, list):
            capped = [_capped(v, caps[key]) for v in value]
            if len(set(capped)) < len(set(value)):
                raise BenchError(
                    f"derive: hp_max.{key}={caps[key]} would merge the sweep {value} of {where}: "
                    f"raise hp_max.{key} above {sorted(value)[-2]}, or drop it from hp_max"
                )
            out[key] = capped
        else:
            out[key] = _capped(value, caps[key]) if key in caps else value
    return out


def _train_size(size, cuts: dict):
    if size == "full":
        return cuts["full"]
    return max(1, math.ceil(size * cuts["scale"]))


def derive_grid(spec: dict, source: list[dict]) -> dict:
    """The grid data (one dict with `blocks`) that `spec` (the `derive:` mapping) makes of the `source` grid's
    schema-checked blocks (bench.grid.plan.blocks)."""
    caps = spec.get("hp_max") or {}
    keep = spec["seeds"]
    out = []
    for i, block in enumerate(source):
        where = f"block {i}"
        tasks = {}
        for task, settings in block["tasks"].items():
            settings = dict(settings or {})
            if "hp" in settings:
                settings["hp"] = _cap_hp(settings["hp"], caps, f"{where} task {task}")
            limit = settings.get("eval_limit")
            settings["eval_limit"] = min(limit, spec["eval_limit"]) if limit else spec["eval_limit"]
            tasks[offline_task(task)] = settings
        derived = {
            "models": list(dict.fromkeys(tiny_stand_in(m) for m in block["models"])),
            "methods": {
                label: _cap_hp(entry or {}, caps, f"{where} method {label}") or None
                for label, entry in block["methods"].items()
            },
            "tasks": tasks,
            "train_sizes": list(dict.fromkeys(_train_size(s, spec["train_sizes"]) for s in block["train_sizes"])),
            "seeds": block.get("seeds", [0])[:keep],
        }
        if "data_seeds" in block:
            derived["data_seeds"] = block["data_seeds"][:keep]
        if block.get("hp"):
            derived["hp"] = _cap_hp(block["hp"], caps, f"{where} hp")
        if "description" in block:
            derived["description"] = block["description"]
        out.append(derived)
    return {"blocks": out}
