"""config/claims.yaml names only tasks, eval sets, methods and metrics that exist: a misspelt selector would
leave a claim "not run" forever without saying why."""

from pathlib import Path

import yaml

from bench.harness.method import method_names
from bench.harness.tasks import get_task, task_names

CLAIMS = yaml.safe_load((Path(__file__).parents[1] / "config" / "claims.yaml").read_text())["claims"]
ENSEMBLE_SUFFIXES = ("", "_avg_single", "_best_single", "_mean_logprob")  # methods/prompt_ensemble.py


def _values(selector: dict, key: str) -> list:
    value = selector.get(key, [])
    return value if isinstance(value, list) else [value]


def _selectors(claim: dict) -> list[dict]:
    check = claim["check"]
    where = check.get("where", {})
    return [{**where, **check[side]} for side in ("left", "right") if side in check] or [where]


def test_claims_name_known_tasks_eval_sets_methods_and_metrics():
    known_metrics = {
        m + suffix for name in task_names() for m in get_task(name).metrics for suffix in ENSEMBLE_SUFFIXES
    }
    for claim in CLAIMS:
        assert {"id", "source", "headline", "statement", "paper", "check"} <= set(claim), claim["id"]
        assert "unverified" not in yaml.safe_dump(claim["paper"]), claim["id"]
        for selector in _selectors(claim):
            tasks = _values(selector, "task")
            assert set(tasks) <= set(task_names()), claim["id"]
            assert set(_values(selector, "method")) <= set(method_names()), claim["id"]
            assert set(_values(selector, "metric")) <= known_metrics, claim["id"]
            for task in tasks:
                assert set(_values(selector, "eval_set")) <= set(get_task(task).eval_sets), claim["id"]
                assert set(_values(selector, "metric")) <= set(get_task(task).metrics), claim["id"]
        if claim["check"]["kind"] == "ordering" and claim["check"]["by"] == "method":
            assert set(claim["check"]["order"]) <= set(method_names()), claim["id"]


def test_a_claim_over_metrics_of_different_scales_has_a_margin_per_metric():
    from bench.report.claims import _margin

    per_metric = {"margin": {"default": 1.0, "nist": 0.1, "cider": 0.05}}
    assert [_margin(per_metric, m) for m in ("bleu", "nist", "cider")] == [1.0, 0.1, 0.05]
    assert _margin(per_metric) == 1.0 and _margin({"margin": 2}) == 2.0


def test_every_claim_states_its_test_and_both_quantities():
    """Each claim says what it tests (hypothesis, a margin >= 0 in the metric's units) and, side by side, the
    paper's quantity and ours; a renamed claim keeps its old id in `was`."""
    from bench.report.claims import _checked
    from bench.report.verdicts import HYPOTHESES

    ids = [claim["id"] for claim in CLAIMS]
    assert len(ids) == len(set(ids))
    for claim in CLAIMS:
        check = _checked(claim)
        assert check["hypothesis"] in HYPOTHESES, claim["id"]
        assert set(claim["quantity"]) == {"paper", "ours"}, claim["id"]
        if "matches" in claim["id"]:  # "matches" would claim equivalence: it must be tested as one
            assert check["hypothesis"] == "equivalence", claim["id"]


def test_a_claim_that_does_not_state_its_test_is_refused_in_one_line():
    import pytest

    from bench.api.errors import BenchError
    from bench.report.claims import _checked

    claim = {"id": "c", "check": {"kind": "compare", "margin": 1.0}}
    with pytest.raises(BenchError, match="declares no hypothesis: add `hypothesis:`"):
        _checked(claim)
    with pytest.raises(BenchError, match="must be >= 0"):
        _checked({"id": "c", "check": {"kind": "compare", "hypothesis": "superiority", "margin": -1.0}})
    with pytest.raises(BenchError, match="unknown check kind"):
        _checked({"id": "c", "check": {"kind": "nosuch", "hypothesis": "superiority", "margin": 1.0}})
