"""Item 11: evaluation's greedy decoding with finished rows dropped (bench/harness/generation.py) vs today's `generate`
path, on study-webnlg's settings (batch 64, 60 new tokens) and study-e2e's (batch 16, 40); equal outputs (goals:
≥ 1.6× and ≥ 1.2×). The model is SmolLM2-135M (quick: tiny-llama) with a LoRA delta trained a few steps on the
task first, so that it writes the task's line and stops, as the study's cells do."""

import pytest

from bench.harness.evaluation import Timer, generate
from bench.harness.method import TRAIN_DEFAULTS
from bench.harness.tasks import eval_examples, get_task
from bench.harness.tokens import prompt_ids
from bench.tools.benchmarks import DECODE_DROP, Paired, decoding_model, device, record


@pytest.mark.parametrize("case", ["webnlg", "e2e"])
def test_decode_drop(benchmark, settings, case):
    task_name, examples, batch, new, rounds, steps = DECODE_DROP[settings.mode][case]
    model, tokenizer = decoding_model(settings.model, task_name, steps)
    # fp32 on CUDA too: dropping rows changes the batch's shape, and bf16 greedy outputs depend on it
    model = model.float()
    task = get_task(task_name)
    prompts = [task.prompt(ex) for ex in eval_examples(task, task_name, examples)]
    max_len = TRAIN_DEFAULTS["max_len"]
    timers = {"today": [], "ours": []}

    def run(path: str):
        timers[path].append(Timer())
        return generate(
            model, tokenizer, prompts, new, batch, max_len, timer=timers[path][-1], drop_finished=path == "ours"
        )

    warmup = settings.warmup_rounds if settings.mode == "quick" else 0
    if device() == "cuda":  # untimed: the first call at new shapes pays one-time CUDA costs
        run("today"), run("ours")
    paired = Paired({"today": lambda: run("today")}, lambda: run("ours"), warmup).run(benchmark, rounds)
    ours_out, today_out = paired.ours_outs[-1], paired.base_outs["today"][-1]
    equal = sum(a == b for a, b in zip(ours_out, today_out))
    prompt_tokens = sum(len(prompt_ids(tokenizer, p)[-max_len:]) for p in prompts)
    made = timers["ours"][-1].tokens - prompt_tokens  # new tokens up to each row's end (not counting the pad token)
    slots = len(prompts) * new  # every row decoding all `new` steps
    record(
        benchmark,
        f"decode_drop_{case}",
        **paired.ratio("today", ours_over_base=False),
        model=settings.model,
        task=task_name,
        examples=len(prompts),
        batch_size=batch,
        max_new_tokens=new,
        lora_steps=steps,
        dtype=str(next(model.parameters()).dtype),
        outputs_equal=equal == len(prompts),
        equal_count=equal,
        new_tokens=made,
        new_tokens_mean=made / len(prompts),
        slots_at_most=slots,
        today_tokens=timers["today"][-1].tokens,
        ours_tokens=timers["ours"][-1].tokens,
        samples=ours_out[:2],
    )
    assert ours_out == today_out, "dropping finished rows changed the decoded outputs"
    assert timers["ours"][-1].tokens <= timers["today"][-1].tokens  # ours stops at the first line's end
