"""Records -> the tidy frame and the summary table (results/<grid>/summary.csv), with a 95% interval per row.

summary.csv is tidy: one row per cell minus its seed -- grid (the part, in a grid of parts), task, model, method,
variant (the grid's label: the method, or e.g. `prompt_tuning-num_virtual_tokens=5` for a sweep), train size, eval set,
metric -- with the mean, std and count of seeds, the 95% interval (`ci_low`, `ci_high`, how: `interval`;
bench/report/stats.py) and the examples per seed (`examples`), cost means, `stale` (the record is not what its cell asks
for today: its resolved spec differs from the planned one, bench/harness/identity.py; or it was made under another
dependency lock; cells.csv says what differs, field by field, in `stale_because`), a column per
hyperparameter whose value differs between cells of one method, and `hp` (all resolved hyperparameters, JSON).
cells.csv has every cell of the grid with its status: ok, diverged, failed (no record, a log), not run (neither).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.api.errors import BenchError
from bench.grid.plan import CELL_REFS, grid_cells, planned_identity, stale_fields
from bench.harness.cell import read_outputs
from bench.harness.lock import other_lock
from bench.report.stats import System, interval

KEYS = ["task", "model", "method", "train_size"]
COST = [
    "trainable_params",
    "delta_params",
    "total_params",
    "delta_bytes",
    "peak_mem_bytes",
    "train_tokens_per_s",
    "eval_tokens_per_s",
    "train_s",
    "eval_s",
    "flops_per_step",
]
PER_SEED = ("seed_list", "dirs", "values")  # summary columns the intervals read, not written to summary.csv
PRIMARY_ORDER = ("accuracy", "bleu", "rouge_l", "rouge_1", "f1")


# ------------------------------------------------------------------ records -> tidy table
def _read(cell) -> tuple[dict | None, str, str]:
    path = Path(cell.dir) / "record.json"
    label = getattr(cell, "label", cell.method)  # the Snakefile's log path
    log = Path(f"results/{cell.grid}/logs/{cell.task}/{cell.model}/{label}/n{cell.train_size}_s{cell.replicate}.log")
    if not path.exists():
        if not log.exists():
            return None, "not run", "no record, no log"
        last = ([line for line in log.read_text(errors="replace").splitlines() if line.strip()] or [""])[-1].strip()
        return None, "failed", f"no record; log {log}: {last[:160]}"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return None, "unreadable", f"{path}: {error}"
    if record.get("status") != "ok":
        return record, str(record.get("status")), f"{record.get('status')} at step {record.get('diverged_at_step')}"
    return record, "ok", ""


def load(grid: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(cells: one row per grid cell, its status, its record's `analysis` and per-example `outputs` (None where the
    record has none); rows: one per ok record x eval set x metric; hp columns)."""
    cells, rows = [], []
    found = grid_cells(grid)
    by_dir = {cell.dir: cell for cell in found}
    variants = part_variants(found)
    for cell in found:
        base = {
            "grid": cell.grid,
            "task": cell.task,
            "model": cell.model,
            "method": cell.method,
            "variant": variants[cell.dir],
            "train_size": str(cell.train_size),
            "seed": cell.replicate,
            "dir": cell.dir,
        }  # init seed, and data seed where the grid has them
        record, status, detail = _read(cell)
        harness = (record or {}).get("env", {}).get("harness_sha256") or ""
        made_under = None if record is None else other_lock(record.get("env", {}))
        made_from = (
            []
            if record is None
            else [
                *_stale_fields(record, cell, by_dir),  # what differs from the cell as planned today
                *([made_under] if made_under else []),
            ]
        )  # the lock, and the packages whose versions differ
        stale = bool(made_from)
        cells.append(
            {
                **base,
                "status": status,
                "stale": stale,
                "harness": harness[:12],
                "stale_because": "; ".join(made_from),
                "detail": detail,
                "analysis": record.get("analysis") if status == "ok" else None,
                "outputs": read_outputs(cell.dir, record) if status == "ok" else None,
            }
        )
        if status != "ok":
            continue
        hp = {
            key: str(value) for key, value in record["config"].get("hp", {}).items() if key not in CELL_REFS
        }  # another cell's dir (distill's teacher): it names the seed, so not an hp
        cost = {key: record["cost"].get(key) for key in COST}
        for eval_set, metrics in record["metrics"].items():
            for metric, value in metrics.items():
                if metric != "n" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append(
                        {
                            **base,
                            "hp": hp,
                            "hp_json": json.dumps(hp, sort_keys=True),
                            "eval_set": eval_set,
                            "metric": metric,
                            "value": float(value),
                            "stale": stale,
                            "examples": metrics.get("n"),
                            **cost,
                        }
                    )
    frame = pd.DataFrame(rows)
    hp_cols = []
    if len(frame):  # hp keys whose values differ between cells that share task, model, method and train size
        per_record = frame.drop_duplicates("dir")
        hp = pd.DataFrame(list(per_record["hp"]), index=per_record.index).fillna("")
        hp_cols = [key for key in hp if hp.join(per_record[KEYS]).groupby(KEYS)[key].nunique().max() > 1]
        for key in hp_cols:
            frame[key] = [h.get(key, "") for h in frame["hp"]]
    return pd.DataFrame(cells), frame.drop(columns="hp", errors="ignore"), hp_cols


def _stale_fields(record: dict, cell, cells: dict) -> list[str]:
    try:
        return stale_fields(record, planned_identity(cell, cells))
    except BenchError as error:  # e.g. no data root here: what the cell asks for cannot be known, so not "up to date"
        return [f"cannot be planned here ({error})"]


def _num(value):
    """Natural sort key: numbers by value, then text ('full' after every integer train size)."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, math.inf, str(value))


def part_variants(cells) -> dict[str, str]:
    """Cell dir -> its variant label in tables and plots: the grid's label for it, and where a grid of parts has
    one label for the same task and train size in several parts (another grid's full FT, say), the part too, e.g.
    `full_ft [curves]`, on every model: a part's variant keeps one name across its models (a size ladder's rows)."""
    key = lambda cell: (cell.task, getattr(cell, "label", cell.method), str(cell.train_size))  # noqa: E731
    parts: dict[tuple, set] = {}
    for cell in cells:
        parts.setdefault(key(cell), set()).add(cell.grid)
    return {cell.dir: key(cell)[1] + (f" [{cell.grid}]" if len(parts[key(cell)]) > 1 else "") for cell in cells}


def summarize(frame: pd.DataFrame, hp_cols: list[str]) -> pd.DataFrame:
    group = ["grid"] + KEYS[:3] + ["variant", "train_size"] + hp_cols + ["eval_set", "metric"]
    for col in COST:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    cost = {col: (col, "mean") for col in COST if frame[col].notna().any()}
    frame = frame.sort_values("seed", kind="stable")
    S = (
        frame.groupby(group, sort=False)
        .agg(
            mean=("value", "mean"),
            std=("value", "std"),
            seeds=("seed", "nunique"),
            stale=("stale", "any"),
            **cost,
            examples=("examples", "min"),
            hp=("hp_json", "first"),
            seed_list=("seed", tuple),
            dirs=("dir", tuple),
            values=("value", tuple),
        )
        .reset_index()
    )
    S["model_params"] = S["model"].map(frame.groupby("model")["total_params"].min())  # base size: least total
    S["trainable_pct"] = 100 * S["trainable_params"] / S["model_params"]
    S["in_domain"] = S["eval_set"] == S["task"]
    primary = {
        t: next((m for m in PRIMARY_ORDER if m in set(g["metric"])), g["metric"].iloc[0]) for t, g in S.groupby("task")
    }
    S["primary"] = S["metric"] == S["task"].map(primary)
    first = {
        c: {v: i for i, v in enumerate(dict.fromkeys(S[c]))}
        for c in ("task", "method", "variant", "eval_set", "metric")
    }
    rank = lambda r: (  # noqa: E731
        first["task"][r["task"]],
        r["model_params"],
        r["model"],
        first["method"][r["method"]],
        *[_num(r[k]) for k in hp_cols],
        first["variant"][r["variant"]],
        _num(r["train_size"]),
        not r["in_domain"],
        first["eval_set"][r["eval_set"]],
        first["metric"][r["metric"]],
    )
    return pd.DataFrame(sorted(S.to_dict("records"), key=rank), columns=S.columns).round(4)


def system(row: dict, outputs: dict, metrics: dict, suffix: str = "") -> System:
    """A summary row (or one side `suffix` of a merged pair of rows) as bench.report.stats sees it; `outputs`: cell
    dir -> per-example outputs by eval set (None where the record has none); `metrics`: task -> its metric names."""
    from bench.harness.method import get_method
    from bench.harness.tasks import eval_scorer, get_task

    get = lambda key: row[key + suffix] if key + suffix in row else row[key]  # a merge key has no suffix  # noqa: E731
    metric, eval_set = get("metric"), get("eval_set")
    per_seed = [(outputs.get(d) or {}).get(eval_set) for d in get("dirs")]
    base = min((m for m in metrics[get("task")] if metric == m or metric.startswith(m + "_")), key=len, default=metric)
    score = get_method(get("method")).score_outputs
    scorer = eval_scorer(get_task(get("task")), eval_set)  # the eval set's official scorer (generation)
    return System(
        space=f"{get('task')}/{eval_set}",
        metric=metric,
        seeds=tuple(get("seed_list")),
        values=np.array(get("values"), dtype=float),
        outputs=None if any(rows is None for rows in per_seed) else per_seed,
        scorer=lambda rows: score(rows, [base], scorer)[metric],
        scorer_name=scorer or "",
    )


def add_intervals(S: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """S with each row's 95% interval (`ci_low`, `ci_high`) and how it was computed (`interval`)."""
    outputs = dict(zip(cells["dir"], cells["outputs"]))
    metrics = S.groupby("task")["metric"].agg(set).to_dict()
    found = [interval([system(r, outputs, metrics)], [1.0]) for r in S.to_dict("records")]
    return S.assign(
        ci_low=[round(i.low, 4) if i else math.nan for i in found],
        ci_high=[round(i.high, 4) if i else math.nan for i in found],
        interval=[i.method if i else "n/a (one seed, no per-example outputs)" for i in found],
    )


def paired_difference(cells: pd.DataFrame, S: pd.DataFrame):
    """A function (row, reference row) -> the 95% interval of row − reference on their shared eval examples."""
    outputs = dict(zip(cells["dir"], cells["outputs"]))
    metrics = S.groupby("task")["metric"].agg(set).to_dict()
    return lambda row, ref: interval([system(row, outputs, metrics), system(ref, outputs, metrics)], [1.0, -1.0])
