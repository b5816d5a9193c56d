"""Exact reruns and resume after kill -9, through real snakemake runs on a fresh clone of the project."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.harness.tasks import data_root

REPO = Path(__file__).resolve().parent.parent
GRID = {
    "models": ["tiny-llama"],
    "methods": {"full_ft": {"lr": 1e-3}, "lora": {"lr": 1e-2}},
    "tasks": {"sst2": {"shifts": [], "eval_limit": 4, "hp": {"max_len": 32, "batch_size": 2}}},
    "train_sizes": [8, 16],
    "seeds": [0],
    "hp": {"steps": 1},
}


def git(cwd, *args) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout


@pytest.fixture()
def clone(tmp_path) -> Path:
    """`git clone` of the project as it is now (a commit of the working tree, edits included): the committed
    records, no .snakemake metadata, every file's time the checkout's; and an empty model cache."""
    snapshot = tmp_path / "snapshot"
    for name in git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0"):
        if name and (REPO / name).is_file():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, snapshot / name)
    git(snapshot, "init", "-q")
    git(snapshot, "add", "-A")
    git(snapshot, "-c", "user.name=test", "-c", "user.email=test@example.org", "commit", "-q", "-m", "snapshot")
    git(tmp_path, "clone", "-q", str(snapshot), "clone")
    (tmp_path / "models").mkdir()
    return tmp_path / "clone"


def snakemake(project, *args, timeout=600, env=None):
    """The default invocation (Snakemake loads profiles/default by itself) with the clone's code."""
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=project,
        env={**environment(project), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def environment(project) -> dict:
    return {
        **os.environ,
        "PYTHONPATH": str(project),
        "PEFT_REPRO_MODELS": str(project.parent / "models"),
        "PEFT_REPRO_DATA": str(data_root()),
    }  # the clone has no ../shared beside it


def plan(project, *args, env=None) -> tuple[dict[str, int], list[str]]:
    """(jobs `snakemake -n` would run, by rule; the records its cell jobs would write); `env`: variables to set."""
    done = snakemake(project, "-n", *args, env=env)
    assert done.returncode == 0, done.stderr
    lines = (done.stdout + done.stderr).splitlines()
    if not any(line.startswith("Job stats:") for line in lines):
        assert "Nothing to be done" in done.stdout + done.stderr
        return {}, []
    start = next(i for i, line in enumerate(lines) if line.startswith("Job stats:")) + 3
    counts = {}
    for line in lines[start:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    counts.pop("all", None)
    cells = sorted(
        {
            line.split("output:", 1)[1].strip()
            for line in lines
            if line.strip().startswith("output:") and line.strip().endswith("record.json")
        }
    )
    return counts, cells


def planned_jobs(project) -> dict[str, int]:
    return plan(project, "--config", "grid=mini")[0]


def records(project) -> dict[str, dict]:
    return {
        str(p.relative_to(project)): json.loads(p.read_text())
        for p in sorted(project.glob("results/mini/**/record.json"))
    }


def backdate(project, seconds_ago):
    """Set every tracked file's times to `seconds_ago(path)` seconds before now."""
    now = time.time()
    for name in filter(None, git(project, "ls-files", "-z").split("\0")):
        os.utime(project / name, (now - seconds_ago(name),) * 2)


def add_readme_dora(project):
    """docs/add-a-method.md, word for word: its methods/dora.py and its grid line under `methods:` in smoke.yaml."""
    readme = (REPO / "docs" / "add-a-method.md").read_text()
    (project / "methods/dora.py").write_text(readme.split("# methods/dora.py\n", 1)[1].split("```", 1)[0])
    line = re.search(r"one grid line, `([^`]+)` under `methods:` in `config/grids/smoke.yaml`", readme)[1]
    grid = project / "config/grids/smoke.yaml"
    text = grid.read_text()
    methods = re.search(r"^( *)(- )?methods:\n( *)", text, re.M)  # the first methods: and its entries' indent
    grid.write_text(text[: methods.end()] + line + "\n" + text[methods.end() - len(methods[3]) :])


# The committed records of the default grid (SmolLM2, not converted here: planning only).
def test_fresh_clone_plans_no_training(clone):
    counts, cells = plan(clone)
    assert cells == []
    # The report alone may run (seconds, records only, byte-identical output): git writes results/ after
    # reports/, so the records look newer than the report, and a fresh clone has no checksums to say otherwise.
    assert counts in ({}, {"report": 1})


def test_readme_new_method_plans_exactly_its_cells(clone):
    add_readme_dora(clone)
    counts, cells = plan(clone)
    assert counts == {"prepare_model": 1, "cell": 4, "report": 1}
    assert len(cells) == 4 and all("/smollm2-135m/dora/" in cell for cell in cells)


def test_touching_every_file_trains_nothing_but_a_method_edit_reruns_its_cells(clone):
    backdate(clone, lambda name: 120 if name.startswith(("results/", "reports/")) else 60)  # inputs newest: worst
    counts, cells = plan(clone)
    assert cells == [] and set(counts) <= {"report"}  # the report: harness files newer than it, no checksums

    method_file = clone / "methods/lora.py"
    method_file.write_text(method_file.read_text() + "\n# a comment: the code means the same\n")
    counts, cells = plan(clone)
    assert cells == [] and set(counts) <= {"report"}
    method_file.write_text(method_file.read_text() + "\nEDITED = True\n")
    counts, cells = plan(clone)
    assert counts == {"prepare_model": 1, "cell": 4, "report": 1}
    assert len(cells) == 4 and all("/smollm2-135m/lora/" in cell for cell in cells)


def smoke_cells(*parts) -> list[str]:
    """The committed smoke records whose path has every one of `parts`."""
    found = sorted(str(p.relative_to(REPO)) for p in REPO.glob("results/smoke/**/record.json"))
    return [path for path in found if all(part in path for part in parts)]


def report_stale_rows(project, grid="smoke") -> list[str]:
    """`python -m bench report GRID` in the project (records only, no training): its Stale cells rows."""
    done = subprocess.run(
        [sys.executable, "-m", "bench", "report", grid],
        cwd=project,
        env=environment(project),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    readme = (project / f"reports/{grid}/README.md").read_text()
    return (
        [line for line in readme.split("## Stale cells")[-1].splitlines() if line.startswith("| `results/")]
        if "## Stale cells" in readme
        else []
    )


# A fresh clone has no .snakemake metadata: what reruns is decided by the records' identities alone.
def test_a_grid_hp_change_reruns_exactly_its_cells_and_the_report_names_it(clone):
    grid = clone / "config/grids/smoke.yaml"
    grid.write_text(grid.read_text().replace("hp: {steps: 20}", "hp: {steps: 30}"))
    counts, cells = plan(clone)
    changed = [c for c in smoke_cells() if "/prompt_design/" not in c]  # prompt design keeps its own steps: 0
    assert cells == changed and len(changed) == 8
    rows = report_stale_rows(clone)
    assert len(rows) == 8 and all("hp.steps 20 → 30" in row for row in rows)


def test_a_template_or_verbalizer_change_reruns_exactly_that_tasks_cells(clone):
    tasks = clone / "config/tasks.yaml"
    original = tasks.read_text()
    template = '    template: "Review: {sentence}\\nSentiment:"\n'
    assert template in original
    tasks.write_text(original.replace(template, template.replace("Sentiment:", "Opinion:"), 1))
    assert plan(clone)[1] == smoke_cells("/sst2/")
    assert all("task.sst2.template" in row for row in report_stale_rows(clone))
    verbalizer = '    verbalizer: [" negative", " positive"]\n'
    tasks.write_text(original.replace(verbalizer, verbalizer.replace("positive", "good"), 1))
    assert plan(clone)[1] == smoke_cells("/sst2/")
    tasks.write_text(original)
    assert plan(clone)[1] == []


def test_a_data_file_change_reruns_exactly_the_cells_reading_it(clone, tmp_path):
    shared = data_root()
    root = tmp_path / "data"
    root.mkdir()
    for entry in shared.iterdir():
        if entry.name not in ("e2e", "SHA256SUMS"):
            (root / entry.name).symlink_to(entry)
    shutil.copytree(shared / "e2e", root / "e2e")
    testset = root / "e2e/testset_w_refs.csv"
    text = testset.read_text()
    testset.write_text(text.replace("restaurant", "Restaurant", 1))  # one reference word
    digest = subprocess.run(
        ["sha256sum", "e2e/testset_w_refs.csv"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()[0]
    sums = [
        f"{digest}  e2e/testset_w_refs.csv" if line.endswith("e2e/testset_w_refs.csv") else line
        for line in (shared / "SHA256SUMS").read_text().splitlines()
    ]
    (root / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    assert plan(clone, env={"PEFT_REPRO_DATA": str(root)})[1] == smoke_cells("/e2e/")


def test_a_cosmetic_harness_edit_reruns_and_flags_nothing_a_real_one_every_record(clone):
    train, cell = clone / "bench/harness/train.py", clone / "bench/harness/cell.py"
    original = train.read_text()
    docstring = original.split('"""', 2)[1]
    train.write_text(original.replace(docstring, docstring + "\nA docstring edit.\n", 1) + "\n# a comment\n")
    cell.write_text(cell.read_text().replace("\n\n\ndef ", "\n\n\n# why, as a comment\ndef ", 1))
    counts, cells = plan(clone)
    assert cells == [] and set(counts) <= {"report"}
    assert report_stale_rows(clone) == []
    train.write_text(original + "\nHARNESS_EDIT = 1\n")
    assert plan(clone)[1] == smoke_cells()
    rows = report_stale_rows(clone)
    assert len(rows) == 9 and all("| harness" in row for row in rows)


def test_a_deleted_record_reruns_its_cell_under_a_current_report(clone):
    """The report's stale-cell commands: delete a record, run the grid. Snakemake 9 rebuilds no missing input of
    a job whose outputs are newer than its inputs, so only the default target's asking for every record does it."""
    backdate(clone, lambda name: 60 if name.startswith("reports/") else 120)  # the report newer than all it reads
    assert plan(clone) == ({}, [])
    record = sorted(clone.glob("results/smoke/**/record.json"))[0]
    record.unlink()
    counts, cells = plan(clone)
    assert counts == {"prepare_model": 1, "cell": 1, "report": 1}
    assert cells == [str(record.relative_to(clone))]


def test_kill_9_unlock_and_the_same_command_finishes(clone):
    command = ["--cores", "1", "--config", "grid=tiny"]  # config/grids/tiny.yaml: 2 cells, one at a time
    env = environment(clone)
    run = subprocess.Popen(
        [sys.executable, "-m", "snakemake", *command],
        cwd=clone,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 600
    while not list(clone.glob("results/tiny/**/record.json")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)  # the first record is written, the second cell is on its way
    run.wait()
    finished = {
        path: (path.stat().st_ino, path.stat().st_mtime_ns) for path in clone.glob("results/tiny/**/record.json")
    }
    assert len(finished) == 1, "the kill should land between the two cells"

    assert snakemake(clone, "--unlock", *command[2:]).returncode == 0
    again = subprocess.run(
        [sys.executable, "-m", "snakemake", *command], cwd=clone, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-2000:]
    done = sorted(clone.glob("results/tiny/**/record.json"))
    assert len(done) == 2
    for path in done:
        assert json.loads(path.read_text())["status"] == "ok"  # complete: parses, and the cell finished
    assert all(finished[path] == (path.stat().st_ino, path.stat().st_mtime_ns) for path in finished)
    assert plan(clone, *command[2:]) == ({}, [])


def test_reruns_are_exact(clone):
    project = clone
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(GRID))
    assert planned_jobs(project) == {"prepare_model": 1, "cell": 4, "report": 1}
    first = snakemake(project, "--config", "grid=mini")
    assert first.returncode == 0, first.stderr[-2000:]
    assert planned_jobs(project) == {}

    method_file = project / "methods/lora.py"
    original = method_file.read_text()
    method_file.write_text(original + "\nEDITED = True\n")
    assert planned_jobs(project) == {"cell": 2, "report": 1}  # exactly the lora cells
    method_file.write_text(original)
    assert planned_jobs(project) == {}  # same content again: nothing (inputs compared by checksum)

    (project / "bench/report/write.py").write_text((project / "bench/report/write.py").read_text() + "\n# edit\n")
    assert planned_jobs(project) == {"report": 1}  # report code: no training

    grid = dict(GRID, train_sizes=[8, 16, 32])
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(grid))
    assert planned_jobs(project) == {"cell": 2, "report": 1}  # only the new train size's cells
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(GRID))

    methods = dict(GRID["methods"], lora={"lr": 5e-3})
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(dict(GRID, methods=methods)))
    assert planned_jobs(project) == {"cell": 2, "report": 1}  # a changed hyperparameter: only its cells
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(GRID))

    # docs/add-a-method.md: the DoRA file from that page plus one grid line schedules only its cells
    readme = (REPO / "docs" / "add-a-method.md").read_text()
    code = readme.split("# methods/dora.py\n", 1)[1].split("```", 1)[0]
    (project / "methods/dora.py").write_text(code)
    methods = dict(GRID["methods"], dora={"lr": 1e-3, "r": 8})
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(dict(GRID, methods=methods)))
    assert planned_jobs(project) == {"cell": 2, "report": 1}
    added = snakemake(project, "--config", "grid=mini")
    assert added.returncode == 0, added.stderr[-2000:]
    assert len(records(project)) == 6
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(GRID))
    (project / "methods/dora.py").unlink()

    train = project / "bench/harness/train.py"
    train.write_text(train.read_text() + "\n# a comment in harness code\n")
    assert planned_jobs(project) == {"report": 1}  # no training; the report reads bench/**/*.py by time
    train.write_text(train.read_text() + "\nHARNESS_EDIT = 1\n")
    assert planned_jobs(project) == {"cell": 4, "report": 1}  # a real harness edit: every record is another's
    assert len(report_stale_rows(project, "mini")) == 4  # ... and, until rerun, the report flags every one


@pytest.mark.faults
def test_kill_9_at_random_moments_then_resume(clone):
    project = clone
    rng = random.Random(0)
    env = environment(project)
    command = [sys.executable, "-m", "snakemake", "--cores", "2", "--config", "grid=mini"]  # profiles/default
    grid = dict(GRID, train_sizes=[8, 12, 16, 24])  # 8 cells: most kills land mid-grid
    (project / "config/grids/mini.yaml").write_text(yaml.safe_dump(grid))
    seen: dict[str, tuple] = {}  # record -> (inode, mtime) when first seen complete
    kills_mid_grid = 0
    for attempt in range(20):
        unlock = subprocess.run(command + ["--unlock"], cwd=project, env=env, capture_output=True, text=True)
        assert unlock.returncode == 0, unlock.stderr
        run = subprocess.Popen(
            command, cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        if attempt % 2:  # every other kill lands just after a cell finished, whatever the machine's speed
            before = len(list(project.glob("results/mini/**/record.json")))
            deadline = time.monotonic() + 300
            while (
                len(list(project.glob("results/mini/**/record.json"))) == before
                and run.poll() is None
                and time.monotonic() < deadline
            ):
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
            assert seen.setdefault(key, (stat.st_ino, stat.st_mtime_ns)) == (stat.st_ino, stat.st_mtime_ns), (
                f"finished cell {path} was recomputed after kill {attempt}"
            )
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
