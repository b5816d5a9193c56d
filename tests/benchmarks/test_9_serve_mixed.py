"""Item 9: one frozen base with k trained deltas scoring mixed-task batches (bench/tools/serve.py) against k separately
adapted models each scoring its own task: examples/s and the bytes of weights each setup holds (and k full
fine-tuned copies'), as ratios measured in one run, at each k of the mode's `serve_ks` (the first k cells of the
list). Two baselines, each model scoring only its own task's examples in batches of the same size (16, sorted by
length): the cells' own path (`bench.harness.evaluation.rank_scores`, what each cell ran; the goal's ratio), and the
serving module's own path with one delta per model (`bench.tools.serve.Mixed` over the separate model: the same cached
prompt states and scored-position LM head, so that ratio is what mixing itself gives). The sides run batch by batch,
interleaved (`interleaved`): the machine's load hits all of them alike. Correctness: every example's label scores
equal its own cell's outputs and both separate models' scores.

Where the cells come from: the folders named by PEFT_REPRO_SERVE_LORA / PEFT_REPRO_SERVE_PROMPT (comma lists, in
order), else in full mode PEFT_REPRO_SERVE_CELLS (default `.benchmarks/serve-cells`, git-ignored): a folder of
`<method>/<task>/` cells, each missing one trained there once by the cell command (`bench.harness.cell.run_cell`)
and kept for later runs; in quick mode, cells trained for a few steps in a temporary folder."""

import os
import statistics
import time
from pathlib import Path

import pytest

from bench.tools.benchmarks import bench_threads, record

TASKS = ("sst2", "qqp", "mrpc", "rte", "cb", "copa", "wic", "wsc")  # cells trained here: the first max(serve_ks)
CELL_HP = {
    "lora": {"lr": 1e-3, "r": 8, "alpha": 16},
    "prompt_tuning": {"num_virtual_tokens": 20, "optimizer": "adamw", "lr": 3e-2},
}
KS = (2, 4, 8)  # every k a mode may measure (Settings.serve_ks); the others are skipped
SIDES = ("mixed", "separate", "separate_serving_path")

GIVEN = {"lora": "PEFT_REPRO_SERVE_LORA", "prompt_tuning": "PEFT_REPRO_SERVE_PROMPT"}  # comma lists of cell folders
CELLS_ENV = "PEFT_REPRO_SERVE_CELLS"  # full mode: folder of <method>/<task> cells, missing ones trained there
CELLS_DEFAULT = Path(__file__).resolve().parents[2] / ".benchmarks" / "serve-cells"


def cell_config(settings, method: str, task: str):
    """The cell item 9 trains for `task` (full mode: 200 training examples, batch 8, as the curves grid; quick: 16,
    batch 4); its eval set is the examples item 9 scores."""
    from bench.harness.cell import CellConfig

    full = settings.mode == "full"
    return CellConfig(
        task=task,
        model=settings.model,
        method=method,
        train_size=200 if full else 16,
        seed=0,
        hp={
            "steps": settings.serve_steps,
            "batch_size": 8 if full else 4,
            "max_len": 64 if full else 80,
            **CELL_HP[method],
        },
        eval_limit=settings.serve_examples,
        shifts=(),
    )


def cells_root(settings, tmp_path_factory) -> Path:
    from bench.api.errors import BenchError

    if settings.mode != "full":
        return tmp_path_factory.mktemp("serve")
    if os.environ.get(CELLS_ENV):
        root = Path(os.environ[CELLS_ENV])
        if not root.is_dir():
            raise BenchError(
                f"{CELLS_ENV}={root} is not a folder: name a folder of <method>/<task> cells (e.g. "
                f"/work/serve-cells), or unset it to train them in {CELLS_DEFAULT}"
            )
        return root
    return CELLS_DEFAULT


@pytest.fixture(scope="module")
def cells(settings, tmp_path_factory):
    """Per delta kind, max(serve_ks) cell folders (module docstring: where they come from)."""
    from bench.harness.cell import run_cell

    root, out = cells_root(settings, tmp_path_factory), {}
    for method in CELL_HP:
        if os.environ.get(GIVEN[method]):
            out[method] = os.environ[GIVEN[method]].split(",")
            continue
        for task in TASKS[: max(settings.serve_ks)]:
            folder = root / method / task
            if not (folder / "record.json").is_file():
                run_cell(cell_config(settings, method, task), folder, threads=bench_threads())
            out.setdefault(method, []).append(str(folder))
    return out


def interleaved(sides: dict[str, list[tuple[float, object]]], first: int = 0) -> dict[str, tuple[float, float]]:
    """Run every side's units ((weight, function) pairs: one batch each), the next unit always from the side that
    has done the smallest share of its total weight (ties: sides in order, rotated by `first`), so all sides advance
    together and a load change on the machine meets each of them at the same share of its work. Returns per side
    (wall seconds, process CPU seconds) summed over its units."""
    names = list(sides)
    names = names[first % len(names) :] + names[: first % len(names)]
    total = {n: sum(w for w, _ in sides[n]) or 1.0 for n in names}
    done, index = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0)
    wall, cpu = dict.fromkeys(names, 0.0), dict.fromkeys(names, 0.0)
    while pending := [n for n in names if index[n] < len(sides[n])]:
        name = min(pending, key=lambda n: done[n] / total[n])
        weight, unit = sides[name][index[name]]
        start, start_cpu = time.perf_counter(), time.process_time()
        unit()
        wall[name] += time.perf_counter() - start
        cpu[name] += time.process_time() - start_cpu
        done[name] += weight
        index[name] += 1
    return {n: (wall[n], cpu[n]) for n in sides}


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("method", sorted(CELL_HP))
def test_serve_mixed(benchmark, settings, cells, method, k):
    from bench.harness.evaluation import rank_scores
    from bench.harness.method import get_method
    from bench.harness.models import load_model
    from bench.tools.serve import (
        BATCH,
        TOLERANCE,
        Mixed,
        compare,
        held_bytes,
        label_scores,
        length_batches,
        score_batch,
        setup,
    )

    if k not in settings.serve_ks or k > len(cells[method]):
        pytest.skip(
            f"k = {k}: {settings.mode} mode measures k in {settings.serve_ks}, {len(cells[method])} "
            f"{method} cells given"
        )
    s = setup(cells[method][:k], settings.serve_examples)
    pad_id, adapter = s.tokenizer.pad_token_id, get_method(method)
    separate = [
        adapter.load_delta(load_model(c.record["config"]["model"])[0], c.hp, None, c.dir / "delta").eval()
        for c in s.cells
    ]
    alone = [Mixed(None, [c], adapted=m) for c, m in zip(s.cells, separate)]  # the same models, serving path
    extra = [adapter.extra_positions(c.hp) for c in s.cells]
    prompt = [p.shape[0] for p in s.mixed.prompts] or [0] * k
    own_rows = [[(0, seq, scored) for owner, seq, scored in s.rows if owner == o] for o in range(k)]

    def cost(rows, o=None):  # padded positions a batch runs (weights of `interleaved`)
        return len(rows) * (max(len(r[1]) for r in rows) + (0 if o is None else prompt[o]))

    outs = {name: {} for name in SIDES}

    def mixed_units():
        return [
            (
                cost([s.rows[r] for r in b]),
                lambda b=b: score_batch(s.mixed, pad_id, [s.rows[r] for r in b], outs["mixed"]),
            )
            for b in length_batches(s.rows, BATCH)
        ]

    def separate_units():
        """rank_scores on each task's examples in the batches it forms itself (sorted by length, BATCH a batch)."""
        units = []
        for o, (task, examples) in enumerate(s.tasks):
            length = {}
            for _, seq, scored in own_rows[o]:
                for i, *_ in scored:
                    length[i] = min(length.get(i, len(seq)), len(seq))
            order = sorted(range(len(examples)), key=lambda i: (length[i], i))
            for start in range(0, len(order), BATCH):
                chunk = order[start : start + BATCH]

                def unit(o=o, chunk=chunk, task=task, examples=examples):
                    got = rank_scores(
                        separate[o],
                        s.tokenizer,
                        task,
                        [examples[i] for i in chunk],
                        BATCH,
                        s.cells[o].hp["max_len"],
                        extra[o],
                    )
                    outs["separate"].update({(o, i): dict(enumerate(got[n].tolist())) for n, i in enumerate(chunk)})

                units.append((len(chunk) * (max(length[i] for i in chunk) + prompt[o]), unit))
        return units

    def serving_path_units():
        units = []
        for o in range(k):
            for b in length_batches(own_rows[o], BATCH):
                chunk = [own_rows[o][r] for r in b]

                def unit(o=o, chunk=chunk):
                    for (_, i), labels in score_batch(alone[o], pad_id, chunk, {}).items():
                        outs["separate_serving_path"].setdefault((o, i), {}).update(labels)

                units.append((cost(chunk), unit))
        return units

    # warm-up, untimed: one short row through every model
    score_batch(s.mixed, pad_id, [min(s.rows, key=lambda r: len(r[1]))], {})
    for o, (task, examples) in enumerate(s.tasks):
        rank_scores(separate[o], s.tokenizer, task, examples[:1], BATCH, s.cells[o].hp["max_len"], extra[o])
        score_batch(alone[o], pad_id, own_rows[o][:1], {})
    rounds: list[dict] = []

    def one_round():
        sides = {"mixed": mixed_units(), "separate": separate_units(), "separate_serving_path": serving_path_units()}
        rounds.append(interleaved(sides, first=len(rounds)))

    benchmark.pedantic(one_round, rounds=settings.serve_rounds, iterations=1)
    scores = {name: label_scores(outs[name]) for name in SIDES}
    mixed_scores = scores["mixed"]
    worst_own, wrong = compare(s, mixed_scores)
    worst = {
        name: max(abs(a - b) for key, values in mixed_scores.items() for a, b in zip(values, scores[name][key]))
        for name in SIDES[1:]
    }
    examples = len(mixed_scores)

    def ratios(name: str, clock: int) -> list[float]:  # separate / mixed seconds per round = mixed ex/s ratio
        return [r[name][clock] / r["mixed"][clock] for r in rounds]

    base_bytes = held_bytes(load_model(s.cells[0].record["config"]["model"])[0])
    mixed_bytes = held_bytes(s.mixed.model, *s.mixed.prompts)
    separate_bytes = sum(held_bytes(m) for m in separate)
    batches = length_batches(s.rows, BATCH)
    wall, cpu = ratios("separate", 0), ratios("separate", 1)
    path_wall, path_cpu = ratios("separate_serving_path", 0), ratios("separate_serving_path", 1)
    record(
        benchmark,
        f"serve_mixed_{'lora' if method == 'lora' else 'prompt'}_k{k}",
        ratio=statistics.median(wall),
        per_round=[round(r, 4) for r in wall],
        cpu_ratio=statistics.median(cpu),
        cpu_per_round=[round(r, 4) for r in cpu],
        serving_path_ratio=statistics.median(path_wall),
        serving_path_per_round=[round(r, 4) for r in path_wall],
        serving_path_cpu_ratio=statistics.median(path_cpu),
        serving_path_cpu_per_round=[round(r, 4) for r in path_cpu],
        seconds={name: [[round(r[name][0], 3), round(r[name][1], 3)] for r in rounds] for name in SIDES},
        k=k,
        model=settings.model,
        cells=[c.name for c in s.cells],
        examples=examples,
        rows=len(s.rows),
        batch_size=BATCH,
        batches=len(batches),
        batches_mixing_cells=sum(len({s.rows[r][0] for r in b}) > 1 for b in batches),
        padded_positions={
            "mixed": sum(w for w, _ in mixed_units()),
            "separate": sum(w for w, _ in serving_path_units()),
        },
        mixed_examples_per_s=examples / min(r["mixed"][0] for r in rounds),
        separate_examples_per_s=examples / min(r["separate"][0] for r in rounds),
        separate_serving_path_examples_per_s=examples / min(r["separate_serving_path"][0] for r in rounds),
        mixed_bytes=mixed_bytes,
        separate_bytes=separate_bytes,
        full_ft_copies_bytes=len(s.cells) * base_bytes,
        separate_over_mixed_bytes=separate_bytes / mixed_bytes,
        full_ft_over_mixed_bytes=len(s.cells) * base_bytes / mixed_bytes,
        max_diff_vs_own_cells=worst_own,
        max_diff_vs_separate=worst["separate"],
        max_diff_vs_serving_path=worst["separate_serving_path"],
        tolerance=TOLERANCE,
        scores_equal=not wrong and max(worst_own, *worst.values()) <= TOLERANCE,
    )
    assert (
        len(mixed_scores)
        == len(scores["separate"])
        == len(scores["separate_serving_path"])
        == sum(len(examples) for _, examples in s.tasks)
    )
    assert not wrong, f"predictions differ from the cells' own: {wrong[:3]}"
    assert worst_own <= TOLERANCE and max(worst.values()) <= TOLERANCE, (worst_own, worst)


def test_interleaved_advances_all_sides_together():
    """The next unit is always the side with the smallest share of its weight done (ties in order, rotated by
    `first`); every unit runs once and each side's seconds are its own units' only."""
    ran = []

    def unit(name, seconds=0.0):
        return lambda: (ran.append(name), time.sleep(seconds))

    sides = {
        "a": [(1, unit("a1")), (1, unit("a2")), (2, unit("a3"))],  # 4 in all: a3 is half of a
        "b": [(3, unit("b1", 0.02)), (3, unit("b2", 0.02))],
        "c": [(1, unit("c1"))],
    }
    seconds = interleaved(sides)
    assert ran == ["a1", "b1", "c1", "a2", "a3", "b2"]
    assert seconds["b"][0] >= 0.04 and seconds["a"][0] < 0.02 and seconds["c"][0] < 0.02
    ran.clear()
    interleaved(sides, first=1)
    assert ran == ["b1", "c1", "a1", "a2", "b2", "a3"]  # the tie at half done goes to b now


def test_full_mode_cells_folder(monkeypatch, tmp_path):
    """Full mode reads cells from PEFT_REPRO_SERVE_CELLS, refuses one that is not a folder, else uses the clone's
    git-ignored .benchmarks/serve-cells."""
    from bench.api.errors import BenchError
    from bench.tools.benchmarks import MODES

    monkeypatch.setenv(CELLS_ENV, str(tmp_path))
    assert cells_root(MODES["full"], None) == tmp_path
    monkeypatch.setenv(CELLS_ENV, str(tmp_path / "absent"))
    with pytest.raises(BenchError, match="is not a folder: name a folder of <method>/<task> cells"):
        cells_root(MODES["full"], None)
    monkeypatch.delenv(CELLS_ENV)
    assert cells_root(MODES["full"], None) == CELLS_DEFAULT
    assert CELLS_DEFAULT.parent.name == ".benchmarks" and (CELLS_DEFAULT.parents[1] / "bench").is_dir()
    config = cell_config(MODES["full"], "lora", "qqp")
    assert (config.model, config.train_size, config.eval_limit) == ("smollm2-135m", 200, MODES["full"].serve_examples)
