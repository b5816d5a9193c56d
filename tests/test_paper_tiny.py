"""paper-tiny is paper.yaml cut mechanically (bench/grid/derive.py), and it runs: every cell ok through Snakemake,
and the report has every table the paper grid would fill."""

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.api.errors import BenchError
from bench.grid.derive import offline_task, tiny_stand_in
from bench.grid.plan import blocks, check_cells, grid_cells, load_grid_file, method_variants
from bench.harness.models import get_model_spec
from bench.harness.tasks import data_root, get_task

REPO = Path(__file__).resolve().parent.parent


def _blocks(name):
    return blocks(*load_grid_file(name))


def test_paper_tiny_keeps_every_block_task_method_hp_key_and_sweep_value():
    paper, tiny = _blocks("paper"), _blocks("paper-tiny")
    assert len(tiny) == len(paper)
    for source, derived in zip(paper, tiny):
        assert list(derived["tasks"]) == [offline_task(t) for t in source["tasks"]]
        for task, settings in source["tasks"].items():
            mine = derived["tasks"][offline_task(task)]
            assert mine.get("shifts") == (settings or {}).get("shifts")
            assert set((mine.get("hp") or {})) == set(((settings or {}).get("hp") or {}))
            assert mine["eval_limit"] <= 4
        assert set(derived.get("hp") or {}) == set(source.get("hp") or {})
        assert list(derived["methods"]) == list(source["methods"])
        for label, entry in source["methods"].items():
            entry, mine = entry or {}, derived["methods"][label] or {}
            assert set(mine) == set(entry)
            for key, value in entry.items():  # every sweep value kept, distinct
                if isinstance(value, list):
                    assert len(set(mine[key])) == len(set(value)), (label, key)
            assert [v[0] for v in method_variants(label, mine)] == [v[0] for v in method_variants(label, entry)]
        archs = {get_model_spec(m).architecture for m in source["models"]}
        assert {get_model_spec(m).architecture for m in derived["models"]} == archs
        assert all(get_model_spec(m).source == "tiny" for m in derived["models"])
        assert len(derived["models"]) == len(archs)  # hub models of one architecture collapse into its stand-in
        assert derived["seeds"] == source.get("seeds", [0])[:1]
        assert derived.get("data_seeds") == (source["data_seeds"][:1] if "data_seeds" in source else None)
        assert len(derived["train_sizes"]) == len(source["train_sizes"])  # the low-data curve keeps its points
    # and cell by cell: every (task, method variant) of the paper grid is a cell of paper-tiny
    assert {(offline_task(c.task), c.label) for c in grid_cells("paper")} == {
        (c.task, c.label) for c in grid_cells("paper-tiny")
    }


def _grid(tmp_path, name, data):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


SOURCE = {
    "models": ["gpt2-medium", "gpt2-large"],
    "tasks": {"sst2": {"eval_limit": 100}},
    "methods": {"lora": {"r": [4, 8], "lr": 2e-4}},
    "train_sizes": [50, "full"],
    "seeds": [0, 1],
    "hp": {"steps": 1000},
}


def test_derive_maps_models_tasks_sizes_and_caps(tmp_path):
    source = _grid(tmp_path, "source", SOURCE)
    derived = _grid(
        tmp_path,
        "derived",
        {
            "derive": {
                "from": source,
                "seeds": 1,
                "eval_limit": 4,
                "train_sizes": {"scale": 0.04, "full": 16},
                "hp_max": {"steps": 2, "r": 8},
            }
        },
    )
    cells = grid_cells(derived)
    assert {(c.model, c.label, c.train_size, c.seed, c.eval_limit, c.hp["steps"]) for c in cells} == {
        ("tiny-gpt2", f"lora-r={r}", n, 0, 4, 2) for r in (4, 8) for n in (2, 16)
    }
    assert tiny_stand_in("t5-xl-lm-adapt") == "tiny-t5" and tiny_stand_in("tiny-llama") == "tiny-llama"


@pytest.mark.parametrize(
    "derive, message",
    [
        (
            {"hp_max": {"r": 4}},
            r"hp_max.r=4 would merge the sweep \[4, 8\] of block 0 method lora: raise hp_max.r above 4",
        ),
        ({"from": "SELF"}, r"derives from itself"),
        ({"seeds": 0}, r"derive.seeds: 0 is less than the minimum of 1"),
    ],
)
def test_bad_derivation_is_one_line(tmp_path, derive, message):
    source = _grid(tmp_path, "source", SOURCE)
    spec = {"from": source, "seeds": 1, "eval_limit": 4, "train_sizes": {"scale": 0.04, "full": 16}, **derive}
    if spec["from"] == "SELF":
        spec["from"] = str(tmp_path / "derived.yaml")
    with pytest.raises(BenchError, match=message):
        grid_cells(_grid(tmp_path, "derived", {"derive": spec}))


def test_a_derived_grid_lists_no_blocks_of_its_own(tmp_path):
    with pytest.raises(BenchError, match=r"top level: Additional properties are not allowed \('models' was"):
        grid_cells(
            _grid(
                tmp_path,
                "derived",
                {
                    "derive": {"from": "paper", "seeds": 1, "eval_limit": 4, "train_sizes": {"scale": 0.1, "full": 8}},
                    "models": ["tiny-gpt2"],
                },
            )
        )


def test_data_seeds_cross_seeds_and_name_the_subsample(tmp_path):
    grid = _grid(
        tmp_path,
        "g",
        {
            **SOURCE,
            "models": ["tiny-gpt2"],
            "methods": {"lora": None},
            "train_sizes": [8],
            "seeds": [0, 1],
            "data_seeds": [0, 1, 2],
        },
    )
    cells = grid_cells(grid)
    assert sorted(c.dir.rsplit("/", 1)[1] for c in cells) == [f"s{s}-d{d}" for s in (0, 1) for d in (0, 1, 2)]
    assert all(c.cli_args().endswith(f"--data-seed {c.data_seed}") for c in cells)
    with pytest.raises(
        BenchError,
        match=r"data seed 0 set for sst2 at train size full: a data seed draws a "
        r"subsample",
    ):
        check_cells(
            grid_cells(
                _grid(tmp_path, "f", {**SOURCE, "models": ["tiny-gpt2"], "train_sizes": ["full"], "data_seeds": [0]})
            )
        )


def test_a_cell_larger_than_one_gpu_is_refused_when_planned(tmp_path):
    grid = _grid(
        tmp_path, "g", {**SOURCE, "models": ["t5-xxl-lm-adapt"], "methods": {"full_ft": None}, "train_sizes": [50]}
    )
    with pytest.raises(
        BenchError,
        match=r"full_ft on t5-xxl-lm-adapt needs ~182 GiB of GPU memory "
        r"\(bench/grid/gpu_memory.py\), more than one GPU's 78 GiB",
    ):
        check_cells(grid_cells(grid))


def expected_tables(grid: str) -> set[str]:
    """The report tables (bench/report/tables.py) a grid's cells fill, by their titles' first words, each task named
    as its offline run names it: read from the grid's blocks with the conditions those table functions apply."""
    titles = set()
    for block in _blocks(grid):
        methods = {entry.get("method", label) if entry else label for label, entry in block["methods"].items()}
        swept = any(isinstance(v, list) for entry in block["methods"].values() for v in (entry or {}).values())
        for task_name, settings in block["tasks"].items():
            task, name = get_task(task_name), offline_task(task_name)
            if task.kind == "generation":
                titles.add(f"{'Summarization' if 'rouge_1' in task.metrics else 'Table-to-text'}: {name}")
            else:
                titles.add("Classification accuracy by model size")
            if (settings or {}).get("shifts", list(task.shifts)):
                titles.add(f"Domain shift: {name}")
            if len(block["train_sizes"]) > 1:
                titles.add(f"Low-data: {name}")
            if swept:
                titles.add(f"Ablation: {name}")
        if "prompt_ensemble" in methods:
            titles.add("Prompt ensembling")
        if "prompt_tuning" in methods:
            titles.add("Soft-prompt interpretability")
    return titles | {"Cost"}


def test_paper_tiny_runs_every_cell_ok_with_every_paper_table(tmp_path):
    """The CI run of the paper grid's shape: Snakemake, two cores, every cell `ok`, the report's tables those of
    paper.yaml (tasks through their offline twins). Jobs fork one imported process (bench/launch): a Python
    process per cell would spend more on imports than the tiny cells compute."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PEFT_REPRO_MODELS": str(tmp_path / "models"),
        "PEFT_REPRO_DATA": str(data_root()),
        "HF_HUB_OFFLINE": "1",
    }
    start = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--cores",
            "2",
            "--config",
            "grid=paper-tiny",
            "forkserver=true",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    wall = time.monotonic() - start
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "results/paper-tiny/cells.csv").open()))
    assert len(rows) == len(grid_cells("paper-tiny"))
    assert [r["dir"] for r in rows if r["status"] != "ok"] == []
    readme = (tmp_path / "reports/paper-tiny/README.md").read_text()
    found = {line[4:] for line in readme.splitlines() if line.startswith("### ")}
    missing = [title for title in expected_tables("paper") if not any(f.startswith(title) for f in found)]
    assert missing == [], sorted(found)
    print(f"paper-tiny: {len(rows)} cells + report in {wall:.0f} s wall")
