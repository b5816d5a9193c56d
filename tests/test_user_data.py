"""A user's own data: tasks files merged over config/tasks.yaml, data roots of their own, and docs/extend.md's
"Add a dataset" example followed step by step (CLI and Snakemake, on tiny-llama)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.api.errors import BenchError
from bench.harness import tasks as T

REPO = Path(__file__).resolve().parent.parent
REVIEWS = [{"text": "A fine film.", "label": 1}, {"text": "A dull film.", "label": 0}]
SHIFT = {
    "data_roots": ["data"],
    "datasets": {
        "mine/reviews": {
            "files": ["reviews.jsonl"],
            "loader": "jsonl",
            "fields": {"sentence": "text"},
            "label": "label",
        }
    },
    "tasks": {"sst2": {"shifts": {"my_reviews": "mine/reviews"}}},
}


def _own_root(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
        lines.append(f"{hashlib.sha256(text.encode()).hexdigest()}  {rel}\n")
    (folder / "SHA256SUMS").write_text("".join(lines))
    return folder


@pytest.fixture()
def use(tmp_path, monkeypatch):
    """Write a user tasks file (a fresh path each time: the merged registry is cached by path) and make it active."""
    written = []

    def use(content: dict, data: dict[str, str] | None = None) -> Path:
        _own_root(
            tmp_path / "data",
            {"reviews.jsonl": "".join(json.dumps(r) + "\n" for r in REVIEWS)} if data is None else data,
        )
        path = tmp_path / f"tasks{len(written)}.yaml"
        path.write_text(yaml.safe_dump(content))
        written.append(path)
        monkeypatch.setenv(T.TASKS_ENV, str(path))
        return path

    return use


def test_a_shift_added_to_a_shared_task_reads_the_users_root(use, tmp_path):
    path = use(SHIFT)
    sst2 = T.get_task("sst2")
    assert sst2.shifts["my_reviews"] == "mine/reviews" and sst2.shifts["imdb"] == "imdb/test"
    examples = T.eval_examples(sst2, "my_reviews", None)
    assert [(ex.fields["sentence"], ex.label) for ex in examples] == [("A fine film.", 1), ("A dull film.", 0)]
    own = str(tmp_path / "data/reviews.jsonl")
    sums = T.file_sha256s(sst2, ["sst2", "my_reviews"])
    assert set(sums) == {"sst2/train.tsv", "sst2/dev.tsv", own}
    assert sums[own] == hashlib.sha256(Path(own).read_bytes()).hexdigest()
    assert T.user_inputs(sst2, ["sst2", "my_reviews"]) == [str(path), own]
    assert T.user_inputs(sst2, ["sst2", "imdb"]) == []  # reads nothing of the user's: not an input


def test_without_a_tasks_file_the_registry_is_config_tasks_yaml(use, monkeypatch):
    use(SHIFT)
    assert "my_reviews" in T.get_task("sst2").shifts
    monkeypatch.delenv(T.TASKS_ENV)
    assert "my_reviews" not in T.get_task("sst2").shifts and "mine/reviews" not in T.dataset_ids()


def test_a_new_task_over_shared_data_depends_on_the_tasks_file_only(use):
    path = use(
        {
            "tasks": {
                "sst2_terse": {
                    "kind": "classification",
                    "template": "{sentence} ->",
                    "text_fields": ["sentence"],
                    "verbalizer": [" bad", " good"],
                    "metrics": ["accuracy"],
                    "train": "sst2/train",
                    "eval": "sst2/dev",
                    "shifts": {},
                }
            }
        }
    )
    task = T.get_task("sst2_terse")
    assert T.user_inputs(task, ["sst2_terse"]) == [str(path)]
    assert T.user_inputs(T.get_task("sst2"), ["sst2", "imdb"]) == []
    assert task.prompt(T.eval_examples(task, "sst2_terse", 1)[0]).endswith(" ->")


def test_a_users_dataset_may_read_a_shared_file_but_never_shadows_a_shared_dataset(use, tmp_path):
    shadow = "sentence\tlabel\nnot the shared dev set\t1\n"
    use(
        {
            "data_roots": ["data"],
            "datasets": {
                "mine/dvd_train": {
                    "files": ["amazon_multidomain_blitzer/dvd/train.tsv"],
                    "loader": "tsv",
                    "fields": {"sentence": "sentence"},
                    "label": "label",
                }
            },
        },
        data={"sst2/dev.tsv": shadow},
    )
    assert len(T.load_split("mine/dvd_train")) > 0  # not in the user's root: found in the shared one
    dev = T.load_split("sst2/dev")
    assert len(dev) == 872 and (tmp_path / "data/sst2/dev.tsv").read_text() == shadow


def test_the_keys_a_tasks_file_may_use_are_those_of_config_tasks_yaml():
    shared = yaml.safe_load(T.TASKS_YAML.read_text())
    assert set().union(*map(set, shared["datasets"].values())) == T.DATASET_KEYS
    assert set().union(*map(set, shared["tasks"].values())) == T.TASK_KEYS


@pytest.mark.parametrize(
    "content,message",
    [
        ({"dataset": {}}, r"tasks0.yaml: unknown key 'dataset': use data_roots, datasets, tasks"),
        (
            {"datasets": {"mine/reviews": {**SHIFT["datasets"]["mine/reviews"], "file": ["x"]}}},
            r"datasets.mine/reviews: unknown key 'file': use clean, explode, fields, files, .*",
        ),
        (
            {"datasets": {"mine/reviews": {"files": ["reviews.jsonl"], "fields": {"sentence": "text"}}}},
            r"datasets.mine/reviews: no 'loader': .*a new one needs files, loader, fields",
        ),
        (
            {"tasks": {"sst2": {"template": "{sentence} ->"}}},
            r"tasks0.yaml: tasks.sst2: config/tasks.yaml declares it and a tasks file may only add: give yours a new "
            r"name \(to one of its tasks, only `shifts: \{name: dataset\}`\)",
        ),
        (
            {"tasks": {"sst2": {"max_new_tokens": 3}}},
            r"tasks.sst2: config/tasks.yaml declares it",
        ),  # adding is changing
        (
            {**SHIFT, "tasks": {"sst2": {"shifts": {"imdb": "mine/reviews"}}}},
            r"tasks.sst2.shifts.imdb: config/tasks.yaml declares it and a tasks file may only add: give yours a new "
            r"name",
        ),
        ({"datasets": {"sst2/dev": {"files": ["reviews.jsonl"]}}}, r"dataset sst2/dev: config/tasks.yaml declares it"),
        ({**SHIFT, "tasks": {"sst2": {"shifts": {"dev": "mine/reviews"}}}}, r"task sst2: shift name 'dev' is taken"),
        ({"tasks": {"sst2": {"shifts": {"x": "mine/nothing"}}}}, r"task sst2 uses undeclared dataset 'mine/nothing'"),
        (
            {**SHIFT, "data_roots": ["nowhere"]},
            r"data root .*nowhere \(data_roots of .*\) has no SHA256SUMS: create it",
        ),
    ],
)
def test_bad_tasks_files_are_one_line_naming_the_fix(use, content, message):
    use(content)
    with pytest.raises(BenchError, match=message) as error:
        T.get_task("sst2")
    assert "\n" not in str(error.value)


def test_a_users_file_missing_from_every_root(use):
    use({**SHIFT, "datasets": {"mine/reviews": {**SHIFT["datasets"]["mine/reviews"], "files": ["gone.jsonl"]}}})
    with pytest.raises(
        BenchError,
        match=r"data file gone.jsonl of dataset mine/reviews not found in data roots "
        r".*/data, .*: put it in one of the data_roots of .*tasks0.yaml",
    ):
        T.eval_examples(T.get_task("sst2"), "my_reviews", None)


# ------------------------------------------------------------------ docs/extend.md "Add a dataset", step by step
def _readme_blocks() -> list[tuple[str, str]]:
    section = (REPO / "docs" / "extend.md").read_text().split("## Add a dataset\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.S)


def _as_pattern(readme_line: str) -> str:
    return ".*".join(map(re.escape, readme_line.strip().split("…")))


def _tiny(command: str) -> str:
    """The page's command on tiny-llama with a few steps."""
    for real, tiny in (("smollm2-135m", "tiny-llama"), ("steps=20", "steps=2"), ("--eval-limit 64", "--eval-limit 8")):
        assert real in command
        command = command.replace(real, tiny)
    return command.replace("python ", f"{shlex.quote(sys.executable)} ", 1)


@pytest.fixture()
def checkout(tmp_path, models_cache):
    """A copy of the code: the page's `../mine` lands in tmp_path, beside it."""
    root = tmp_path / "project"
    for part in ("bench", "methods", "config", "profiles", "Snakefile"):  # profiles/default: what plain snakemake reads
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, root / part)
    return root


def _shell(command: str, cwd: Path, **env) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd), "PEFT_REPRO_DATA": str(T.data_root()), **env}
    env.pop(T.TASKS_ENV, None)
    return subprocess.run(["bash", "-ec", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _write_file_block(block: str, checkout: Path) -> Path:
    first, body = block.split("\n", 1)
    path = checkout / first.removeprefix("# ")
    path.write_text(block)
    return path


def test_readme_add_a_dataset_step_by_step(checkout):
    blocks = _readme_blocks()
    assert [kind for kind, _ in blocks] == ["bash", "yaml", "bash", "yaml", "bash", "text", "text"]
    (_, make_data), (_, tasks_yaml), (_, run_cell), _, _, (_, unlisted), (_, tampered) = blocks
    made = _shell(make_data, checkout)
    assert made.returncode == 0, made.stderr
    data = checkout.parent / "mine/data"
    assert len((data / "my_reviews.jsonl").read_text().splitlines()) == 12
    tasks_file = _write_file_block(tasks_yaml, checkout)
    assert tasks_file == checkout / "../mine/tasks.yaml" and len(tasks_yaml.strip().splitlines()) == 6

    command = _tiny(run_cell.replace("\\\n", " "))
    done = _shell(command, checkout)
    assert done.returncode == 0, done.stderr[-2000:]
    out = checkout / "results/mine/lora"
    record = json.loads((out / "record.json").read_text())
    assert list(record["metrics"]) == ["sst2", "imdb", "my_reviews"] and record["metrics"]["my_reviews"]["n"] == 8
    assert record["config"]["tasks_file"] == {
        "path": str(tasks_file.resolve()),
        "sha256": hashlib.sha256(tasks_file.read_bytes()).hexdigest(),
    }
    own = str((data / "my_reviews.jsonl").resolve())
    listed = (data / "SHA256SUMS").read_text().split()
    assert record["inputs"]["data"][own] == listed[0] and listed[1] == "my_reviews.jsonl"
    assert {"sst2/train.tsv", "sst2/dev.tsv", "imdb/test.jsonl.gz"} < set(record["inputs"]["data"])
    kept = (out / "record.json").read_bytes()

    # a file added to `files:` but not to SHA256SUMS
    (data / "more_reviews.jsonl").write_text(json.dumps({"text": "Fine.", "label": 1}) + "\n")
    tasks_file.write_text(tasks_yaml.replace("[my_reviews.jsonl]", "[my_reviews.jsonl, more_reviews.jsonl]"))
    failed = _shell(command, checkout)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr[-2000:]
    assert re.fullmatch(_as_pattern(unlisted), failed.stderr.strip()), failed.stderr
    assert (out / "record.json").read_bytes() == kept

    # a listed file changed afterwards
    tasks_file.write_text(tasks_yaml)
    with open(data / "my_reviews.jsonl", "a") as reviews:
        reviews.write(json.dumps({"text": "Not bad at all.", "label": 1}) + "\n")
    failed = _shell(command, checkout)
    assert failed.returncode == 2 and len(failed.stderr.strip().splitlines()) == 1, failed.stderr[-2000:]
    assert re.fullmatch(_as_pattern(tampered), failed.stderr.strip()), failed.stderr
    assert (out / "record.json").read_bytes() == kept


def _planned(checkout: Path, snakemake: str) -> dict[str, int]:
    """Jobs by rule that `snakemake -n` plans (empty when there is nothing to do)."""
    done = _shell(f"{snakemake} -n", checkout)
    assert done.returncode == 0, done.stderr[-2000:]
    counts = dict(re.findall(r"^(cell|report)\s+(\d+)$", done.stdout + done.stderr, re.M))
    return {rule: int(n) for rule, n in counts.items()}


def test_readme_grid_reruns_exactly_the_cells_reading_the_users_files(checkout):
    (_, make_data), (_, tasks_yaml), _, (_, grid_yaml), (_, run_grid), _, _ = _readme_blocks()
    assert _shell(make_data, checkout).returncode == 0
    tasks_file = _write_file_block(tasks_yaml, checkout)
    grid_file = _write_file_block(grid_yaml, checkout)
    block = yaml.safe_load(grid_yaml)
    assert block["tasks"]["sst2"]["shifts"] == ["imdb", "my_reviews"]
    block.update(models=["tiny-llama"], hp={"steps": 1, "max_len": 32, "batch_size": 2}, train_sizes=[8])
    block["tasks"]["sst2"]["eval_limit"] = 4
    without = {**block, "methods": {"full_ft": {"lr": 1e-3}}, "tasks": {"sst2": {"shifts": ["imdb"], "eval_limit": 4}}}
    grid_file.write_text(yaml.safe_dump({"blocks": [block, without]}))  # a second cell that reads nothing of the user's
    snakemake = f"{shlex.quote(sys.executable)} -m {run_grid.strip()}"

    assert _planned(checkout, snakemake) == {"cell": 2, "report": 1}
    done = _shell(snakemake, checkout)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads(next(checkout.glob("results/grid/sst2/tiny-llama/lora/**/record.json")).read_text())
    assert record["metrics"]["my_reviews"]["n"] == 4 and "tasks_file" in record["config"]
    assert _planned(checkout, snakemake) == {}

    data = checkout.parent / "mine/data"
    reviews = data / "my_reviews.jsonl"
    reviews.write_text(reviews.read_text() + json.dumps({"text": "Not bad at all.", "label": 1}) + "\n")
    assert _shell("cd ../mine/data && sha256sum my_reviews.jsonl > SHA256SUMS", checkout).returncode == 0
    assert _planned(checkout, snakemake) == {"cell": 1, "report": 1}  # only the cell evaluating my_reviews
    assert _shell(snakemake, checkout).returncode == 0
    tasks_file.write_text(tasks_file.read_text() + "# a comment: the entries mean the same\n")
    assert _planned(checkout, snakemake) == {}
    entry = "fields: {sentence: text}, label: label}"
    tasks_file.write_text(tasks_file.read_text().replace(entry, entry[:-1] + ", squash: true}"))
    assert _planned(checkout, snakemake) == {"cell": 1, "report": 1}  # an entry the cell reads changed
