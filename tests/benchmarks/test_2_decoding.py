"""Item 2: batched KV-cached generation vs one example at a time without a cache (goal: ≥ 10×, equal outputs)."""

import statistics

import torch

from bench.harness.evaluation import Timer, generate
from bench.harness.method import TRAIN_DEFAULTS
from bench.harness.tasks import eval_examples, get_task
from bench.harness.tokens import prompt_ids
from bench.tools.benchmarks import Paired, device, generate_one_at_a_time_no_cache, load, record


def test_decode_speedup(benchmark, settings, zero_shot):
    model, tokenizer = zero_shot
    if device() == "cuda":  # bf16 greedy decoding depends on batch shape and padding (rounding): compare in fp32
        model, tokenizer = load(settings.model, dtype=torch.float32)
    task = get_task("e2e")
    prompts = [task.prompt(ex) for ex in eval_examples(task, "e2e", settings.decode_examples)]
    max_len, new = TRAIN_DEFAULTS["max_len"], min(settings.max_new_tokens, task.max_new_tokens)
    timers = []

    def ours():
        timers.append(Timer())
        return generate(model, tokenizer, prompts, new, settings.decode_batch, max_len, timer=timers[-1])

    warmup = settings.warmup_rounds if settings.mode == "quick" else 0  # full: one round of ~2 minutes
    if device() == "cuda" and not warmup:  # untimed: each path's first call at new shapes pays one-time CUDA
        generate(model, tokenizer, prompts, new, settings.decode_batch, max_len)  # costs (~5 s on an H100)
        generate(model, tokenizer, prompts[:1], new, 1, max_len)
        generate_one_at_a_time_no_cache(model, tokenizer, prompts[:1], new, max_len)
    paired = Paired(
        {
            "no_cache_batch1": lambda: generate_one_at_a_time_no_cache(model, tokenizer, prompts, new, max_len),
            "cache_batch1": lambda: generate(model, tokenizer, prompts, new, 1, max_len),
        },
        ours,
        warmup,
    ).run(benchmark, settings.decode_rounds)

    ours_out, baseline_out = paired.ours_outs[-1], paired.base_outs["no_cache_batch1"][-1]
    equal = sum(a == b for a, b in zip(ours_out, baseline_out))
    prompt_tokens = [len(prompt_ids(tokenizer, p)[-max_len:]) for p in prompts]
    new_tokens = (timers[-1].tokens - sum(prompt_tokens)) / len(prompts)
    ratio = paired.ratio("no_cache_batch1", ours_over_base=False)
    cache_only = [b / c for b, c in zip(paired.timed("no_cache_batch1"), paired.timed("cache_batch1"))]
    record(
        benchmark,
        "decode_speedup",
        **ratio,
        model=settings.model,
        examples=len(prompts),
        dtype=str(next(model.parameters()).dtype),
        batch_size=settings.decode_batch,
        max_new_tokens=new,
        outputs_equal=equal == len(prompts),
        equal_count=equal,
        batch1_cache_s=[round(t, 4) for t in paired.timed("cache_batch1")],
        cache_only_speedup=statistics.median(cache_only),
        prompt_tokens_min=min(prompt_tokens),
        prompt_tokens_max=max(prompt_tokens),
        new_tokens_mean=new_tokens,
        batch1_cache_equal=paired.base_outs["cache_batch1"][-1] == ours_out,
        samples=ours_out[:2],
    )
    assert ours_out == baseline_out, "batched KV-cached greedy outputs differ from one-at-a-time no-cache outputs"
    assert paired.base_outs["cache_batch1"][-1] == ours_out
