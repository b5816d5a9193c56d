"""PET (methods/pet.py): pattern cells, the unlabelled pool, ensemble soft labels, the soft-label loss; templates as an
hp; the template-spread statistic."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.api.errors import BenchError
from bench.grid.plan import grid_cells
from bench.harness import tasks as T
from bench.harness.cell import CellConfig, plan_cell, run_cell
from bench.harness.method import CellContext, get_method, resolve_hparams
from bench.report.stats import System
from bench.report.templates import spread_interval

# label words of one byte each: the tiny models' tokenizer is byte-level, and PET needs one token per label word
TASKS_FILE = """
tasks:
  sst2_bytes:
    kind: classification
    template: "{sentence} It was"
    verbalizer: ["N", "P"]
    text_fields: [sentence]
    metrics: [accuracy]
    train: sst2/train
    eval: sst2/dev
    templates:
      review: {template: "Review: {sentence} Sentiment:", verbalizer: ["n", "p"], source: test}
      summary: {template: "{sentence} In summary:", source: test}
"""
HP = {"steps": 2, "batch_size": 4, "max_len": 48, "lr": 1e-2}


@pytest.fixture()
def bytes_task(tmp_path, monkeypatch):
    path = tmp_path / "tasks.yaml"
    path.write_text(TASKS_FILE)
    monkeypatch.setenv(T.TASKS_ENV, str(path))
    return T.get_task("sst2_bytes")


# ------------------------------------------------------------------ the unlabelled pool
def test_the_pool_never_overlaps_the_labelled_sample_and_carries_no_labels(sst2):
    labelled = T.train_examples(sst2, 50, 3)
    pool = T.unlabelled_pool(sst2, labelled, 300, 3)
    keys = {tuple(sorted(ex.fields.items())) for ex in labelled}
    assert len(pool) == 300
    assert not keys & {tuple(sorted(ex.fields.items())) for ex in pool}
    assert all(ex.label is None for ex in pool)
    assert T.unlabelled_pool(sst2, labelled, 120, 3) == pool[:120]  # nested across pool sizes
    assert T.unlabelled_pool(sst2, labelled, 300, 3) == pool  # seeded
    assert T.unlabelled_pool(sst2, T.train_examples(sst2, 50, 4), 300, 4) != pool


def test_the_pool_is_the_permutation_after_the_labelled_sample(sst2):
    """Drawn from the split and the seed that draw the labelled sample: the examples right after it."""
    split = T.load_split(sst2.train_split)
    labelled = T.train_examples(sst2, 20, 0)
    following = [split[i] for i in T._permutation(len(split), 0)[20:60]]
    texts = {ex.fields["sentence"] for ex in labelled}
    expected = [ex.fields for ex in following if ex.fields["sentence"] not in texts][:30]
    assert [ex.fields for ex in T.unlabelled_pool(sst2, labelled, 30, 0)] == expected


def test_fewglue_pools_come_from_superglue_train_less_the_32():
    task = T.get_task("fewglue_rte")
    labelled = T.train_examples(task, "full", 0)
    assert len(labelled) == 32
    pool = T.unlabelled_pool(task, labelled, 500, 0)
    assert not {ex.fields["premise"] + ex.fields["hypothesis"] for ex in labelled} & {
        ex.fields["premise"] + ex.fields["hypothesis"] for ex in pool
    }
    with pytest.raises(BenchError, match="unlabelled pool of 50 does not fit task fewglue_boolq"):
        T.unlabelled_pool(T.get_task("fewglue_boolq"), T.train_examples(T.get_task("fewglue_boolq"), "full", 0), 50, 0)


def test_the_final_stage_never_reads_the_pools_labels(monkeypatch, sst2):
    """The pool reaches the pattern models with label None; the final examples' labels are the ensemble's argmax."""
    pet = get_method("pet")
    seen = []

    def fake_distributions(folder, task, sets):
        pool, labelled = sets
        seen.append([ex.label for ex in pool])
        return [
            torch.full((len(pool), 2), 0.5).index_fill_(1, torch.tensor([1]), 0.8).softmax(-1),
            torch.full((len(labelled), 2), 0.5),
        ]

    monkeypatch.setattr("methods.pet.pattern_distributions", fake_distributions)
    monkeypatch.setattr("methods.pet.pattern_config", lambda *a: {})
    hp = resolve_hparams(pet, {"stage": "final", "patterns": "a,b", "pool_size": 8})
    labelled = T.train_examples(sst2, 8, 0)
    ctx = CellContext(task=sst2, model_kind="causal_lm", tokenizer=None, train_examples=labelled, seed=0)
    out = pet.prepare_train_examples(labelled, hp, ctx)
    assert seen == [[None] * 8, [None] * 8]
    assert [ex.label for ex in out] == [1] * 8 and len(out) == 8


# ------------------------------------------------------------------ soft labels and the loss
def _brute_force_distribution(model, tokenizer, task, ex) -> torch.Tensor:
    """softmax over the label words of their log-probability after the prompt (cut from the left to max_len less the
    one-token label word, as rank scoring does): one sequence at a time, full logits."""
    from bench.harness.tokens import continuation_ids, prompt_ids

    with torch.no_grad():
        ids = torch.tensor([prompt_ids(tokenizer, task.prompt(ex))[-(HP["max_len"] - 1) :]])
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, -1].float(), dim=-1)
    return torch.softmax(torch.stack([logprobs[continuation_ids(tokenizer, w)[0]] for w in task.verbalizer]), dim=-1)


def test_soft_labels_are_the_mean_of_the_pattern_models_distributions(bytes_task, models_cache, tmp_path):
    """Two pattern cells (two templates, two verbalizers) trained by the harness; the final stage's soft labels equal
    the mean, over the patterns, of each pattern model's label distribution computed one example at a time."""
    from bench.harness.models import load_model

    dirs = []
    for template in ("", "review"):
        out = tmp_path / f"pattern-{template or 'default'}"
        run_cell(
            CellConfig("sst2_bytes", "tiny-llama", "pet", 16, 0, {**HP, "template": template}, eval_limit=4, shifts=()),
            out,
            threads=1,
        )
        dirs.append(out)
    pet = get_method("pet")
    labelled = T.train_examples(bytes_task, 16, 0)
    for weighting in ("uniform", "train_accuracy"):
        hp = resolve_hparams(
            pet, {**HP, "stage": "final", "pool_size": 6, "weighting": weighting, "patterns": ",".join(map(str, dirs))}
        )
        ctx = CellContext(task=bytes_task, model_kind="causal_lm", tokenizer=None, train_examples=labelled, seed=0)
        final = pet.prepare_train_examples(labelled, hp, ctx)
        pool = T.unlabelled_pool(bytes_task, labelled, 6, 0)
        expected, weights = torch.zeros(6, 2), []
        for folder in dirs:
            config = json.loads((folder / "record.json").read_text())["config"]
            task = bytes_task.with_template(config["hp"]["template"])
            base, tokenizer, _ = load_model("tiny-llama")
            model = get_method("full_ft").load_delta(base, {}, None, folder / "delta").eval()
            dist = torch.stack([_brute_force_distribution(model, tokenizer, task, ex) for ex in pool])
            accuracy = np.mean(
                [int(_brute_force_distribution(model, tokenizer, task, ex).argmax()) == ex.label for ex in labelled]
            )
            weights.append(accuracy if weighting == "train_accuracy" else 1.0)
            expected += weights[-1] * dist
        expected /= sum(weights)
        assert torch.allclose(pet._soft, expected, atol=1e-5)
        assert [ex.label for ex in final] == expected.argmax(dim=-1).tolist()
        assert [ex.fields for ex in final] == [ex.fields for ex in pool]


def test_the_soft_label_loss_is_the_cross_entropy_to_the_distribution():
    from methods.pet import soft_label_loss

    torch.manual_seed(0)
    logits, soft = torch.randn(5, 3), torch.rand(5, 3)
    soft = soft / soft.sum(-1, keepdim=True)
    brute = (
        -sum(
            float(soft[i, j]) * float(torch.log(torch.exp(logits[i, j]) / torch.exp(logits[i]).sum()))
            for i in range(5)
            for j in range(3)
        )
        / 5
    )
    assert float(soft_label_loss(logits, soft)) == pytest.approx(brute, rel=1e-5)
    gold = torch.tensor([0, 2, 1, 1, 0])  # one-hot soft labels: the ordinary cross-entropy
    one_hot = torch.nn.functional.one_hot(gold, 3).float()
    assert float(soft_label_loss(logits, one_hot)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits, gold)), rel=1e-6
    )


def test_a_final_cell_trains_on_soft_labels_end_to_end(bytes_task, models_cache, tmp_path):
    patterns = []
    for template in ("", "review"):
        patterns.append(tmp_path / f"p-{template or 'default'}")
        run_cell(
            CellConfig("sst2_bytes", "tiny-llama", "pet", 16, 0, {**HP, "template": template}, eval_limit=4, shifts=()),
            patterns[-1],
            threads=1,
        )
    record = run_cell(
        CellConfig(
            "sst2_bytes",
            "tiny-llama",
            "pet",
            16,
            0,
            {**HP, "stage": "final", "pool_size": 12, "patterns": ",".join(map(str, patterns))},
            eval_limit=4,
            shifts=(),
        ),
        tmp_path / "final",
        threads=1,
    )
    assert record["status"] == "ok" and record["train"]["steps"] == 2
    assert record["config"]["hp"]["stage"] == "final"


# ------------------------------------------------------------------ plan-time refusals
@pytest.mark.parametrize(
    "method, hp, message",
    [
        (
            "prompt_design",
            {"template": "nope"},
            "template 'nope' is not one of task sst2's templates: choose one of default, pet_it_was",
        ),
        ("pet", {"stage": "middle"}, "pet stage='middle' unknown: use pattern or final"),
        ("pet", {"stage": "final"}, "pet stage=final needs hp patterns="),
        ("pet", {"base": "prompt_design"}, "pet base=prompt_design trains no weights of its own"),
        ("pet", {"weighting": "max"}, "pet weighting='max' unknown"),
    ],
)
def test_bad_pet_and_template_settings_are_refused_at_plan_time(method, hp, message):
    with pytest.raises(BenchError, match=message.replace("(", r"\(").replace("?", r"\?")):
        plan_cell(CellConfig("sst2", "smollm2-135m", method, 32, 0, hp))


def test_multi_token_label_words_are_refused_with_one_line(models_cache, tmp_path):
    with pytest.raises(BenchError, match="pet needs label words of one distinct token each"):
        run_cell(CellConfig("sst2", "tiny-llama", "pet", 8, 0, HP, eval_limit=2, shifts=()), tmp_path / "x", threads=1)
    assert not (tmp_path / "x" / "record.json").exists()


def test_every_template_of_every_task_formats_its_examples():
    for name in T.task_names():
        task = T.get_task(name)
        for template in task.template_names():
            alt = task.with_template(template)
            assert len(alt.verbalizer) == len(task.verbalizer)
            local = T.get_task(T.task_offline_twin(name) or name)  # a task on hub data: its offline twin's examples
            assert alt.prompt(T.load_split(local.eval_split)[0])


def test_the_pet_grid_wires_the_final_stage_to_its_pattern_cells():
    cells = {c.dir: c for c in grid_cells("pet")}
    finals = [c for c in cells.values() if c.label == "pet_final"]
    assert len(finals) == 3
    for final in finals:
        assert len(final.needs) == 3 and all(n in cells for n in final.needs)
        assert {cells[n].hp["template"] for n in final.needs} == {"pet_it_was", "pet_all_in_all", "pet_in_summary"}
        assert all(cells[n].seed == final.seed and cells[n].train_size == final.train_size for n in final.needs)
        assert final.hp["patterns"] == ",".join(final.needs)


# ------------------------------------------------------------------ the template-spread statistic
def _system(correct: np.ndarray) -> System:
    """One system: per seed, per example 1/0 correctness (ids shared by every system)."""
    outputs = [[{"id": str(i), "pred": int(c), "gold": 1} for i, c in enumerate(seed)] for seed in correct]
    return System("t/t", "accuracy", tuple(range(len(correct))), 100 * correct.mean(axis=1), outputs, None)


def test_the_spread_interval_is_centred_on_the_mean_per_seed_difference_of_ranges():
    rng = np.random.default_rng(0)
    wide = [_system((rng.random((3, 200)) < p).astype(int)) for p in (0.5, 0.7, 0.9)]
    narrow = [_system((rng.random((3, 200)) < p).astype(int)) for p in (0.80, 0.81, 0.82)]
    interval = spread_interval(wide + narrow, [1, 1, 1, -1, -1, -1], 0.95, 0, resamples=2000)
    per_seed = np.array([s.values for s in wide + narrow])  # systems x seeds
    expected = (np.ptp(per_seed[:3], axis=0) - np.ptp(per_seed[3:], axis=0)).mean()
    assert interval.estimate == pytest.approx(expected)
    assert interval.low > 20  # 40 points of spread against ~2: far above zero
    alike = [_system((rng.random((3, 200)) < p).astype(int)) for p in (0.80, 0.81, 0.82)]  # the same spread, drawn anew
    same = spread_interval(alike + narrow, [1, 1, 1, -1, -1, -1], 0.95, 0, resamples=2000)
    assert same.low < 2.0  # the claim's margin: a difference of spreads that does not exist is not reproduced
    paired = spread_interval(narrow + narrow, [1, 1, 1, -1, -1, -1], 0.95, 0, resamples=200)
    assert (paired.low, paired.high) == (0, 0)  # paired: the same systems on both sides differ by nothing


def test_the_pet_report_has_the_template_table_and_claim():
    """The pet grid's committed report holds the template table and the claim's verdict (not 'not run')."""
    text = (Path(__file__).resolve().parents[1] / "reports" / "pet" / "README.md").read_text()
    assert "Template sensitivity" in text
    assert "| [template_sensitivity](claims.md#template_sensitivity) | not run |" not in text
