"""Learning curves, retention and one base for many tasks (issue #17), on tiny models built in code."""

import math
import time

import pytest
import torch

from bench.api.errors import BenchError
from bench.harness.cell import CellConfig, plan_cell, run_cell

CURVE_HP = {"steps": 4, "batch_size": 4, "max_len": 48, "eval_every": 2, "curve_limit": 8}


def _cell(**changes):
    settings = dict(
        task="sst2",
        model="tiny-llama",
        method="lora",
        train_size=16,
        seed=0,
        hp={**CURVE_HP, "lr": 1e-2},
        eval_limit=8,
        shifts=(),
    )
    settings.update(changes)
    return CellConfig(**settings)


@pytest.mark.parametrize(
    "method,hp", [("lora", {"lr": 1e-2}), ("prompt_tuning", {"num_virtual_tokens": 4, "optimizer": "adamw", "lr": 0.3})]
)
def test_curve_ends_at_the_final_score_and_keeps_its_time_apart(models_cache, tmp_path, method, hp):
    record = run_cell(_cell(method=method, hp={**CURVE_HP, **hp}), tmp_path, threads=1)
    curve = record["curve"]
    assert [p["step"] for p in curve["points"]] == [0, 2, 4]
    assert curve["eval_set"] == "sst2" and curve["n"] == 8 and len(curve["ids"]) == 8
    # curve_limit = eval_limit: the curve's set is the eval set, so its last point is the record's score
    assert curve["points"][-1]["score"] == record["metrics"]["sst2"]["accuracy"]
    last = curve["points"][-1]["correct"]
    assert 100.0 * last.count("1") / len(last) == record["metrics"]["sst2"]["accuracy"]
    seconds = [p["train_s"] for p in curve["points"]]
    assert seconds[0] == 0.0 and seconds == sorted(seconds) and seconds[-1] <= record["cost"]["train_s"] + 1e-3
    assert record["cost"]["curve_eval_s"] == curve["eval_s"] > 0


def test_periodic_evaluation_time_is_not_training_time(models_cache, tiny_llama):
    from bench.harness.batches import training_batches
    from bench.harness.method import CellContext, get_method, resolve_hparams
    from bench.harness.tasks import get_task, train_examples
    from bench.harness.train import train

    model, tokenizer, _ = tiny_llama
    task, method = get_task("sst2"), get_method("lora")
    hp = resolve_hparams(method, {**CURVE_HP, "lr": 1e-2})
    ctx = CellContext(task=task, model_kind="causal_lm", tokenizer=tokenizer, train_examples=[])
    model = method.apply(model, hp, ctx)
    calls, pause = [], 0.4

    def slow_eval(m, step, train_s):
        calls.append((step, train_s))
        time.sleep(pause)

    examples = train_examples(task, 16, 0)
    start = time.perf_counter()
    result = train(
        model,
        method,
        hp,
        training_batches(tokenizer, task, "causal_lm", examples, 4, 48, 0, True),
        "causal_lm",
        on_eval=slow_eval,
    )
    wall = time.perf_counter() - start
    assert [step for step, _ in calls] == [0, 2, 4]
    assert result.curve_eval_s >= 3 * pause
    assert result.train_s <= wall - 3 * pause + 0.05  # the sleeps are not in train_s
    # nor in the training seconds each point records: the last point, taken after the last step, is all of train_s
    assert calls[-1][1] == pytest.approx(result.train_s, abs=0.05)


def test_curve_is_off_by_default(models_cache, tmp_path):
    record = run_cell(_cell(hp={"steps": 2, "batch_size": 4, "max_len": 48}), tmp_path, threads=1)
    assert "curve" not in record and "retention" not in record
    assert "curve_eval_s" not in record["cost"] and "retention_s" not in record["cost"]


def test_bad_curve_and_retention_settings_are_refused_at_plan_time(models_cache):
    for changes, words in [
        ({"hp": {"steps": 0, "eval_every": 2}}, "needs a cell that trains"),
        ({"hp": {"eval_every": -1}}, "eval_every >= 0"),
        ({"hp": {"retention": True, "retention_task": "sst2"}}, "other than the cell's"),
        ({"hp": {"retention": True, "retention_task": "e2e"}}, "classification task"),
        ({"hp": {"retention_task": "qqp"}}, "retention is off"),
        ({"hp": {"retention": True}, "model": "tiny-bert"}, "need a causal LM"),
    ]:
        with pytest.raises(BenchError, match=words):
            plan_cell(_cell(**changes))


def _direct_passage_nll(model, tokenizer, texts):
    """Summed next-token cross-entropy per text, from the model's own `loss` (mean over tokens) one text at a time."""
    from bench.harness.retention import TOKENS
    from bench.harness.tokens import prompt_ids

    out = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([prompt_ids(tokenizer, text)[:TOKENS]])
            labels = ids.clone()
            labels[0, 0] = -100  # nothing predicts the first token (peft's soft prompt would: not ours to score)
            out.append(model(input_ids=ids, labels=labels).loss.item() * (ids.shape[1] - 1))
    return out


def test_retention_loss_equals_the_models_own_loss(models_cache, tiny_llama):
    from bench.harness.method import CellContext, get_method, resolve_hparams
    from bench.harness.retention import PASSAGES, Retention
    from bench.harness.tasks import get_task

    model, tokenizer, _ = tiny_llama
    hp = resolve_hparams(get_method("lora"), {"retention": True, "retention_task": "qqp", "max_len": 48})
    retention = Retention(tokenizer, hp)
    assert len(retention.texts) == PASSAGES and len(set(retention.texts)) == PASSAGES
    base = retention.measure(model)
    assert base["nll"] == pytest.approx(_direct_passage_nll(model, tokenizer, retention.texts), rel=1e-4, abs=1e-3)
    # a soft prompt: its virtual tokens' logits are dropped, the same tokens are scored (peft's own loss pads the
    # labels of the virtual tokens with -100)
    method = get_method("prompt_tuning")
    pt_hp = resolve_hparams(method, {"num_virtual_tokens": 3})
    ctx = CellContext(task=get_task("sst2"), model_kind="causal_lm", tokenizer=tokenizer)
    prompted = method.apply(model, pt_hp, ctx).eval()
    adapted = retention.measure(prompted, 3)
    assert adapted["nll"] == pytest.approx(
        _direct_passage_nll(prompted, tokenizer, retention.texts), rel=1e-4, abs=1e-3
    )
    assert adapted["tokens"] == base["tokens"] and adapted["nll"] != base["nll"]
    record = retention.record(base, adapted)
    lm = record["lm"]
    assert lm["base"]["loss"] == pytest.approx(sum(base["nll"]) / sum(base["tokens"]), abs=1e-5)
    assert lm["base"]["perplexity"] == pytest.approx(math.exp(lm["base"]["loss"]), rel=1e-4)
    zero_shot = record["zero_shot"]
    assert zero_shot["task"] == "qqp" and len(zero_shot["base_correct"]) == zero_shot["n"] == len(zero_shot["ids"])


def test_retention_in_a_cell_record(models_cache, tmp_path):
    record = run_cell(
        _cell(hp={**CURVE_HP, "lr": 1e-2, "retention": True, "retention_task": "qqp"}), tmp_path, threads=1
    )
    retention = record["retention"]
    assert retention["text"]["dataset"] == "xsum/test"
    assert "xsum_sample/xsum_articles_321.jsonl" in record["inputs"]["data"]
    assert "qqp_subset/qqp_subset.tsv" in record["inputs"]["data"]
    assert retention["lm"]["loss_increase"] == pytest.approx(
        retention["lm"]["adapted"]["loss"] - retention["lm"]["base"]["loss"], abs=1e-5
    )
    assert record["cost"]["retention_s"] == retention["seconds"] > 0


FROZEN_BASE = {
    "lora": {"lr": 0.05},
    "ia3": {"lr": 0.5},
    "prompt_tuning": {"num_virtual_tokens": 3, "lr": 0.5},
    "prefix_tuning": {"prefix_length": 3, "lr": 0.05},
    "p_tuning": {"num_virtual_tokens": 3, "lr": 0.05},
}


@pytest.mark.parametrize("name", sorted(FROZEN_BASE))
def test_removing_the_delta_gives_the_base_back_bit_for_bit(models_cache, name):
    """A trained peft delta, disabled (`disable_adapter`) or removed (`unload`, or the wrapped base model for the
    prompt methods), leaves exactly the weights and logits of a freshly loaded base."""
    from bench.harness.batches import training_batches
    from bench.harness.method import CellContext, get_method, resolve_hparams
    from bench.harness.models import load_model
    from bench.harness.tasks import get_task, train_examples
    from bench.harness.train import train

    method, task = get_method(name), get_task("sst2")
    assert not method.tunes_base
    model, tokenizer, _ = load_model("tiny-llama", cache=models_cache)
    fresh, _, _ = load_model("tiny-llama", cache=models_cache)
    hp = resolve_hparams(
        method, {"steps": 3, "batch_size": 4, "max_len": 48, "optimizer": "adamw", **FROZEN_BASE[name]}
    )
    ctx = CellContext(task=task, model_kind="causal_lm", tokenizer=tokenizer, train_examples=train_examples(task, 8, 0))
    adapted = method.apply(model, hp, ctx)
    train(
        adapted,
        method,
        hp,
        training_batches(tokenizer, task, "causal_lm", ctx.train_examples, 4, 48, 0, True),
        "causal_lm",
    )
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    adapted.eval(), fresh.eval()
    with torch.no_grad():
        base_logits = fresh(input_ids=ids).logits
        assert not torch.equal(adapted(input_ids=ids).logits[:, -ids.shape[1] :], base_logits)  # it did train
        with adapted.disable_adapter():
            assert torch.equal(adapted(input_ids=ids).logits, base_logits)
    removed = adapted.get_base_model() if adapted.peft_config["default"].is_prompt_learning else adapted.unload()
    expected = fresh.state_dict()
    got = removed.state_dict()
    assert set(got) == set(expected)
    assert all(torch.equal(got[key], expected[key]) for key in expected)


def _trained(models_cache, tmp_path, method, task, hp):
    shifts = ()
    config = CellConfig(
        task=task,
        model="tiny-llama",
        method=method,
        train_size=16,
        seed=0,
        hp={"steps": 2, "batch_size": 4, "max_len": 64, **hp},
        eval_limit=12,
        shifts=shifts,
    )
    out = tmp_path / f"{task}-{method}"
    run_cell(config, out, threads=1)
    return str(out)


@pytest.mark.parametrize(
    "method,hp", [("lora", {"lr": 0.05}), ("prompt_tuning", {"num_virtual_tokens": 3, "optimizer": "adamw", "lr": 0.5})]
)
def test_serve_mixed_scores_each_example_as_its_own_cell(models_cache, tmp_path, method, hp):
    from bench.tools.serve import compare, length_batches, score_mixed, serve, setup

    cells = [_trained(models_cache, tmp_path, method, task, hp) for task in ("sst2", "qqp")]
    mixed = setup(cells)
    assert any(len({mixed.rows[r][0] for r in batch}) == 2 for batch in length_batches(mixed.rows, 5))  # mixes
    # the fast paths are the ones taken: LoRA updates from stacked weights, soft prompts from cached states
    assert (mixed.mixed.stacks if method == "lora" else mixed.mixed.states) is not None
    result = serve(cells, batch_size=5)
    assert result["kind"] == ("lora" if method == "lora" else "prompt")
    assert result["examples"] == 24 and result["pred_differs"] == []
    assert result["max_abs_diff"] <= 1e-4 and result["equal"]
    # the check can fail: each row under the other cell's delta gives other scores
    swapped = [(1 - owner, sequence, scored) for owner, sequence, scored in mixed.rows]
    scores = score_mixed(mixed.mixed, mixed.tokenizer.pad_token_id, swapped, 5)
    assert compare(mixed, {(1 - owner, i): values for (owner, i), values in scores.items()})[0] > 1e-3


@pytest.mark.parametrize(
    "method,hp", [("lora", {"lr": 0.05}), ("prompt_tuning", {"num_virtual_tokens": 3, "optimizer": "adamw", "lr": 0.5})]
)
def test_serving_path_over_one_adapted_model_scores_as_its_cell(models_cache, tmp_path, method, hp):
    """Item 9's second baseline: the serving path over a separately adapted model (`Mixed(..., adapted=)`, as
    `Method.load_delta` builds it) gives the cell's own scores; it refuses more than one cell."""
    from bench.harness.method import get_method
    from bench.harness.models import load_model
    from bench.tools.serve import Mixed, compare, score_mixed, setup

    cells = [_trained(models_cache, tmp_path, method, task, hp) for task in ("sst2", "qqp")]
    s = setup(cells)
    cell = s.cells[1]
    adapted = get_method(method).load_delta(load_model("tiny-llama")[0], cell.hp, None, cell.dir / "delta").eval()
    alone = Mixed(None, [cell], adapted=adapted)
    own = [(0, sequence, scored) for owner, sequence, scored in s.rows if owner == 1]
    scores = {(1, i): values for (_, i), values in score_mixed(alone, s.tokenizer.pad_token_id, own, 5).items()}
    worst, wrong = compare(s, scores)
    assert len(scores) == 12 and not wrong and worst <= 1e-4
    with pytest.raises(BenchError, match="one cell"):
        Mixed(None, s.cells, adapted=adapted)


def test_serve_mixed_soft_prompts_of_different_lengths(models_cache, tmp_path):
    """Prompts of 3 and 5 tokens in one batch (each row built after its own prompt, not one `cat`): the cells' own
    scores, in one batch and in odd ones."""
    from bench.tools.serve import serve, setup

    cells = [
        _trained(models_cache, tmp_path, "prompt_tuning", task, {"num_virtual_tokens": n, "lr": 0.5})
        for task, n in (("sst2", 3), ("qqp", 5))
    ]
    assert setup(cells).mixed.states is None  # no cached prompt states: each row carries its prompt
    for batch_size in (24, 5):
        result = serve(cells, batch_size=batch_size)
        assert result["pred_differs"] == [] and result["max_abs_diff"] <= 1e-4 and result["equal"]


def test_serve_mixed_refuses_a_mix_of_delta_kinds(models_cache, tmp_path):
    from bench.tools.serve import serve

    cells = [
        _trained(models_cache, tmp_path, "lora", "sst2", {"lr": 0.05}),
        _trained(models_cache, tmp_path, "prompt_tuning", "qqp", {"num_virtual_tokens": 3}),
    ]
    with pytest.raises(BenchError, match="mix delta kinds"):
        serve(cells)


# ------------------------------------------------------------------ report: synthetic records with a known truth
def _synthetic_cell(root, method, seed, reach_step, loss_increase, rng, items=60, passages=20):
    """A record whose curve (steps 0..40 every 8) rises from 50% to 90% at `reach_step`, and whose adapted LM loss
    is the base's plus `loss_increase` nats per token (with per-passage noise)."""
    import json

    steps = list(range(0, 41, 8))
    points = []
    for step in steps:
        accuracy = 0.5 if step < reach_step else 0.9
        right = round(accuracy * items)  # exactly, in a random order
        correct = "".join(str(b) for b in rng.permutation([1] * right + [0] * (items - right)))
        points.append(
            {"step": step, "train_s": step * 0.5, "score": 100.0 * correct.count("1") / items, "correct": correct}
        )
    tokens = [127] * passages
    base = [float(rng.uniform(400, 500)) for _ in range(passages)]
    adapted = [b + 127 * loss_increase + float(rng.normal(0, 5)) for b in base]
    record = {
        "curve": {
            "eval_set": "sst2",
            "metric": "accuracy",
            "n": items,
            "ids": [str(i) for i in range(items)],
            "eval_s": 1.0,
            "points": points,
        },
        "retention": {"lm": {"base_nll": base, "adapted_nll": adapted, "tokens": tokens}},
    }
    cell_dir = root / method / f"s{seed}"
    cell_dir.mkdir(parents=True)
    (cell_dir / "record.json").write_text(json.dumps(record))
    return {
        "grid": "g",
        "task": "sst2",
        "model": "m",
        "method": method,
        "variant": method,
        "train_size": "200",
        "seed": seed,
        "dir": str(cell_dir),
        "status": "ok",
    }


def test_time_to_quality_and_retention_claims_decide_a_known_truth(tmp_path):
    import numpy as np
    import pandas as pd

    from bench.report.curves import curve_groups, curve_tables, reach, records, retention_tables, to_fraction

    rng = np.random.default_rng(0)
    cells = pd.DataFrame(
        [_synthetic_cell(tmp_path, "prompt_tuning", s, 32, 0.0, rng) for s in range(3)]
        + [_synthetic_cell(tmp_path, "full_ft", s, 8, 0.3, rng) for s in range(3)]
    )
    # the first point at start + f · (final − start); none where the score never rises
    assert list(reach(np.array([[50.0, 60, 86, 90], [50, 95, 90, 90], [70, 60, 50, 50]]), 0.9)) == [2, 1, -1]
    groups = curve_groups(records(cells))
    pt = groups[("sst2", "m", "prompt_tuning", "200", "prompt_tuning", "g")]
    assert to_fraction(pt, np.ones(3), np.ones(60), 0.9) == 32.0
    assert to_fraction(pt, np.ones(3), np.ones(60), 0.9, "seconds") == 16.0
    slower = {"left": {"method": "prompt_tuning"}, "right": {"method": "full_ft"}, "fraction": 0.9, "margin": 0}
    verdict, found, gone = _verdict("time_to_fraction", cells, {**slower, "op": ">"})
    assert verdict == "reproduced" and not gone and round(found[0].interval.estimate) == 24
    assert _verdict("time_to_fraction", cells, {**slower, "op": "<"})[0] == "contradicted"
    forgets_less = {
        "left": {"method": "prompt_tuning"},
        "right": {"method": "full_ft"},
        "margin": 0,
        "measure": "lm_loss_increase",
    }
    assert _verdict("retention", cells, {**forgets_less, "op": "<"})[0] == "reproduced"
    assert _verdict("retention", cells, {**forgets_less, "op": ">"})[0] == "contradicted"
    missing = _verdict("retention", cells, {**forgets_less, "left": {"method": "lora"}})
    assert missing[0] == "not run" and missing[2] and not missing[1]
    found = records(cells)
    assert len(curve_tables(found)[0].rows) == 2 and len(retention_tables(found)[0].rows) == 2


def test_identical_methods_are_rarely_called_different(tmp_path):
    """Two methods with the same true curve and no forgetting difference: the claims are not reproduced."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(1)
    cells = pd.DataFrame(
        [_synthetic_cell(tmp_path, method, s, 16, 0.1, rng) for method in ("lora", "full_ft") for s in range(3)]
    )
    check = {"left": {"method": "lora"}, "right": {"method": "full_ft"}, "margin": 0}
    assert _verdict("time_to_fraction", cells, {**check, "op": ">"})[0] != "reproduced"
    assert _verdict("retention", cells, {**check, "op": "<"})[0] != "reproduced"


def _verdict(kind: str, cells, check: dict):
    """A curves claim's verdict, its findings and what is missing (superiority at the check's margin)."""
    from bench.report.curves import check_retention, check_time_to_fraction
    from bench.report.verdicts import decide, verdict_of

    checks = {"time_to_fraction": check_time_to_fraction, "retention": check_retention}
    comparisons, _, gone = checks[kind](cells, check, float(check["margin"]))
    found = decide(comparisons, "superiority")
    return verdict_of(found)[0], found, gone
