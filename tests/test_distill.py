"""distill: a student trained on a teacher cell's labels; the teacher is another cell of the grid (DAG edge)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.api.errors import BenchError
from bench.cli import main
from bench.grid.plan import check_cells, grid_cells
from bench.harness.cell import CellConfig, run_cell, write_json_atomic
from bench.harness.method import CellContext, get_method, resolve_hparams
from bench.harness.tasks import data_root, get_task, train_examples

REPO = Path(__file__).resolve().parent.parent
TEACHERS = {  # name -> (task, model, method, train size, hp)
    "sst2": ("sst2", "tiny-llama", "full_ft", 16, {"steps": 2, "batch_size": 4, "max_len": 48, "lr": 1e-2}),
    "mrpc": ("mrpc", "tiny-bert", "lora", 16, {"steps": 2, "batch_size": 4, "max_len": 48, "lr": 1e-2}),
    "e2e": ("e2e", "tiny-llama", "lora", 6, {"steps": 1, "batch_size": 2, "max_len": 64}),
}


@pytest.fixture(scope="module")
def teachers(models_cache, tmp_path_factory):
    """Teacher cells, run once by the harness itself: name -> their directory."""
    root = tmp_path_factory.mktemp("teachers")
    dirs = {}
    for name, (task, model, method, size, hp) in TEACHERS.items():
        run_cell(CellConfig(task, model, method, size, 0, hp, eval_limit=2, shifts=()), root / name, threads=1)
        dirs[name] = root / name
    return dirs


def _prepare(task_name: str, teacher, size: int, seed: int = 0):
    """(the distill student's prepared training examples, the original ones)."""
    method = get_method("distill")
    task = get_task(task_name)
    examples = train_examples(task, size, seed)
    ctx = CellContext(task=task, model_kind="causal_lm", tokenizer=None, train_examples=examples, seed=seed)
    return method.prepare_train_examples(examples, resolve_hparams(method, {"teacher": str(teacher)}), ctx), examples


def _reloaded(teacher: Path):
    """The teacher's adapted model, rebuilt here from its record and delta (independently of distill)."""
    from bench.harness.models import load_model

    config = json.loads((teacher / "record.json").read_text())["config"]
    method, task = get_method(config["method"]), get_task(config["task"])
    model, tokenizer, _ = load_model(config["model"], num_labels=len(task.verbalizer) or None)
    ctx = CellContext(
        task=task, model_kind="encoder" if config["model"] == "tiny-bert" else "causal_lm", tokenizer=tokenizer
    )
    return method.load_delta(model, config["hp"], ctx, teacher / "delta").eval(), tokenizer, config["hp"]


@pytest.mark.parametrize("name", ["sst2", "mrpc"])
def test_classification_labels_are_the_teachers_predictions(teachers, name):
    from bench.harness.evaluation import rank_scores
    from bench.harness.kinds.encoder import encoder_logits

    prepared, examples = _prepare(name, teachers[name], 16)
    model, tokenizer, hp = _reloaded(teachers[name])
    task = get_task(name)
    scores = (
        encoder_logits(model, tokenizer, task, examples, 16, hp["max_len"])
        if name == "mrpc"
        else rank_scores(model, tokenizer, task, examples, 16, hp["max_len"])
    )
    assert [ex.label for ex in prepared] == scores.argmax(dim=-1).tolist()
    assert [ex.fields for ex in prepared] == [ex.fields for ex in examples]


def test_a_teacher_with_a_known_prediction_relabels_every_example(teachers, tmp_path):
    from safetensors.torch import load_file, save_file

    teacher = tmp_path / "teacher"
    shutil.copytree(teachers["sst2"], teacher)
    delta = load_file(str(teacher / "delta/delta.safetensors"))
    delta["model.norm.weight"] *= 0  # every logit 0: both 9-token label words tie, argmax takes label 0
    save_file(delta, str(teacher / "delta/delta.safetensors"))
    prepared, examples = _prepare("sst2", teacher, 16)
    assert {ex.label for ex in examples} == {0, 1}  # the gold labels are mixed ...
    assert [ex.label for ex in prepared] == [0] * 16  # ... the teacher's are not


def test_generation_references_are_the_teachers_greedy_outputs(teachers):
    from bench.harness.evaluation import generate

    prepared, examples = _prepare("e2e", teachers["e2e"], 6)
    model, tokenizer, hp = _reloaded(teachers["e2e"])
    task = get_task("e2e")
    greedy = generate(model, tokenizer, [task.prompt(ex) for ex in examples], task.max_new_tokens, 4, hp["max_len"])
    assert [ex.references for ex in prepared] == [(text,) for text in greedy]
    assert [ex.references for ex in prepared] != [ex.references for ex in examples]


def test_student_cell_trains_on_the_teacher_and_records_it(teachers, tmp_path):
    hp = {"steps": 2, "batch_size": 4, "max_len": 48, "lr": 1e-3, "teacher": str(teachers["sst2"])}
    record = run_cell(
        CellConfig("sst2", "tiny-llama", "distill", 16, 0, hp, eval_limit=4, shifts=()), tmp_path, threads=1
    )
    assert record["status"] == "ok" and record["config"]["hp"]["teacher"] == str(teachers["sst2"])
    assert record["cost"]["trainable_params"] == record["cost"]["total_params"]  # the student: all weights train
    assert len(record["train"]["losses"]) == 2


def _fake_teacher(tmp_path, source: Path, **changes) -> Path:
    teacher = tmp_path / "fake"
    shutil.copytree(source, teacher)
    record = json.loads((teacher / "record.json").read_text())
    record.update(changes)
    write_json_atomic(teacher / "record.json", record)
    return teacher


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "distill teacher {dir} has no record.json: run the teacher cell first"),
        ("other_task", "distill teacher {dir} is a cell of task 'e2e', not sst2: choose a teacher cell of task sst2"),
        ("diverged", "distill teacher {dir} has status 'diverged', not ok"),
        ("none", "distill needs hp teacher=<the teacher cell's directory>"),
    ],
)
def test_bad_teacher_is_one_line_and_keeps_the_record(teachers, tmp_path, capsys, case, message):
    teacher = {
        "missing": lambda: tmp_path / "nowhere",
        "other_task": lambda: teachers["e2e"],
        "diverged": lambda: _fake_teacher(tmp_path, teachers["sst2"], status="diverged"),
        "none": lambda: "",
    }[case]()
    out = tmp_path / "cell"
    write_json_atomic(out / "record.json", {"status": "ok", "finished": True})
    argv = [
        "run-cell",
        "--task",
        "sst2",
        "--model",
        "tiny-llama",
        "--method",
        "distill",
        "--train-size",
        "16",
        "--hp",
        "steps=1",
        "--hp",
        f"teacher={teacher}",
        "--out",
        str(out),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert message.format(dir=teacher) in err
    assert json.loads((out / "record.json").read_text()) == {"status": "ok", "finished": True}


GRID = {
    "models": ["tiny-llama"],
    "methods": {"full_ft": {"lr": 1e-2}, "distill": {"teacher_model": "tiny-llama", "teacher_method": "full_ft"}},
    "tasks": {"sst2": {"shifts": [], "eval_limit": 4, "hp": {"max_len": 32, "batch_size": 2}}},
    "train_sizes": [8],
    "seeds": [0],
    "hp": {"steps": 1},
}


def _grid(tmp_path, **changes):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**GRID, **changes}))
    return str(path)


def test_grid_fills_in_the_teacher_cell(tmp_path):
    cells = grid_cells(_grid(tmp_path, train_sizes=[8, 16], seeds=[0, 1]))
    check_cells(cells)
    for student in [c for c in cells if c.method == "distill"]:
        teacher = next(
            c for c in cells if c.method == "full_ft" and (c.train_size, c.seed) == (student.train_size, student.seed)
        )
        assert student.hp == {"steps": 1, "max_len": 32, "batch_size": 2, "teacher": teacher.dir}
        assert student.needs == (teacher.dir,) and teacher.needs == ()
        assert f"--hp teacher={teacher.dir}" in student.cli_args()
    # teacher_model defaults to the student's model; a list of teacher labels sweeps the teacher
    methods = {"full_ft": None, "lora": None, "distill": {"teacher_method": ["full_ft", "lora"]}}
    swept = {c.label: c.hp["teacher"] for c in grid_cells(_grid(tmp_path, methods=methods)) if c.method == "distill"}
    assert swept == {
        "distill-teacher_method=full_ft": "results/g/sst2/tiny-llama/full_ft/n8/s0",
        "distill-teacher_method=lora": "results/g/sst2/tiny-llama/lora/n8/s0",
    }


@pytest.mark.parametrize(
    "entry, message",
    [
        (
            {"teacher_model": "tiny-bert", "teacher_method": "full_ft"},
            "grid g: cell sst2/tiny-llama/distill/n8: teacher cell results/g/sst2/tiny-bert/full_ft/n8/s0 is not in "
            "the grid: add its model and method label to the grid",
        ),
        ({"teacher_method": "lora"}, "teacher cell results/g/sst2/tiny-llama/lora/n8/s0 is not in the grid"),
        ({"teacher_method": "distill"}, "teacher cell results/g/sst2/tiny-llama/distill/n8/s0 is the cell itself"),
        ({"teacher_model": "tiny-llama"}, "has teacher_model but no teacher_method"),
        ({"lr": 1e-3}, "distill needs hp teacher=<the teacher cell's directory>"),
    ],
)
def test_grid_without_its_teacher_cell_is_one_clear_line(tmp_path, entry, message):
    with pytest.raises(BenchError) as caught:
        check_cells(grid_cells(_grid(tmp_path, methods={"full_ft": None, "distill": entry})))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_snakemake_runs_the_teacher_before_the_student(models_cache, tmp_path):
    project = tmp_path / "project"
    for part in ("bench", "methods", "config", "Snakefile"):
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, project / part)
    (project / "config/grids/kd.yaml").write_text(yaml.safe_dump(GRID))
    env = {**os.environ, "PYTHONPATH": str(project), "PEFT_REPRO_DATA": str(data_root())}

    def snakemake(*args):
        return subprocess.run(
            [sys.executable, "-m", "snakemake", *args, "--cores", "2", "--config", "grid=kd"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    student = "results/kd/sst2/tiny-llama/distill/n8/s0/record.json"
    teacher = "results/kd/sst2/tiny-llama/full_ft/n8/s0/record.json"
    planned = snakemake("-n", student)  # asking for the student alone schedules its teacher, as its input
    assert planned.returncode == 0, planned.stderr
    jobs = {}  # output -> input, of every planned cell job
    for block in planned.stdout.split("rule cell:")[1:]:
        fields = dict(line.strip().split(": ", 1) for line in block.splitlines()[1:7] if ": " in line)
        jobs[fields["output"]] = fields["input"].split(", ")
    assert sorted(jobs) == sorted([teacher, student]), planned.stdout
    assert teacher in jobs[student] and student not in jobs[teacher]
    done = snakemake(student)
    assert done.returncode == 0, done.stderr[-3000:]
    records = {path: json.loads((project / path).read_text()) for path in (teacher, student)}
    assert all(r["status"] == "ok" for r in records.values())
    assert records[student]["config"]["hp"]["teacher"] == str(Path(teacher).parent)
    assert (project / teacher).stat().st_mtime < (project / student).stat().st_mtime


def test_report_pools_a_students_seeds(teachers, tmp_path, monkeypatch):
    from bench.report.write import load, summarize

    monkeypatch.chdir(tmp_path)
    path = _grid(tmp_path, seeds=[0, 1])
    made = json.loads((teachers["sst2"] / "record.json").read_text())
    for cell in grid_cells(path):  # every cell gets a copy of a real record, with its own hyperparameters
        write_json_atomic(Path(cell.dir) / "record.json", {**made, "config": {**made["config"], "hp": cell.hp}})
    cells, frame, hp_cols = load(path)
    assert "teacher" not in hp_cols  # the teacher's dir differs per seed, but it is not a hyperparameter
    rows = summarize(frame, hp_cols)
    student = rows[(rows["method"] == "distill") & (rows["metric"] == "accuracy")]
    assert len(student) == 1 and student["seeds"].iloc[0] == 2
