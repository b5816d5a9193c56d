"""Item 9: one frozen base with k trained deltas scoring mixed-task batches (bench/tools/serve.py) against k separately
adapted models each scoring its own task (bench.harness.evaluation.rank_scores, the cells' own path): examples/s and the
bytes of weights each setup holds (and k full fine-tuned copies'), as ratios measured in one run, at each k of the
mode's `serve_ks` (the first k cells of the list). Correctness: every example's label scores equal its own cell's
outputs and the separate models' scores."""
import os
import statistics
import time

import pytest

from bench.tools.benchmarks import Paired, bench_threads, record

TASKS = ("sst2", "qqp", "mrpc", "rte", "cb", "copa", "wic", "wsc")  # cells trained here: the first max(serve_ks)
CELL_HP = {"lora": {"lr": 1e-3, "r": 8, "alpha": 16},
           "prompt_tuning": {"num_virtual_tokens": 20, "optimizer": "adamw", "lr": 3e-2}}
KS = (2, 4, 8)  # every k a mode may measure (Settings.serve_ks); the others are skipped


GIVEN = {"lora": "PEFT_REPRO_SERVE_LORA", "prompt_tuning": "PEFT_REPRO_SERVE_PROMPT"}  # comma lists of cell folders


@pytest.fixture(scope="module")
def cells(settings, tmp_path_factory):
    """Per delta kind, cells trained elsewhere (the folders named by GIVEN's environment variables, e.g. a grid's
    seed-0 cells, up to 8), else max(serve_ks) cells (TASKS in order) trained here for a few steps: enough for
    deltas that differ."""
    from bench.harness.cell import CellConfig, run_cell

    root, out = tmp_path_factory.mktemp("serve"), {}
    for method, hp in CELL_HP.items():
        if os.environ.get(GIVEN[method]):
            out[method] = os.environ[GIVEN[method]].split(",")
            continue
        for task in TASKS[:max(settings.serve_ks)]:
            config = CellConfig(task=task, model=settings.model, method=method, train_size=16, seed=0,
                                hp={"steps": settings.serve_steps, "batch_size": 4, "max_len": 80, **hp},
                                eval_limit=settings.serve_examples, shifts=())
            run_cell(config, root / f"{method}-{task}", threads=bench_threads())
            out.setdefault(method, []).append(str(root / f"{method}-{task}"))
    return out


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("method", sorted(CELL_HP))
def test_serve_mixed(benchmark, settings, cells, method, k):
    from bench.harness.evaluation import rank_scores
    from bench.harness.method import get_method
    from bench.harness.models import load_model
    from bench.tools.serve import BATCH, TOLERANCE, compare, held_bytes, length_batches, score_mixed, setup

    if k not in settings.serve_ks or k > len(cells[method]):
        pytest.skip(f"k = {k}: {settings.mode} mode measures k in {settings.serve_ks}, {len(cells[method])} "
                    f"{method} cells given")
    s = setup(cells[method][:k], settings.serve_examples)
    adapter = get_method(method)
    separate = [adapter.load_delta(load_model(c.record["config"]["model"])[0], c.hp, None, c.dir / "delta").eval()
                for c in s.cells]
    extra = [adapter.extra_positions(c.hp) for c in s.cells]

    cpu = {"separate": [], "mixed": []}  # process CPU seconds per round: the shared machine's load moves wall time

    def cpu_timed(name, fn):
        start = time.process_time()
        out = fn()
        cpu[name].append(time.process_time() - start)
        return out

    def one_model_per_task():
        return cpu_timed("separate", lambda: [rank_scores(m, s.tokenizer, task, examples, BATCH, c.hp["max_len"], x)
                                              for m, c, (task, examples), x in zip(separate, s.cells, s.tasks, extra)])

    paired = Paired({"separate": one_model_per_task},
                    lambda: cpu_timed("mixed", lambda: score_mixed(s.mixed, s.tokenizer.pad_token_id, s.rows, BATCH)),
                    settings.warmup_rounds).run(benchmark, settings.serve_rounds)
    cpu_rounds = [a / b for a, b in zip(cpu["separate"], cpu["mixed"])]
    cpu_rounds = cpu_rounds[settings.warmup_rounds:] or cpu_rounds  # as Paired.timed drops the warm-up
    mixed_scores = paired.ours_outs[-1]
    worst_own, wrong = compare(s, mixed_scores)
    worst_separate = max(abs(a - b) for owner, per_task in enumerate(paired.base_outs["separate"][-1])
                         for i, row in enumerate(per_task) for a, b in zip(mixed_scores[(owner, i)], row.tolist()))
    base_bytes = held_bytes(load_model(s.cells[0].record["config"]["model"])[0])
    mixed_bytes = held_bytes(s.mixed.model, *s.mixed.prompts)
    separate_bytes = sum(held_bytes(m) for m in separate)
    timing = paired.ratio("separate", ours_over_base=False)  # separate time / mixed time = mixed examples/s ratio
    examples = len(mixed_scores)
    batches = length_batches(s.rows, BATCH)
    record(benchmark, f"serve_mixed_{'lora' if method == 'lora' else 'prompt'}_k{k}", **timing, k=k,
           model=settings.model, cells=[c.name for c in s.cells], examples=examples, rows=len(s.rows),
           batch_size=BATCH, batches=len(batches),
           batches_mixing_cells=sum(len({s.rows[r][0] for r in b}) > 1 for b in batches),
           mixed_examples_per_s=examples / min(paired.timed()),
           separate_examples_per_s=examples / min(paired.timed("separate")),
           mixed_bytes=mixed_bytes, separate_bytes=separate_bytes, full_ft_copies_bytes=len(s.cells) * base_bytes,
           separate_over_mixed_bytes=separate_bytes / mixed_bytes,
           full_ft_over_mixed_bytes=len(s.cells) * base_bytes / mixed_bytes,
           cpu_ratio=statistics.median(cpu_rounds), cpu_per_round=[round(r, 4) for r in cpu_rounds],
           max_diff_vs_own_cells=worst_own, max_diff_vs_separate=worst_separate, tolerance=TOLERANCE,
           scores_equal=not wrong and worst_own <= TOLERANCE and worst_separate <= TOLERANCE)
    assert not wrong, f"predictions differ from the cells' own: {wrong[:3]}"
    assert worst_own <= TOLERANCE and worst_separate <= TOLERANCE
