"""Item 3: all label words in one batched pass vs one forward per label word (goal: ≥ 2× for 2 labels)."""

import torch

from bench.harness.evaluation import rank_scores
from bench.harness.tasks import eval_examples, get_task
from bench.tools.benchmarks import SST2_HP, Paired, per_label_scores, record


def test_rank_speedup(benchmark, settings, zero_shot):
    model, tokenizer = zero_shot
    task = get_task("sst2")
    examples = eval_examples(task, "sst2", settings.rank_examples)
    batch, max_len = SST2_HP["eval_batch_size"], SST2_HP["max_len"]
    paired = Paired(
        {
            "per_label_full_logits": lambda: per_label_scores(model, tokenizer, task, examples, batch, max_len, False),
            "per_label": lambda: per_label_scores(model, tokenizer, task, examples, batch, max_len, True),
        },
        lambda: rank_scores(model, tokenizer, task, examples, batch, max_len),
        settings.warmup_rounds,
    ).run(benchmark, settings.rank_rounds)

    ours = paired.ours_outs[-1]
    difference = max((ours - paired.base_outs[name][-1]).abs().max().item() for name in paired.base_outs)
    full = paired.ratio("per_label_full_logits", ours_over_base=False)
    labels_only = paired.ratio("per_label", ours_over_base=False)
    record(
        benchmark,
        "rank_speedup",
        **{**full, "baseline_s": labels_only["baseline_s"]},
        model=settings.model,
        examples=len(examples),
        batch_size=batch,
        max_len=max_len,
        verbalizer=list(task.verbalizer),
        scores_equal=difference < 1e-4,
        max_score_diff=difference,
        full_logits_baseline_s=full["baseline_s"],
        labels_only_ratio=labels_only["ratio"],
        labels_only_per_round=labels_only["per_round"],
    )
    for name in paired.base_outs:
        assert torch.allclose(ours, paired.base_outs[name][-1], atol=1e-4), f"scores differ from {name}"
