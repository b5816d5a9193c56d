"""Records -> results/<grid>/summary.csv and reports/<grid>/README.md. Reads records only; never trains.

Scores are means over seeds with their standard deviation and seed count. Cells of the grid that
have no record (never ran, or failed) and cells that diverged are listed, not dropped. Records
written by other harness code than the current one are marked stale.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from bench.cell import harness_hash
from bench.grid import grid_cells

PRIMARY_ORDER = ("accuracy", "bleu", "rouge_l", "rouge_1", "f1")


def load_records(grid: str) -> tuple[pd.DataFrame, list[str]]:
    """One row per (record, eval set, metric); plus the cell dirs that have no record."""
    current = harness_hash()
    rows, missing = [], []
    for cell in grid_cells(grid):
        path = Path(cell.dir) / "record.json"
        if not path.exists():
            missing.append(cell.dir)
            continue
        record = json.loads(path.read_text())
        base = {"task": cell.task, "model": cell.model, "method": cell.method, "train_size": str(cell.train_size),
                "seed": cell.seed, "status": record["status"],
                "stale": record["env"]["harness_sha256"] != current, **record["cost"]}
        if record["status"] != "ok":
            rows.append({**base, "eval_set": None, "metric": None, "value": None})
        for eval_set, metrics in record["metrics"].items():
            for metric, value in metrics.items():
                if isinstance(value, float):
                    rows.append({**base, "eval_set": eval_set, "metric": metric, "value": value})
    return pd.DataFrame(rows), missing


def summarize(frame: pd.DataFrame) -> pd.DataFrame:
    keys = ["task", "model", "method", "train_size", "eval_set", "metric"]
    ok = frame[frame["status"] == "ok"]
    return ok.groupby(keys, sort=False).agg(
        mean=("value", "mean"), std=("value", "std"), seeds=("seed", "nunique"),
        trainable_params=("trainable_params", "first"), total_params=("total_params", "first"),
        delta_bytes=("delta_bytes", "mean"), peak_mem_bytes=("peak_mem_bytes", "mean"),
        train_tokens_per_s=("train_tokens_per_s", "mean"), eval_tokens_per_s=("eval_tokens_per_s", "mean"),
        train_s=("train_s", "mean"), eval_s=("eval_s", "mean"), stale=("stale", "any")).reset_index()


def _score(mean: float, std: float, seeds: int) -> str:
    return f"{mean:.1f}" if seeds < 2 else f"{mean:.1f} ± {std:.1f} (n={seeds})"


def task_table(summary: pd.DataFrame, task: str) -> str:
    rows = summary[summary["task"] == task]
    primary = next(m for m in PRIMARY_ORDER if m in set(rows["metric"]))
    eval_sets = list(dict.fromkeys(rows["eval_set"]))
    header = ["model", "method", "train size", *[f"{e} {primary}" for e in eval_sets],
              "trainable params", "trainable %", "delta MB", "peak mem GB", "train tok/s", "eval tok/s"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (model, method, size), group in rows[rows["metric"] == primary].groupby(
            ["model", "method", "train_size"], sort=False):
        by_set = {r.eval_set: r for r in group.itertuples()}
        first = group.iloc[0]
        cells = [model, method + (" (stale)" if group["stale"].any() else ""), size,
                 *[_score(by_set[e].mean, by_set[e].std, by_set[e].seeds) if e in by_set else "–" for e in eval_sets],
                 f"{int(first.trainable_params):,}", f"{100 * first.trainable_params / first.total_params:.3f}",
                 f"{first.delta_bytes / 2**20:.2f}", f"{first.peak_mem_bytes / 2**30:.2f}",
                 f"{first.train_tokens_per_s:.0f}", f"{first.eval_tokens_per_s:.0f}"]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def write_report(grid: str) -> list[Path]:
    frame, missing = load_records(grid)
    summary_path = Path("results") / grid / "summary.csv"
    report_path = Path("reports") / grid / "README.md"
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.parent.mkdir(parents=True, exist_ok=True)
    summary = summarize(frame) if len(frame) else pd.DataFrame()
    summary.to_csv(summary_path, index=False)
    parts = [f"# Report: grid `{grid}`", "",
             "Scores are percentages (accuracy) or corpus BLEU / ROUGE F ×100; mean over seeds. "
             "Peak memory is the cell process's peak RSS on CPU (max allocated on CUDA).", ""]
    for task in dict.fromkeys(summary["task"]) if len(summary) else []:
        parts += [f"## {task}", "", task_table(summary, task), ""]
    bad = frame[frame["status"] != "ok"] if len(frame) else frame
    if len(bad) or missing:
        parts += ["## Cells without a result", ""]
        parts += [f"- {r.task}/{r.model}/{r.method}/n{r.train_size}/s{r.seed}: {r.status}"
                  for r in bad.drop_duplicates(["task", "model", "method", "train_size", "seed"]).itertuples()]
        parts += [f"- {cell}: no record (not run or failed; see its log in results/{grid}/logs/)" for cell in missing]
        parts.append("")
    if len(frame) and frame["stale"].any():
        parts += ["Cells marked (stale) were computed with older harness code; rerun them with "
                  f"`snakemake --cores all --config grid={grid} --forcerun cell` or delete their records.", ""]
    report_path.write_text("\n".join(parts))
    return [summary_path, report_path]
