"""Item 1: the cell runner's training steps vs a bare PyTorch + peft loop (goal: ≤ 0.85×), on SST-2- and
E2E-shaped batches (the default grid's settings for each task)."""

import itertools
import statistics
import time

import pytest
import torch

from bench.harness.batches import training_batches
from bench.harness.cell import seed_everything
from bench.harness.flops import flops_per_step, lm_head_parameters, token_path_parameters
from bench.harness.kinds.causal_lm import target_positions
from bench.harness.method import CellContext, get_method, resolve_hparams
from bench.harness.tasks import get_task, train_examples
from bench.harness.train import train
from bench.tools.benchmarks import E2E_HP, SMOKE_HP, SST2_HP, Paired, bare_peft_lora, bare_train, device, load, record

TASKS = {"sst2": ("train_overhead", SST2_HP), "e2e": ("train_overhead_e2e", E2E_HP)}


@pytest.mark.parametrize("task_name", list(TASKS))
def test_train_overhead(benchmark, settings, matmul_peak, task_name):
    item, task_hp = TASKS[task_name]
    task, method = get_task(task_name), get_method("lora")
    hp = resolve_hparams(method, {**task_hp, **SMOKE_HP["lora"], "steps": settings.train_steps})
    examples = train_examples(task, 200, 0)
    base_ours, tokenizer = load(settings.model)
    base_bare, _ = load(settings.model)
    seed_everything(0)
    ours_model = method.apply(
        base_ours,
        hp,
        CellContext(task=task, model_kind="causal_lm", tokenizer=tokenizer, train_examples=examples, seed=0),
    ).to(device())
    seed_everything(0)
    bare_model = bare_peft_lora(base_bare, hp).to(device())
    ours_state = {k: v for k, v in ours_model.state_dict().items() if "lora_" in k}
    bare_state = {k: v for k, v in bare_model.state_dict().items() if "lora_" in k}
    assert ours_state.keys() == bare_state.keys()  # same modules adapted
    assert all(torch.equal(ours_state[k], bare_state[k]) for k in ours_state)  # same initial adapter

    def batches():
        return training_batches(tokenizer, task, "causal_lm", examples, hp["batch_size"], hp["max_len"], 0)

    prebuilt = [{k: v.to(device()) for k, v in b.items()} for b in itertools.islice(batches(), hp["steps"])]
    paired = Paired(
        {"bare": lambda: bare_train(bare_model, prebuilt, hp["lr"], hp["grad_clip"])},
        lambda: train(ours_model, method, hp, batches(), "causal_lm", progress="bench").losses,
        settings.warmup_rounds,
    ).run(benchmark, settings.train_rounds)

    differences = [
        abs(a - b) for ours, bare in zip(paired.ours_outs, paired.base_outs["bare"]) for a, b in zip(ours, bare)
    ]
    build = []  # per step, as a timed round pays it: a fresh stream, one round's batches
    for _ in range(20):
        start = time.perf_counter()
        list(itertools.islice(batches(), hp["steps"]))
        build.append((time.perf_counter() - start) / hp["steps"])
    ratio = paired.ratio("bare", ours_over_base=True)
    tokens = sum(int(b["attention_mask"].sum()) for b in prebuilt)
    n_params, trainable = token_path_parameters(ours_model)
    head_positions = sum(int(target_positions(b["labels"])[0].sum()) for b in prebuilt)
    flops = flops_per_step(
        n_params,
        False,
        tokens,
        trainable_params=trainable,  # all steps of one round
        head_params=lm_head_parameters(ours_model),
        head_positions=head_positions,
    )
    ours_round = statistics.median(paired.timed())
    record(
        benchmark,
        item,
        **ratio,
        task=task_name,
        model=settings.model,
        r=hp["r"],
        alpha=hp["alpha"],
        batch_size=hp["batch_size"],
        max_len=hp["max_len"],
        steps=hp["steps"],
        warmup_rounds=settings.warmup_rounds,
        losses_equal=max(differences) < 1e-4,
        max_loss_diff=max(differences),
        batch_build_s=statistics.median(build),
        step_s=ours_round / hp["steps"],
        tokens_per_step=tokens / hp["steps"],
        head_positions_per_step=head_positions / hp["steps"],
        padded_per_step=sum(b["input_ids"].numel() for b in prebuilt) / hp["steps"],
        flops_per_step=flops / hp["steps"],
        train_flops_per_s=flops / ours_round,
        mfu=flops / ours_round / matmul_peak["flops"],
        trainable_params=trainable,
        total_params=n_params,
    )
    # correctness, not speed: the bare loop must do the same steps
    assert max(differences) < 1e-4, f"harness and bare loop losses differ by {max(differences)}"
