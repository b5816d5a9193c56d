"""One registry per axis: a claim kind and a metric are each added in one place, and everything that reads that
axis (claim evaluation and the claims page; scoring, the bootstrap and the report's direction) uses it."""

import pandas as pd
import pytest

from bench.api.errors import BenchError
from bench.report import claims


@pytest.fixture()
def claim_kinds(monkeypatch):
    monkeypatch.setattr(claims, "CLAIM_KINDS", dict(claims.CLAIM_KINDS))
    return claims.CLAIM_KINDS


def test_a_claim_kind_is_added_in_one_place(claim_kinds):
    seen = []

    @claims.claim_kind("nothing_yet")
    def check_nothing_yet(claim, c):
        seen.append((claim.S.empty, c["kind"]))
        return [], ["nothing to compare yet"], ["cell lora/x: not run"], ""

    claim = {
        "id": "c1",
        "statement": "A new kind.",
        "source": "test",
        "paper": "-",
        "check": {"kind": "nothing_yet", "hypothesis": "superiority", "margin": 0},
    }
    (result,) = claims.evaluate_claims(pd.DataFrame(), pd.DataFrame(), [], [claim])
    assert seen == [(True, "nothing_yet")] and result["verdict"] == "not run"
    assert "nothing_yet" in claims.claims_md("g", [result])  # the claims page lists the kinds it knows
    with pytest.raises(BenchError, match="unknown check kind 'nosuch': use one of compare, .*nothing_yet"):
        claims.evaluate_claims(pd.DataFrame(), pd.DataFrame(), [], [{**claim, "check": {"kind": "nosuch"}}])


def test_the_built_in_claim_kinds_keep_their_order():
    assert list(claims.CLAIM_KINDS) == [
        "compare",
        "shift_drop",
        "gap_shrinks",
        "ordering",
        "plateau",
        "spread",
        "time_to_fraction",
        "retention",
    ]
    assert [k for k, v in claims.CLAIM_KINDS.items() if not v.reads_summary] == ["time_to_fraction", "retention"]


@pytest.fixture()
def metrics(monkeypatch):
    from bench.api import metrics as registry

    monkeypatch.setattr(registry, "METRICS", dict(registry.METRICS))
    import bench.harness.evaluation as evaluation

    monkeypatch.setattr(evaluation, "METRICS", registry.METRICS)
    return registry


def test_a_metric_is_added_in_one_place(metrics):
    """error_rate, registered here only: cells score it, and the report's bootstrap resamples its per-example
    values (a mean over examples: no re-scoring per replicate)."""
    import numpy as np

    from bench.harness.evaluation import score_outputs
    from bench.report.stats import System, _decomposed

    metrics.register_metric(
        metrics.Metric(
            "error_rate",
            higher_is_better=False,
            value=lambda p, y: 100.0 * sum(a != b for a, b in zip(p, y)) / len(y),
            per_example=lambda row: 100.0 * (row["pred"] != row["gold"]),
        )
    )
    rows = [{"pred": 1, "gold": 1}, {"pred": 0, "gold": 1}, {"pred": 0, "gold": 0}, {"pred": 1, "gold": 0}]
    assert score_outputs(rows, ["accuracy", "error_rate"]) == {"accuracy": 50.0, "error_rate": 50.0}
    system = System("sst2/sst2", "error_rate", (0,), np.array([50.0]), [rows], scorer=lambda r: 0.0)
    ((kind, values),) = _decomposed(system, [rows])
    assert kind == "mean" and values.tolist() == [0.0, 100.0, 0.0, 100.0]


def test_each_scorer_computes_the_metrics_registered_for_it():
    from bench.harness.scorers import METRICS

    assert METRICS == {
        "e2e-metrics": ("bleu", "nist", "meteor", "rouge_l", "cider"),
        "webnlg-2017": ("bleu", "meteor"),
        "dart": ("bleu", "meteor"),
        "rouge-score": ("rouge_1", "rouge_2", "rouge_l"),
    }
