"""Issue 33's CLI probes: every bad argument, a full disk and an unwritable output end in one line
(`error: <problem>: <fix>`), before any model loads, with nothing partial left; library chatter is filtered."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.api.errors import BenchError
from bench.harness.cell import CellConfig, run_cell, save_delta_atomic, write_json_atomic

REPO = Path(__file__).resolve().parent.parent
CELL = ["run-cell", "--task", "sst2", "--model", "tiny-llama", "--method", "lora", "--train-size", "16"]


def bench(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PEFT_REPRO_MODELS": str(tmp_path / "models"), "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    "args, problem",
    [
        ([*CELL, "--hp", "lr=-1"], "hyperparameter lr=-1 must be > 0: use a positive learning rate"),
        ([*CELL, "--seed", "-3"], "seed -3 must be an integer in 0..4294967295: use e.g. --seed 0"),
        ([*CELL, "--hp", "steps=0"], "without training, which takes many minutes on a CPU: pass --eval-limit N"),
        ([*CELL, "--hp", "batch_size=0", "--eval-limit", "8"], "batch_size=0 must be >= 1"),
        ([*CELL, "--eval-limit", "-5"], "eval limit -5 must be a positive number of examples"),
        (["methods", "--task", "nosuch"], "unknown task 'nosuch': choose one of"),
        ([*CELL[:2], "nosuch", *CELL[3:]], "unknown task 'nosuch': choose one of"),
    ],
)
def test_a_bad_argument_is_one_line_before_any_model_loads(args, problem, tmp_path):
    out = tmp_path / "cell"
    done = bench([*args, "--out", str(out)] if args[0] == "run-cell" else args, tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ") and problem in done.stderr, done.stderr
    assert ": " in done.stderr[len("error: ") :]  # a problem, then its fix
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert not out.exists()  # nothing written
    assert not (tmp_path / "models").exists() or not any((tmp_path / "models").iterdir())  # no model converted


def test_steps_0_runs_once_the_eval_sets_are_limited():
    from bench.harness.cell import plan_cell

    plan = plan_cell(
        CellConfig(task="sst2", model="tiny-llama", method="lora", train_size=16, hp={"steps": 0}, eval_limit=8)
    )
    assert plan.hp["steps"] == 0
    plan_cell(
        CellConfig(task="sst2", model="tiny-llama", method="lora", train_size=16, hp={"steps": 0}, grid="paper")
    )  # a grid states its eval sets: the paper grid scores them all


def test_an_unwritable_output_is_one_line_before_the_model_loads(tmp_path, models_cache, monkeypatch):
    import bench.harness.models

    monkeypatch.setattr(bench.harness.models, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(BenchError, match=r"^cannot write to .*a-file/cell .*: pass an --out folder you can write to$"):
        run_cell(
            CellConfig(task="sst2", model="tiny-llama", method="lora", train_size=16, hp={"steps": 1}, eval_limit=4),
            blocker / "cell",
        )


def test_the_writability_probe_leaves_no_folder_behind(tmp_path):
    from bench.harness.cell import check_writable

    check_writable(tmp_path / "a" / "b" / "cell")
    assert list(tmp_path.iterdir()) == []  # the folders it made to probe are gone again


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_writing_a_record_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(BenchError, match=r"^no space left on the device while writing .*record\.json: free some space"):
        write_json_atomic(tmp_path / "record.json", {"status": "ok"})
    assert list(tmp_path.iterdir()) == []  # neither the record nor its temporary file


class HalfWritten:
    """A method whose save_delta writes part of a file, then finds the disk full (as safetensors does)."""

    def save_delta(self, model, folder: Path):
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(b"\0" * 100)
        disk_full()


def test_a_full_disk_while_saving_a_delta_keeps_the_previous_one(tmp_path):
    delta = tmp_path / "delta"
    delta.mkdir()
    (delta / "adapter_model.safetensors").write_bytes(b"complete")
    with pytest.raises(BenchError, match=r"^no space left on the device while writing .*delta: free some space"):
        save_delta_atomic(HalfWritten(), None, delta)
    assert [p.name for p in tmp_path.iterdir()] == ["delta"]  # no temporary folder left
    assert (delta / "adapter_model.safetensors").read_bytes() == b"complete"


def test_a_full_disk_in_a_cell_leaves_no_record_and_no_delta(tmp_path, models_cache, monkeypatch):
    from bench.harness.method import get_method

    method = get_method("lora")
    monkeypatch.setattr(type(method), "save_delta", HalfWritten.save_delta)
    out = tmp_path / "cell"
    with pytest.raises(BenchError, match="^no space left on the device while writing"):
        run_cell(
            CellConfig(
                task="sst2",
                model="tiny-llama",
                method="lora",
                train_size=8,
                seed=0,
                hp={"steps": 1, "batch_size": 4, "max_len": 32},
                eval_limit=4,
                shifts=(),
            ),
            out,
            threads=1,
        )
    assert sorted(p.name for p in out.iterdir()) == []  # no record, no delta, no temporary


def test_the_transformers_futurewarning_is_filtered_for_every_entry_point():
    warn = (
        "import warnings; warnings.warn('`is_gradient_checkpointing` is deprecated and will be removed in v6. "
        "Use `is_activation_checkpointing` instead.', FutureWarning)"
    )
    plain = subprocess.run([sys.executable, "-c", warn], capture_output=True, text=True, cwd=REPO)
    quiet = subprocess.run([sys.executable, "-c", "import bench; " + warn], capture_output=True, text=True, cwd=REPO)
    assert "FutureWarning" in plain.stderr and quiet.stderr == ""
    other = subprocess.run(
        [sys.executable, "-c", "import bench, warnings; warnings.warn('other', FutureWarning)"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert "other" in other.stderr  # only the one that says nothing is filtered
