"""`python -m bench benchmarks --gpu` in its CPU quick mode (tiny shapes): every part runs, its correctness checks
hold, and the report names each part (bench/tools/benchmarks_gpu.py)."""

import json
import subprocess
import sys

import pytest
import torch

from bench.tools.benchmarks_gpu import PROJECT_ROOT, SHAPES, bf16_peak


@pytest.mark.skipif(torch.cuda.is_available(), reason="the quick mode is what runs without CUDA")
def test_gpu_check_runs_in_quick_mode_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "benchmarks", "--gpu", "--out", str(out)],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["mode"] == "quick" and data["device"] == "cpu"
    assert [r["shape"] for r in data["train"]] == [r["shape"] for r in data["decode"]] == list(SHAPES)
    assert all(r["losses_agree"] and r["harness_over_bare"] > 0 for r in data["train"])
    assert all(r["outputs_equal"] and 0 < r["slot_share"] < 1 for r in data["decode"])
    assert data["rank"][0]["scores_agree"] and data["rank"][0]["max_score_diff"] < 1e-4
    packing = data["packing"]
    assert packing["losses_agree"] and packing["at_once"] >= 1 and packing["one_at_a_time_s"] > 0
    report = out.with_suffix(".md").read_text()
    for part in ("harness / bare loop", "MFU", "decoding, finished rows dropped", "`rank_scores`", "cells per hour"):
        assert part in report


def test_bf16_peaks_by_device_name():
    assert bf16_peak("NVIDIA H100 80GB HBM3") == 989.4e12
    assert bf16_peak("NVIDIA H100 PCIe") == 756e12
    assert bf16_peak("NVIDIA H200") == 989.4e12
    assert bf16_peak(None) is None and bf16_peak("AMD EPYC") is None


def test_bad_mode_combination_is_refused():
    run = subprocess.run(
        [sys.executable, "-m", "bench", "benchmarks", "--gpu", "--quick"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0 and "not allowed with argument" in run.stderr
