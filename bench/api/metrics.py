"""The metrics, each defined once: its name, its direction and scale, how a classification metric is computed from
predictions, its per-example value where it is a mean over examples (what the report's bootstrap resamples), and
the official scorers that compute a generation metric (bench/harness/scorers.py implements them; its corpus-level
statistics for the bootstrap are in bench/report/stats.py). A new metric: one `register_metric` call."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool = True
    scale: str = "×100"  # "×100": 0–100 | "raw": the scorer's own units (NIST, CIDEr)
    value: Callable[[list[int], list[int]], float] | None = None  # classification: (predictions, labels) -> value
    per_example: Callable[[dict], float] | None = None  # a mean over examples: an output row's value
    scorers: tuple[str, ...] = ()  # generation: the official scorers that compute it


METRICS: dict[str, Metric] = {}


def register_metric(metric: Metric) -> Metric:
    METRICS[metric.name] = metric
    return metric


def per_example(name: str) -> Callable[[dict], float] | None:
    """The per-example value of a metric that is a mean over examples, else None."""
    metric = METRICS.get(name)
    return metric.per_example if metric else None


def scorer_metrics(scorer: str) -> tuple[str, ...]:
    """The metrics an official scorer computes, in registration order."""
    return tuple(m.name for m in METRICS.values() if scorer in m.scorers)


def _accuracy(predictions: list[int], labels: list[int]) -> float:
    return 100.0 * sum(p == y for p, y in zip(predictions, labels)) / len(labels)


def _f1(predictions: list[int], labels: list[int]) -> float:
    """Binary: F1 of class 1; else macro-F1."""
    classes = sorted(set(labels) | set(predictions))
    f1s = []
    for c in classes if len(classes) > 2 else [1]:
        tp = sum(p == c and y == c for p, y in zip(predictions, labels))
        fp = sum(p == c and y != c for p, y in zip(predictions, labels))
        fn = sum(p != c and y == c for p, y in zip(predictions, labels))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return 100.0 * sum(f1s) / len(f1s)


E2E, WEBNLG, DART, ROUGE = "e2e-metrics", "webnlg-2017", "dart", "rouge-score"
for builtin in (
    Metric("accuracy", value=_accuracy, per_example=lambda row: 100.0 * (row["pred"] == row["gold"])),
    Metric(
        "accuracy_avg_single",  # prompt_ensemble: each prompt alone, averaged
        per_example=lambda row: 100.0 * sum(p == row["gold"] for p in row["preds"]) / len(row["preds"]),
    ),
    Metric("f1", value=_f1),
    Metric("bleu", scorers=(E2E, WEBNLG, DART)),
    Metric("nist", scale="raw", scorers=(E2E,)),
    Metric("meteor", scorers=(E2E, WEBNLG, DART)),
    Metric("rouge_1", scorers=(ROUGE,)),
    Metric("rouge_2", scorers=(ROUGE,)),
    Metric("rouge_l", scorers=(E2E, ROUGE)),
    Metric("cider", scale="raw", scorers=(E2E,)),
):
    register_metric(builtin)
