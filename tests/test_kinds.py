"""Model kinds (bench/harness/kinds/): a kind added in one place, by a subclass registered from here, is what the
harness's batches, training step and evaluation use; nothing else in the harness needs to know it exists."""

import itertools
from types import SimpleNamespace

import pytest
import torch

from bench.api.errors import BenchError
from bench.harness import kinds
from bench.harness.batches import training_batches
from bench.harness.cell import evaluate_set
from bench.harness.evaluation import Timer
from bench.harness.kinds.causal_lm import CausalLM
from bench.harness.method import get_method, resolve_hparams
from bench.harness.tasks import eval_examples, get_task, train_examples
from bench.harness.train import train


class Recording(CausalLM):
    """A new kind: a causal LM whose every hook is logged (and whose step loss is doubled, so its use shows)."""

    name = "recording"

    def __init__(self):
        self.calls = []

    def encode(self, tokenizer, task, examples, max_len):
        self.calls.append("encode")
        return super().encode(tokenizer, task, examples, max_len)

    def collate(self, items, tokenizer):
        self.calls.append("collate")
        return super().collate(items, tokenizer)

    def step_loss(self, model, method, hp, batch, index):
        self.calls.append("step_loss")
        loss, positions = super().step_loss(model, method, hp, batch, index)
        return 2 * loss, positions

    def batch_tokens(self, batch):
        self.calls.append("batch_tokens")
        return 1000, 7

    def label_scores(self, model, tokenizer, task, examples, hp, extra_positions, timer):
        self.calls.append("label_scores")
        return super().label_scores(model, tokenizer, task, examples, hp, extra_positions, timer)

    def generate(self, model, tokenizer, prompts, max_new_tokens, hp, extra_positions, timer):
        self.calls.append("generate")
        return ["the same text"] * len(prompts)

    def load_pretrained(self, source, num_labels):
        self.calls.append("load_pretrained")
        return super().load_pretrained(source, num_labels)


@pytest.fixture()
def recording(monkeypatch):
    kind = Recording()
    monkeypatch.setitem(kinds.KINDS, kind.name, kind)
    return kind


def test_a_registered_kind_is_what_the_harness_uses(recording, tiny_llama):
    model, tokenizer, _ = tiny_llama
    method, sst2 = get_method("full_ft"), get_task("sst2")
    hp = resolve_hparams(method, {"max_len": 48, "steps": 2, "lr": 1e-3})
    examples = train_examples(sst2, 8, 0)
    batch = next(training_batches(tokenizer, sst2, "recording", examples, 4, 48, 0))
    assert recording.calls == ["encode", "collate"] and set(batch) == {"input_ids", "attention_mask", "labels"}

    torch.manual_seed(0)
    result = train(
        model,
        method,
        hp,
        training_batches(tokenizer, sst2, "recording", examples, 4, 48, 0),
        "recording",
        progress="test",
    )
    assert recording.calls.count("step_loss") == 2 and result.tokens == 2000 and result.encoder_tokens == 14

    plan = SimpleNamespace(task=sst2, hp=hp, method=method, model_spec=SimpleNamespace(kind="recording"))
    metrics, rows = evaluate_set(plan, model.eval(), tokenizer, eval_examples(sst2, "sst2", 4), Timer())
    assert recording.calls[-1] == "label_scores" and len(rows) == 4 and "accuracy" in metrics
    e2e = get_task("e2e")
    plan = SimpleNamespace(task=e2e, hp=hp, method=method, model_spec=SimpleNamespace(kind="recording"))
    _, rows = evaluate_set(plan, model, tokenizer, eval_examples(e2e, "e2e", 2), Timer())
    assert recording.calls[-1] == "generate" and [r["hyp"] for r in rows] == ["the same text"] * 2


def test_the_kinds_loss_is_the_step_loss(recording, tiny_llama):
    """The training step's loss is the kind's: the recording kind doubles the causal LM's."""
    from bench.harness.train import step_loss

    model, tokenizer, _ = tiny_llama
    method, sst2 = get_method("full_ft"), get_task("sst2")
    hp = resolve_hparams(method, {"max_len": 48})
    batch = next(
        itertools.islice(training_batches(tokenizer, sst2, "causal_lm", train_examples(sst2, 8, 0), 4, 48, 0), 1)
    )
    with torch.no_grad():
        plain, _ = step_loss(model, method, hp, batch, "causal_lm")
        doubled, _ = step_loss(model, method, hp, batch, "recording")
    assert torch.allclose(doubled, 2 * plain)


def test_a_model_of_the_new_kind_loads_through_it(recording, models_cache, monkeypatch):
    import dataclasses

    from bench.harness import models

    spec = models.get_model_spec("tiny-llama")
    monkeypatch.setattr(models, "get_model_spec", lambda name: dataclasses.replace(spec, kind="recording"))
    model, _, _ = models.load_model("tiny-llama", cache=models_cache)
    assert recording.calls == ["load_pretrained"] and type(model).__name__ == "LlamaForCausalLM"


def test_an_unknown_kind_is_one_line_with_its_fix():
    with pytest.raises(BenchError, match=r"unknown model kind 'nosuch': use one of causal_lm, encoder, seq2seq"):
        kinds.get_kind("nosuch")
