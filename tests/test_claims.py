"""config/claims.yaml names only tasks, eval sets, methods and metrics that exist: a misspelt selector would
leave a claim "not run" forever without saying why."""
from pathlib import Path

import yaml

from bench.method import method_names
from bench.tasks import get_task, task_names

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
    known_metrics = {m + suffix for name in task_names() for m in get_task(name).metrics
                     for suffix in ENSEMBLE_SUFFIXES}
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
    from bench.report_claims import _margin

    per_metric = {"margin": {"default": -1.0, "nist": -0.1, "cider": -0.05}}
    assert [_margin(per_metric, m) for m in ("bleu", "nist", "cider")] == [-1.0, -0.1, -0.05]
    assert _margin(per_metric) == -1.0 and _margin({"margin": 2}) == 2.0
