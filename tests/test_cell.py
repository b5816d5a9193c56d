"""The cell contract end to end on a tiny model: record schema, atomic write, determinism, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import main
from bench.harness.cell import CellConfig, read_outputs, run_cell, write_json_atomic

REPO = Path(__file__).resolve().parent.parent


def _cell(**changes):
    settings = dict(
        task="sst2",
        model="tiny-llama",
        method="lora",
        train_size=16,
        seed=0,
        hp={"steps": 2, "batch_size": 4, "max_len": 48, "lr": 1e-2},
        eval_limit=8,
        shifts=("imdb",),
    )
    settings.update(changes)
    return CellConfig(**settings)


def test_record_is_self_describing_and_repeatable(models_cache, tmp_path, rescoring_gives_the_record):
    first = run_cell(_cell(), tmp_path / "a", threads=1)
    again = run_cell(_cell(), tmp_path / "b", threads=1)
    record = json.loads((tmp_path / "a" / "record.json").read_text())
    assert record == first
    assert record["status"] == "ok" and record["config"]["hp"]["r"] == 4
    assert "dev_limit" not in record["config"]  # opt-in: records without a dev split are as before
    assert "data_seed" not in record["config"]  # opt-in: records whose seed draws their subsample are as before
    assert set(record["metrics"]) == {"sst2", "imdb"}
    assert record["metrics"]["sst2"]["n"] == 8 and 0 <= record["metrics"]["sst2"]["accuracy"] <= 100
    cost = record["cost"]
    for key in (
        "trainable_params",
        "total_params",
        "delta_bytes",
        "peak_mem_bytes",
        "train_tokens_per_s",
        "eval_tokens_per_s",
        "train_s",
        "eval_s",
        "flops_per_step",
        "train_flops_per_s",
        "matmul_peak_flops",
    ):
        assert cost[key] > 0, key
    assert 0 < cost["mfu"] <= 1 and cost["mfu"] == pytest.approx(
        cost["train_flops_per_s"] / cost["matmul_peak_flops"], rel=1e-2
    )
    assert cost["trainable_params"] < cost["total_params"]
    for key in ("python", "torch", "transformers", "peft", "git_commit", "harness_sha256", "device"):
        assert key in record["env"]
    assert set(record["inputs"]["data"]) >= {"sst2/train.tsv", "sst2/dev.tsv"}
    assert len(record["inputs"]["model"]["sha256"]) == 64
    assert len(record["train"]["losses"]) == 2
    assert again["metrics"] == first["metrics"] and again["train"] == first["train"]
    assert not list((tmp_path / "a").glob(".*tmp"))
    assert record["outputs"] == again["outputs"]  # same outputs, same bytes (gzip without a timestamp)
    rescoring_gives_the_record(record, tmp_path / "a")
    row = read_outputs(tmp_path / "a", record)["sst2"][0]
    assert set(row) == {"id", "gold", "pred", "logprobs"} and len(row["logprobs"]) == 2
    assert row["pred"] == max(range(2), key=row["logprobs"].__getitem__)


def test_data_seed_draws_the_subsample_and_seed_the_rest(models_cache, tmp_path, monkeypatch):
    import bench.harness.tasks

    drawn, sample = [], bench.harness.tasks.train_examples
    monkeypatch.setattr(
        bench.harness.tasks,
        "train_examples",
        lambda task, size, seed, *rest: drawn.append(seed) or sample(task, size, seed, *rest),
    )
    record = run_cell(_cell(seed=1, data_seed=3), tmp_path / "a", threads=1)
    same_data = run_cell(_cell(seed=2, data_seed=3), tmp_path / "b", threads=1)
    assert drawn == [3, 3] and record["config"]["data_seed"] == 3 and record["config"]["seed"] == 1
    assert record["train"]["losses"] != same_data["train"]["losses"]  # the init seed still differs
    assert sample(bench.harness.tasks.get_task("sst2"), 16, 3) != sample(bench.harness.tasks.get_task("sst2"), 16, 1)


def test_dev_limit_evaluates_a_dev_split_first(models_cache, tmp_path):
    record = run_cell(_cell(dev_limit=8), tmp_path, threads=1)
    assert record["status"] == "ok" and record["config"]["dev_limit"] == 8
    assert list(record["metrics"]) == ["dev", "sst2", "imdb"]
    assert record["metrics"]["dev"]["n"] == 8 and 0 <= record["metrics"]["dev"]["accuracy"] <= 100
    assert record["metrics"]["sst2"]["n"] == 8 and record["cost"]["eval_s"] > 0


def test_generation_cell_reports_bleu_and_rouge(models_cache, tmp_path, rescoring_gives_the_record):
    record = run_cell(
        _cell(task="e2e", shifts=None, hp={"steps": 1, "batch_size": 2, "max_len": 64}, eval_limit=4),
        tmp_path,
        threads=1,
    )
    assert {"bleu", "rouge_l", "n", "samples"} <= set(record["metrics"]["e2e"])
    assert record["metrics"]["e2e"]["n"] == 4
    rescoring_gives_the_record(record, tmp_path)  # BLEU, NIST, METEOR, ROUGE-L, CIDEr
    row = read_outputs(tmp_path, record)["e2e"][0]
    assert set(row) == {"id", "gold", "hyp"} and row["hyp"] == record["metrics"]["e2e"]["samples"][0]["output"]


def test_diverged_training_is_recorded_with_its_step(models_cache, tmp_path):
    record = run_cell(
        _cell(method="full_ft", hp={"steps": 3, "lr": 1e30, "grad_clip": 0.0, "batch_size": 4}), tmp_path, threads=1
    )
    assert record["status"] == "diverged" and record["diverged_at_step"] is not None
    assert record["metrics"] == {}


def test_atomic_write_leaves_old_record_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    write_json_atomic(path, {"status": "ok", "n": 1})

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(json, "dump", boom)
    with pytest.raises(KeyboardInterrupt):
        write_json_atomic(path, {"status": "ok", "n": 2})
    assert json.loads(path.read_text()) == {"status": "ok", "n": 1}


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "sst3"], "unknown task 'sst3'"),
        (["--model", "gpt5"], "unknown model 'gpt5'"),
        (["--method", "dora"], "unknown method 'dora'"),
        (["--train-size", "0"], "train size 0 invalid for sst2"),
        (["--train-size", "10000000"], "train size 10000000 invalid for sst2"),
        (["--train-size", "many"], "--train-size 'many'"),
        (["--hp", "lr"], "--hp 'lr' must look like key=value"),
        (["--hp", "precision=fp16"], "precision 'fp16' unknown: use fp32 or bf16"),
        (["--shifts", "yelp"], "not defined for task sst2"),
        (["--data-root", "/nonexistent"], "data root"),
        (
            ["--dev-limit", "67349"],
            "dev_limit 67349 is out of range for task sst2: its training split sst2/train has "
            "67349 examples; use an integer from 1 to 67348",
        ),
        (
            ["--dev-limit", "67340"],
            "train size 16 invalid for sst2 (its training split less dev_limit=67340): use 'full' or 1..9",
        ),
        (["--task", "boolq", "--method", "prompt_design", "--dev-limit", "5"], "task boolq has no training split"),
    ],
)
def test_bad_input_is_one_line_before_training_and_keeps_records(models_cache, tmp_path, capsys, args, message):
    out = tmp_path / "cell"
    write_json_atomic(out / "record.json", {"status": "ok", "finished": True})
    base = {"--task": "sst2", "--model": "tiny-llama", "--method": "lora", "--train-size": "16", "--out": str(out)}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    argv = ["run-cell", *[x for pair in base.items() for x in pair]]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("error: ") and len(err.splitlines()) == 1
    assert json.loads((out / "record.json").read_text()) == {"status": "ok", "finished": True}


def test_generation_metrics_without_java_are_one_line_before_training(models_cache, tmp_path, capsys, monkeypatch):
    import shutil

    which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None if name == "java" else which(name, *a, **k))
    import bench.harness.models

    monkeypatch.setattr(bench.harness.models, "load_model", lambda *a, **k: pytest.fail("a model loaded"))
    argv = [
        "run-cell",
        "--task",
        "e2e",
        "--model",
        "tiny-llama",
        "--method",
        "lora",
        "--train-size",
        "8",
        "--out",
        str(tmp_path / "cell"),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        "error: metric(s) meteor, rouge_l, cider need Java (`java` on PATH), which is not installed: "
        "install a "
        "JRE, e.g. apt-get install openjdk-17-jre-headless"
    )
    assert not (tmp_path / "cell").exists()


def test_peak_memory_is_the_cells_own_not_the_matmul_peak_probes(models_cache, tmp_path):
    """The MFU peak is measured (once per machine, then cached) after the cell: its test matrices must not
    count in the cell's peak memory. A fresh process, so that no earlier test's peak RSS counts."""
    script = """
import json, sys, torch
import bench.harness.cell
from tests.test_cell import _cell
PROBE = 1 << 30  # 1 GiB, more than the whole tiny cell's process

def matmul_peak_flops(threads, device, precision):
    torch.ones(PROBE // 4).add_(1)
    return 1e12

bench.harness.cell.matmul_peak_flops = matmul_peak_flops
record = bench.harness.cell.run_cell(_cell(), __import__("pathlib").Path(sys.argv[1]), threads=1)
print(json.dumps([record["cost"]["peak_mem_bytes"], PROBE]))
"""
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    peak, probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert 0 < peak < probe


def test_tiny_grid_through_snakemake(models_cache, tmp_path):
    env = {**os.environ, "PEFT_REPRO_MODELS": str(models_cache)}
    command = [
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
        "grid=tiny",
        "--quiet",
        "all",
    ]
    planned = subprocess.run(command + ["-n"], env=env, capture_output=True, text=True)
    assert planned.returncode == 0, planned.stderr
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = sorted(tmp_path.glob("results/tiny/**/record.json"))
    assert [r.parent.parent.parent.name for r in records] == ["full_ft", "lora"]
    assert all(json.loads(r.read_text())["status"] == "ok" for r in records)
    report = (tmp_path / "reports/tiny/README.md").read_text()
    assert "2 cells: 2 ok" in report
    assert "| sst2 | tiny-llama | full_ft | 26.8K | 100.000 |" in report  # the cost table's rows
    assert "| sst2 | tiny-llama | lora | 896 |" in report
    rerun = subprocess.run(command + ["-n"], env=env, capture_output=True, text=True)
    assert "Nothing to be done" in rerun.stdout + rerun.stderr


@pytest.mark.parametrize("method", ["lora", "full_ft"])
def test_encoder_cell_trains_its_head(models_cache, tmp_path, method, rescoring_gives_the_record):
    record = run_cell(_cell(model="tiny-bert", method=method, task="mrpc", shifts=("qqp",)), tmp_path, threads=1)
    assert record["status"] == "ok" and set(record["metrics"]) == {"mrpc", "qqp"}
    assert {"accuracy", "f1"} <= set(record["metrics"]["mrpc"])
    rescoring_gives_the_record(record, tmp_path)  # log-softmax of the head: accuracy and F1
    if method == "lora":  # 2 layers x (query, value) x r(d_in + d_out), plus the head Linear(32, 2)
        assert record["cost"]["trainable_params"] == 2 * 2 * 4 * (32 + 32) + (32 * 2 + 2)
