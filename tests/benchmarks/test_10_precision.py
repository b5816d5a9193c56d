"""Item 10: bf16 autocast (hp precision=bf16) against fp32, the same code otherwise: prompt-tuning training steps and
rank scoring on SST-2 batches (goal: ≥ 1.3× each, what the study's budget needs; CPUs without AVX512-BF16 or AMX
and tiny models gain less or nothing)."""

import itertools
import statistics

import torch

from bench.harness.batches import training_batches
from bench.harness.cell import seed_everything
from bench.harness.evaluation import rank_scores
from bench.harness.method import CellContext, get_method, resolve_hparams
from bench.harness.tasks import eval_examples, get_task, train_examples
from bench.harness.train import autocast, train
from bench.tools.benchmarks import SST2_HP, Paired, device, load, record


def test_bf16_training_steps(benchmark, settings):
    task, method = get_task("sst2"), get_method("prompt_tuning")
    hp = resolve_hparams(
        method, {**SST2_HP, "steps": settings.train_steps, "optimizer": "adamw", "lr": 3e-2, "num_virtual_tokens": 20}
    )  # the study's prompt tuning
    examples = train_examples(task, 200, 0)
    models = {}
    for precision in ("fp32", "bf16"):
        base, tokenizer = load(settings.model)
        seed_everything(0)
        models[precision] = method.apply(
            base,
            hp,
            CellContext(task=task, model_kind="causal_lm", tokenizer=tokenizer, train_examples=examples, seed=0),
        ).to(device())
    batches = list(
        itertools.islice(
            training_batches(tokenizer, task, "causal_lm", examples, hp["batch_size"], hp["max_len"], 0), hp["steps"]
        )
    )

    def run(precision):
        return train(
            models[precision], method, {**hp, "precision": precision}, iter(batches), "causal_lm", progress="bench"
        ).losses

    paired = Paired({"fp32": lambda: run("fp32")}, lambda: run("bf16"), settings.warmup_rounds).run(
        benchmark, settings.train_rounds
    )
    # the first round (warm-up) starts both models from the same prompt; later rounds continue diverged training
    fp32_first, bf16_first = paired.base_outs["fp32"][0][0], paired.ours_outs[0][0]
    first = abs(bf16_first - fp32_first) / abs(fp32_first)
    record(
        benchmark,
        "bf16_train",
        **paired.ratio("fp32", ours_over_base=False),
        model=settings.model,
        steps=hp["steps"],
        batch_size=hp["batch_size"],
        max_len=hp["max_len"],
        num_virtual_tokens=hp["num_virtual_tokens"],
        first_loss_rel_diff=first,
        bf16_step_s=statistics.median(paired.timed()) / hp["steps"],
        fp32_step_s=statistics.median(paired.timed("fp32")) / hp["steps"],
    )
    # correctness, not speed: the same step from the same state, rounded differently
    assert first < 2e-2, f"bf16 and fp32 first-step losses differ by {first:.3%}"


def test_bf16_rank_scoring(benchmark, settings, zero_shot):
    model, tokenizer = zero_shot
    task = get_task("sst2")
    examples = eval_examples(task, "sst2", settings.rank_examples)
    batch, max_len = SST2_HP["eval_batch_size"], SST2_HP["max_len"]

    def scores(precision):
        with autocast({"precision": precision}, device()):
            return rank_scores(model, tokenizer, task, examples, batch, max_len)

    paired = Paired({"fp32": lambda: scores("fp32")}, lambda: scores("bf16"), settings.warmup_rounds).run(
        benchmark, settings.rank_rounds
    )
    ours, base = paired.ours_outs[-1], paired.base_outs["fp32"][-1]
    agreement = float((ours.argmax(-1) == base.argmax(-1)).float().mean())
    difference = (ours - base).abs().max().item()
    record(
        benchmark,
        "bf16_rank",
        **paired.ratio("fp32", ours_over_base=False),
        model=settings.model,
        examples=len(examples),
        batch_size=batch,
        max_len=max_len,
        max_score_diff=difference,
        prediction_agreement=agreement,
    )
    assert ours.dtype == base.dtype == torch.float32
    assert difference < 1.0, f"bf16 label log-probs differ from fp32 by {difference:.3f} nats"
