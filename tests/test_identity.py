"""Cell identity (bench/harness/identity.py): the harness fingerprint is the code's meaning, a record's spec is what its
cell asks for, differences are listed field by field, and the committed records and reports agree with the committed
code."""

import json
import shlex
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from bench.grid.plan import (
    differences,
    grid_cells,
    grid_names,
    load_grid_file,
    planned_identity,
    read_record,
    stale_fields,
)
from bench.harness import identity

REPO = Path(__file__).resolve().parent.parent
CODE = '''"""A module."""
import os


def f(x):
    """Twice x."""
    return 2 * x  # doubled
'''


def fingerprint(tmp_path, text) -> str:
    path = tmp_path / "m.py"
    path.write_text(text)
    return identity.code_fingerprint(path)


def test_docstrings_comments_and_formatting_leave_the_fingerprint(tmp_path):
    before = fingerprint(tmp_path, CODE)
    cosmetic = CODE.replace('"""Twice x."""', '"""Twice x, as documented at length."""').replace("# doubled", "# x2")
    cosmetic = cosmetic.replace("2 * x", "2*x").replace("\n\n\ndef", "\n\n\n\ndef") + "# trailing comment\n"
    assert fingerprint(tmp_path, cosmetic) == before
    assert fingerprint(tmp_path, CODE.replace('    """Twice x."""\n', "")) == before  # a docstring removed
    assert fingerprint(tmp_path, CODE.replace("2 * x", "3 * x")) != before
    assert fingerprint(tmp_path, CODE.replace("return 2 * x", 'x = "Twice x."\n    return 2 * x')) != before


def test_the_harness_is_its_packages():
    names = {str(p.relative_to(REPO)) for p in identity.harness_files()}
    assert {
        "bench/harness/cell.py",
        "bench/harness/train.py",
        "bench/harness/tasks.py",
        "bench/harness/models.py",
        "bench/harness/method.py",
        "bench/harness/evaluation.py",
        "bench/harness/identity.py",
        "bench/api/errors.py",
        "bench/__init__.py",
        "methods/__init__.py",
    } <= names
    assert all(
        n.startswith(("bench/harness/", "bench/api/")) for n in names - {"bench/__init__.py", "methods/__init__.py"}
    )
    assert not any(n.startswith("methods/") and n != "methods/__init__.py" for n in names)  # per method: its spec


def test_a_new_module_is_in_the_harness_by_its_package(tmp_path, monkeypatch):
    for rel in (
        "bench/__init__.py",
        "bench/harness/cell.py",
        "bench/harness/new.py",
        "bench/api/errors.py",
        "bench/report/new.py",
        "bench/tools/new.py",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    monkeypatch.setattr(identity, "PROJECT_ROOT", tmp_path)
    monkeypatch.setattr(identity, "HARNESS_EXTRA", ())
    assert [str(p.relative_to(tmp_path)) for p in identity.harness_files()] == [
        "bench/__init__.py",
        "bench/api/errors.py",
        "bench/harness/cell.py",
        "bench/harness/new.py",
    ]


def test_differences_by_field():
    spec = {
        "hp": {"steps": 20, "lr": 0.001},
        "task": {"sst2": {"template": "Review: {sentence}\nSentiment:" * 3}},
        "harness": "a" * 64,
    }
    changed = {
        "hp": {"steps": 30, "lr": 0.001},
        "task": {"sst2": {"template": "Text: {sentence}\nLabel:" * 3}},
        "harness": "b" * 64,
    }
    assert differences(spec, changed) == ["harness", "hp.steps 20 → 30", "task.sst2.template"]
    assert differences(spec, spec) == []
    assert differences(None, spec) == ["no resolved spec (made before cell identity)"]


def test_a_record_made_by_a_cell_carries_its_planned_identity(tmp_path, monkeypatch):
    """run_cell's own spec equals the one planned from the grid (CLI-style string hp included)."""
    from bench.cli import main

    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "g.yaml"
    grid.write_text(
        "models: [tiny-llama]\nmethods: {lora: {lr: 1.0e-2}}\ntasks: {sst2: {shifts: [], eval_limit: 4, "
        "hp: {max_len: 32, batch_size: 4}}}\ntrain_sizes: [8]\nseeds: [0]\nhp: {steps: 1}\n"
    )
    [cell] = grid_cells(str(grid))
    assert main(["run-cell", *shlex.split(cell.cli_args()), "--threads", "1", "--out", cell.dir]) == 0
    record = read_record(cell.dir)
    planned = planned_identity(cell, {cell.dir: cell})
    assert record["identity"] == json.loads(json.dumps(planned)) and stale_fields(record, planned) == []
    assert record["env"]["harness_sha256"] == planned["spec"]["harness"] == identity.harness_fingerprint()


def committed_grids() -> list[str]:
    """Grids of blocks whose folder holds committed records."""
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True).stdout.split()
    with_records = {p.split("/")[1] for p in tracked if p.endswith("/record.json")}
    return [g for g in grid_names() if g in with_records and "parts" not in load_grid_file(g)[1]]


def test_committed_records_are_what_their_cells_ask_for(monkeypatch):
    """Every committed record has its cell's planned identity under the committed code (0 stale), and belongs to a
    cell of its grid."""
    monkeypatch.chdir(REPO)
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True).stdout.split()
    records = {str(Path(p).parent) for p in tracked if p.endswith("/record.json")}
    grids = committed_grids()
    assert grids, "no committed grid found"
    stale, planned_dirs = {}, set()
    for grid in grids:
        cells = {c.dir: c for c in grid_cells(grid)}
        planned_dirs |= set(cells)
        for cell in cells.values():
            if cell.dir in records:
                because = stale_fields(read_record(cell.dir), planned_identity(cell, cells))
                if because:
                    stale[cell.dir] = because
    assert not stale, f"{len(stale)} stale committed record(s), e.g. {next(iter(stale.items()))}"
    assert not records - planned_dirs, f"records of no grid cell: {sorted(records - planned_dirs)[:3]}"


def committed_reports() -> list[str]:
    tracked = subprocess.run(["git", "ls-files", "results"], cwd=REPO, capture_output=True, text=True).stdout.split()
    return sorted(p.split("/")[1] for p in tracked if p.endswith("/cells.csv"))


@pytest.mark.parametrize("grid", committed_reports())
def test_committed_reports_list_the_committed_records_as_the_code_reads_them(grid, monkeypatch):
    """The report's inputs, cheaply: results/<grid>/cells.csv (status, staleness and what differs, per cell) is what
    the code reads from the committed records, and the report's README counts the same stale cells. (Regenerating
    every table is left to the report's own tests: the study's intervals take minutes.)"""
    from bench.report.summary import load

    monkeypatch.chdir(REPO)
    cells = load(grid)[0]
    committed = pd.read_csv(REPO / "results" / grid / "cells.csv", keep_default_na=False)
    columns = ["dir", "status", "stale", "stale_because"]
    assert committed[columns].astype(str).values.tolist() == cells[columns].astype(str).values.tolist()
    readme = (REPO / "reports" / grid / "README.md").read_text()
    assert f"; {int(cells['stale'].sum())} stale." in readme
