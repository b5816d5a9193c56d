"""Exact reruns and resume after kill -9, through real snakemake runs on a copy of the project."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.tasks import data_root

REPO = Path(__file__).resolve().parent.parent
GRID = {"models": ["tiny-llama"], "methods": {"full_ft": {"lr": 1e-3}, "lora": {"lr": 1e-2}},
        "tasks": {"sst2": {"shifts": [], "eval_limit": 4, "hp": {"max_len": 32, "batch_size": 2}}},
        "train_sizes": [8, 16], "seeds": [0], "hp": {"steps": 1}}


@pytest.fixture()
def project(tmp_path, models_cache):
    """A copy of the code (so edits stay in the test) with the `mini` grid."""
    root = tmp_path / "project"
    for part in ("bench", "methods", "config", "Snakefile"):
        source = REPO / part
        (shutil.copytree if source.is_dir() else shutil.copy)(source, root / part)
    (root / "config/grids/mini.yaml").write_text(yaml.safe_dump(GRID))
    os.environ.setdefault("PEFT_REPRO_DATA", str(data_root()))  # the copy has no ../shared beside it
    return root


def snakemake(project, *args, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(project), "PEFT_REPRO_MODELS": os.environ["PEFT_REPRO_MODELS"]}
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", "--config", "grid=mini", *args],
                          cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def planned_jobs(project) -> dict[str, int]:
    """Jobs `snakemake -n` would run, by rule (empty when nothing is to be done)."""
    done = snakemake(project, "-n")
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    if not any(line.startswith("Job stats:") for line in lines):
        assert "Nothing to be done" in done.stdout + done.stderr
        return {}
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:")) + 3
    counts = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("all", None)
    return counts


def records(project) -> dict[str, dict]:
    return {str(p.relative_to(project)): json.loads(p.read_text())
            for p in sorted(project.glob("results/mini/**/record.json"))}


def test_reruns_are_exact(project):
    planned = planned_jobs(project)
    planned.pop("prepare_model", None)  # absent when an earlier test already prepared tiny-llama
    assert planned == {"cell": 4, "report": 1}
    first = snakemake(project)
    assert first.returncode == 0, first.stderr[-2000:]
    assert planned_jobs(project) == {}

    method_file = project / "methods/lora.py"
    original = method_file.read_text()
    method_file.write_text(original + "\n# an edit\n")
    assert planned_jobs(project) == {"cell": 2, "report": 1}  # exactly the lora cells
    method_file.write_text(original)
    assert planned_jobs(project) == {}  # same content again: nothing (inputs compared by checksum)

    (project / "bench/report.py").write_text((project / "bench/report.py").read_text() + "\n# edit\n")
    assert planned_jobs(project) == {"report": 1}  # report code: no training

    grid = dict(GRID, train_sizes=[8, 16, 32])
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(grid))
    assert planned_jobs(project) == {"cell": 2, "report": 1}  # only the new train size's cells
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(GRID))

    methods = dict(GRID["methods"], lora={"lr": 5e-3})
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(dict(GRID, methods=methods)))
    assert planned_jobs(project) == {"cell": 2, "report": 1}  # a changed hyperparameter: only its cells
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(GRID))

    # README "Add a method": the DoRA file from the README plus one grid line schedules only its cells
    readme = (REPO / "README.md").read_text()
    code = readme.split("# methods/dora.py\n", 1)[1].split("```", 1)[0]
    (project / "methods/dora.py").write_text(code)
    methods = dict(GRID["methods"], dora={"lr": 1e-3, "r": 8})
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(dict(GRID, methods=methods)))
    assert planned_jobs(project) == {"cell": 2, "report": 1}
    added = snakemake(project)
    assert added.returncode == 0, added.stderr[-2000:]
    assert len(records(project)) == 6
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(GRID))
    (project / "methods/dora.py").unlink()

    (project / "bench/train.py").write_text((project / "bench/train.py").read_text() + "\n# harness edit\n")
    assert planned_jobs(project) == {"report": 1}  # shared harness code: no silent retraining ...
    assert snakemake(project).returncode == 0
    report = (project / "reports/mini/README.md").read_text()
    stale_rows = [line for line in report.splitlines() if line.startswith("|") and "stale" in line]
    assert len(stale_rows) == 4  # ... but the report flags every cell made by the older code


@pytest.mark.faults
def test_kill_9_at_random_moments_then_resume(project):
    rng = random.Random(0)
    env = {**os.environ, "PYTHONPATH": str(project)}
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--config", "grid=mini",
               "--workflow-profile", str(project.parent / "profile")]
    shutil.copytree(REPO / "profiles/local", project.parent / "profile")
    grid = dict(GRID, train_sizes=[8, 12, 16, 24])  # 8 cells: most kills land mid-grid
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(grid))
    seen: dict[str, tuple] = {}  # record -> (inode, mtime) when first seen complete
    kills_mid_grid = 0
    for attempt in range(20):
        unlock = subprocess.run(command + ["--unlock"], cwd=project, env=env, capture_output=True, text=True)
        assert unlock.returncode == 0, unlock.stderr
        run = subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        if attempt % 2:  # every other kill lands just after a cell finished, whatever the machine's speed
            before = len(list(project.glob("results/mini/**/record.json")))
            deadline = time.monotonic() + 300
            while (len(list(project.glob("results/mini/**/record.json"))) == before and run.poll() is None
                   and time.monotonic() < deadline):
                time.sleep(0.2)
            time.sleep(rng.uniform(0.0, 3.0))
        else:  # the others at a random moment: start-up, model preparation, training, evaluation, report
            time.sleep(rng.uniform(1.0, 12.0))
        finished_before_kill = run.poll() is not None
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:  # the run had already finished the grid
            pass
        run.wait()
        for path in project.glob("results/mini/**/record.json"):
            record = json.loads(path.read_text())  # never partial: always parses, always complete
            assert record["status"] == "ok" and set(record["metrics"]) == {"sst2"}
            stat = path.stat()
            key = str(path)
            assert seen.setdefault(key, (stat.st_ino, stat.st_mtime_ns)) == (stat.st_ino, stat.st_mtime_ns), \
                f"finished cell {path} was recomputed after kill {attempt}"
        kills_mid_grid += bool(seen) and not finished_before_kill and len(seen) < 8
    assert subprocess.run(command + ["--unlock"], cwd=project, env=env, capture_output=True).returncode == 0
    final = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    assert kills_mid_grid >= 3, "too few kills landed between the first and the last record to test resume"
    assert len(records(project)) == 8
    for path in project.glob("results/mini/**/record.json"):
        if str(path) in seen:
            assert seen[str(path)] == (path.stat().st_ino, path.stat().st_mtime_ns)
    again = subprocess.run(command + ["-n"], cwd=project, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
