"""The training step's two shortcuts against the code they replace: logits only at the target positions (loss
and every trainable gradient equal to the full-logits loss, per causal method) and batches padded from ids
tokenised once (the same tensors, in the same order, as tokenising every batch)."""

import itertools
import random

import pytest
import torch

from bench.harness.batches import LENGTH_WINDOW, training_batches
from bench.harness.kinds.causal_lm import target_positions
from bench.harness.method import CellContext, get_method, resolve_hparams
from bench.harness.models import load_model
from bench.harness.tasks import get_task, train_examples
from bench.harness.tokens import pad, prompt_ids
from bench.harness.train import step_loss, train

P = 4  # virtual tokens / prefix length: short keeps the tests fast
CAUSAL_METHODS = {  # method -> hyperparameter overrides (small, and dropout-free where the method has dropout)
    "full_ft": {},
    "ft_top_k": {"k": 1},
    "lora": {"dropout": 0.0},
    "prompt_tuning": {"num_virtual_tokens": P},
    "prefix_tuning": {"prefix_length": P, "mlp_hidden": 8},
    "p_tuning": {"num_virtual_tokens": P},
    "adapter": {},
    "ia3": {},
    "distill": {"teacher": "unused: the student's step does not read the teacher"},
}


def _adapted(name, overrides, task, models_cache, seed=0):
    model, tokenizer, _ = load_model("tiny-llama", cache=models_cache)
    method = get_method(name)
    hp = resolve_hparams(method, {"max_len": 48, **overrides})
    examples = train_examples(task, 16, seed)
    ctx = CellContext(task=task, model_kind="causal_lm", tokenizer=tokenizer, train_examples=examples, seed=seed)
    torch.manual_seed(seed)
    model = method.apply(model, hp, ctx)
    with torch.no_grad():  # away from zero-initialised adapters, so that every trainable gradient is non-trivial
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    return method, hp, model, tokenizer, examples


def _gradients(model, loss) -> dict:
    model.zero_grad(set_to_none=True)
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def _relative(new, old) -> float:
    return float((new - old).abs().max() / old.abs().max())


@pytest.mark.parametrize("task_name", ["sst2", "e2e"])
@pytest.mark.parametrize("name", sorted(CAUSAL_METHODS))
def test_loss_at_target_positions_equals_full_logits_loss(name, task_name, models_cache):
    task = get_task(task_name)
    method, hp, model, tokenizer, examples = _adapted(name, CAUSAL_METHODS[name], task, models_cache)
    batch = next(training_batches(tokenizer, task, "causal_lm", examples, 4, hp["max_len"], 0))
    model.train()
    full = model(**batch)  # the old path: logits at every position, transformers' loss
    keep, targets = target_positions(batch["labels"], method.extra_positions(hp))
    assert full.logits.shape[1] == keep.shape[1]  # the mask spans the logits, virtual tokens included
    full_grads = _gradients(model, full.loss)
    loss, head_positions = step_loss(model, method, hp, batch, "causal_lm")
    assert head_positions == len(targets) < batch["attention_mask"].sum()
    assert abs(loss.item() - full.loss.item()) <= 1e-6 * abs(full.loss.item())
    grads = _gradients(model, loss)
    assert grads.keys() == full_grads.keys() and grads
    for parameter, old in full_grads.items():
        assert old.abs().max() > 0, parameter
        assert _relative(grads[parameter], old) <= 1e-6, (parameter, _relative(grads[parameter], old))


def test_ensemble_step_has_each_prompts_loss_and_gradient(models_cache):
    """prompt_ensemble: the loss is the mean of the k prompts' full-logits losses (peft prompt tuning with each
    prompt alone), and each prompt gets exactly its own gradient."""
    from peft import PromptTuningConfig, get_peft_model

    task = get_task("sst2")
    method, hp, ensemble, tokenizer, examples = _adapted(
        "prompt_ensemble", {"num_virtual_tokens": P, "k": 2}, task, models_cache
    )
    batch = next(training_batches(tokenizer, task, "causal_lm", examples, 4, hp["max_len"], 0))
    loss, head_positions = step_loss(ensemble, method, hp, batch, "causal_lm")
    loss.backward()
    assert head_positions == 2 * int((batch["labels"] != -100).sum())
    singles = []
    for i in range(2):
        base, _, _ = load_model("tiny-llama", cache=models_cache)
        single = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
        weight = single.prompt_encoder["default"].embedding.weight
        with torch.no_grad():
            weight.copy_(ensemble.prompts[i])
        own = single(**batch).loss
        own.backward()
        singles.append(own.item())
        assert _relative(ensemble.prompts[i].grad, weight.grad) <= 1e-6  # exactly its own gradient
    assert abs(loss.item() - sum(singles) / 2) <= 1e-6 * abs(loss.item())  # reported: the mean


def test_train_counts_the_positions_where_the_head_ran(models_cache):
    task = get_task("sst2")
    method, hp, model, tokenizer, examples = _adapted(
        "prompt_tuning", {"num_virtual_tokens": P, "steps": 3}, task, models_cache
    )
    batches = list(itertools.islice(training_batches(tokenizer, task, "causal_lm", examples, 4, hp["max_len"], 0), 3))
    result = train(model, method, hp, iter(batches), "causal_lm", progress="test")
    # SST-2: every target token has a predecessor in the text, so one head position per target token
    assert result.head_positions == sum(int((b["labels"] != -100).sum()) for b in batches) > 0


def _linear_output_dtypes(model) -> list:
    seen = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda _module, _inputs, output: seen.append(output.dtype))
    return seen


@pytest.mark.parametrize("precision, matmul_dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_dtype_of_training_and_rank_scoring_not_of_generation(precision, matmul_dtype, models_cache):
    """bf16: every Linear of a training step and of classification scoring runs in bfloat16 (autocast), generation
    in fp32; the trainable weights stay fp32, and the loss is the fp32 loss up to bf16 rounding."""
    from bench.harness.cell import CellConfig, evaluate_set, plan_cell
    from bench.harness.tasks import eval_examples

    task = get_task("sst2")
    method, hp, model, tokenizer, examples = _adapted(
        "lora", {"dropout": 0.0, "precision": precision}, task, models_cache
    )
    batch = next(training_batches(tokenizer, task, "causal_lm", examples, 4, hp["max_len"], 0))
    with torch.no_grad():
        reference, _ = step_loss(model, method, hp, batch, "causal_lm")  # fp32: no autocast outside train()
    seen = _linear_output_dtypes(model)
    result = train(model, method, {**hp, "steps": 1, "grad_clip": 0.0}, iter([batch]), "causal_lm", progress="test")
    assert seen and set(seen) == {matmul_dtype}
    assert result.losses[0] == pytest.approx(reference.item(), rel=1e-2 if precision == "bf16" else 1e-6)
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}

    for name, expected in (("sst2", matmul_dtype), ("e2e", torch.float32)):
        plan = plan_cell(CellConfig(name, "tiny-llama", "lora", 16, 0, {"precision": precision}, 4))
        seen.clear()
        metrics, rows = evaluate_set(plan, model, tokenizer, eval_examples(get_task(name), name, 2), None)
        assert seen and set(seen) == {expected}, name
        assert len(rows) == 2


# ------------------------------------------------------------------ batches from ids tokenised once
def _per_batch_training_batches(tokenizer, task, model_kind, examples, batch_size, max_len, seed, group_by_length):
    """training_batches as it was before ids were cached (commit ea42e0f): every batch tokenised from its
    examples, every example tokenised once more for its length. The reference the cached batches must equal."""

    def causal_lm_batch(batch_examples):
        pairs = []
        for ex in batch_examples:
            target = tokenizer(task.target(ex), add_special_tokens=False)["input_ids"]
            target = (target + [tokenizer.eos_token_id] if task.kind == "generation" else target)[: max_len - 1]
            pairs.append((prompt_ids(tokenizer, task.prompt(ex))[-(max_len - len(target)) :], target))
        input_ids, attention_mask = pad([p + t for p, t in pairs], tokenizer.pad_token_id)
        labels = torch.full_like(input_ids, -100)
        for row, (p, t) in enumerate(pairs):
            labels[row, len(p) : len(p) + len(t)] = torch.tensor(t)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def encoder_batch(batch_examples):
        columns = [[ex.fields[f] for ex in batch_examples] for f in task.text_fields]
        batch = dict(tokenizer(*columns, truncation=True, max_length=max_len, padding=True, return_tensors="pt"))
        batch["labels"] = torch.tensor([ex.label for ex in batch_examples], dtype=torch.long)
        return batch

    build = causal_lm_batch if model_kind == "causal_lm" else encoder_batch
    rng = random.Random(seed)
    order, ready = [], []
    while True:
        if not ready:
            size = batch_size * (LENGTH_WINDOW if group_by_length else 1)
            while len(order) < size:
                epoch = list(range(len(examples)))
                rng.shuffle(epoch)
                order += epoch
            window, order = order[:size], order[size:]
            if group_by_length:
                window.sort(key=lambda i: build([examples[i]])["input_ids"].shape[1])
            ready = [window[start : start + batch_size] for start in range(0, size, batch_size)]
            if group_by_length:
                rng.shuffle(ready)
        yield build([examples[i] for i in ready.pop(0)])


@pytest.mark.parametrize("group_by_length", [True, False])
@pytest.mark.parametrize(
    "model_name,task_name",
    [("tiny-llama", "sst2"), ("tiny-llama", "e2e"), ("tiny-bert", "sst2"), ("tiny-bert", "mrpc")],
)
def test_batches_from_cached_ids_equal_batches_tokenised_each_time(
    model_name, task_name, group_by_length, models_cache
):
    _, tokenizer, _ = load_model(model_name, cache=models_cache)
    task, kind = get_task(task_name), "causal_lm" if model_name == "tiny-llama" else "encoder"
    examples, batch_size = train_examples(task, 20, 3), 3  # 20 % 3 != 0: batches and windows straddle epochs
    steps = 4 * len(examples) // batch_size  # four epochs
    args = (tokenizer, task, kind, examples, batch_size, 40, 3, group_by_length)
    cached = list(itertools.islice(training_batches(*args), steps))
    reference = list(itertools.islice(_per_batch_training_batches(*args), steps))
    for ours, theirs in zip(cached, reference, strict=True):
        assert ours.keys() == theirs.keys()
        for key in theirs:
            assert ours[key].dtype == theirs[key].dtype and torch.equal(ours[key], theirs[key]), key
