"""The per-cell GPU-memory estimate (bench/grid/gpu_memory.py) and the GPU requests it decides (bench.grid.plan)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.api.errors import BenchError
from bench.grid.gpu_memory import estimate_bytes, gpu_request, model_shape
from bench.grid.plan import _resource_rules, cell_resources, grid_cells
from bench.harness.method import get_method
from bench.harness.models import get_model_spec, model_names

REPO = Path(__file__).resolve().parent.parent
RULES = _resource_rules()["gpu_mem"]


def _estimate(config: dict) -> int:
    """A record's estimate without the per-process overhead (what torch itself would hold)."""
    spec, hp = get_method(config["method"]), config["hp"]
    shape = model_shape(config["model"], get_model_spec(config["model"]), RULES["shapes"])
    return estimate_bytes(
        get_model_spec(config["model"]).params,
        shape,
        spec.tunes_base,
        config["method"],
        hp,
        spec.extra_positions(hp),
        0,
    )["total"]


@pytest.mark.parametrize("grid", ["smoke", "methods"])
def test_estimate_against_measured_peaks(grid):
    """Committed records' peak RSS (CPU, fp32 as on CUDA) less the host process's own share, taken from the grid's
    zero-shot cell (peak RSS minus its estimate: interpreter, torch, tokenizer, data), against the estimate: never
    more than 10% under, at most 1.5x over (FT-top-k is the loosest: its frozen blocks' share is approximate)."""
    records = [json.loads(p.read_text()) for p in sorted((REPO / "results" / grid).glob("**/record.json"))]
    assert records, f"no committed records in results/{grid}"
    host = min(
        r["cost"]["peak_mem_bytes"] - _estimate(r["config"])
        for r in records
        if r["config"]["method"] == "prompt_design"
    )
    for r in records:
        measured = r["cost"]["peak_mem_bytes"] - host
        ratio = _estimate(r["config"]) / measured
        assert 0.9 <= ratio <= 1.5, (r["config"]["method"], r["config"]["seed"], ratio)


def test_every_model_has_a_shape():
    for name in model_names():
        layers, hidden, feed_forward, vocab = model_shape(name, get_model_spec(name), RULES["shapes"])
        assert min(layers, hidden, feed_forward, vocab) > 0, name


def test_model_without_shape_is_refused_in_one_line():
    class Spec:
        config = {}

    with pytest.raises(BenchError, match=r"model mystery has no shape .*gpu_mem.shapes in config/resources.yaml"):
        model_shape("mystery", Spec(), {})


def test_gpu_request_by_estimate():
    rules = {"gpu_mb": 80000, "shards_per_gpu": 80}
    assert gpu_request(40001, rules) == {"gres": "", "gpu": 1}  # over half a GPU: one of its own
    assert gpu_request(40000, rules) == {"gres": "shard:40", "gpu": 0}
    assert gpu_request(1909, rules) == {"gres": "shard:2", "gpu": 0}  # rounded up to whole shards
    assert gpu_request(1909, {**rules, "shards_per_gpu": 0}) == {"gres": "", "gpu": 1}  # no sharing
    assert gpu_request(1909, {**rules, "gpu_mb": 0}) == {"gres": "", "gpu": 0}  # no GPUs at all


def test_paper_grid_shares_gpus_between_small_cells_only():
    share = RULES["share"]
    shard_mb = share["gpu_mb"] / share["shards_per_gpu"]
    requests = {}
    for cell in grid_cells("paper"):
        res = cell_resources(cell)
        if res["gpu"]:  # a GPU of its own, no shards
            assert res["gres"] == "" and 2 * res["gpu_mem_mb"] > share["gpu_mb"]
        else:  # enough shards for its estimate, at most half the GPU's
            shards = int(res["gres"].removeprefix("shard:"))
            assert res["gpu_mem_mb"] <= shards * shard_mb < res["gpu_mem_mb"] + shard_mb
            assert shards <= share["shards_per_gpu"] // 2
        requests[(cell.model, cell.method)] = res["gpu"]
    assert requests[("t5-xl-lm-adapt", "full_ft")] == 1
    assert requests[("gpt2-medium", "lora")] == 0


def test_smoke_cells_estimates():
    """SmolLM2-135M, SST-2 batch 8 x 64 tokens: full FT keeps 16 bytes per parameter, LoRA 4 (and fewer
    activations); both share a GPU."""
    res = {c.method: cell_resources(c) for c in grid_cells("smoke") if c.task == "sst2"}
    params = get_model_spec("smollm2-135m").params
    assert res["full_ft"]["gpu_mem_mb"] - res["lora"]["gpu_mem_mb"] >= 12 * params / 2**20
    assert {r["gpu"] for r in res.values()} == {0} and all(r["gres"].startswith("shard:") for r in res.values())


def test_snakemake_plans_each_cell_with_its_gpu_memory(tmp_path, models_cache):
    """The Snakefile hands the estimate to Snakemake (what `--resources gpu_mem_mb=<MiB>` caps) and the request."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--config",
            "grid=tiny",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PEFT_REPRO_MODELS": str(models_cache)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    expected = {c.label: cell_resources(c) for c in grid_cells("tiny")}
    planned = re.findall(r"wildcards: .*variant=(\w+).*\n.*\n\s+resources: (.*)", done.stdout)
    assert sorted(label for label, _ in planned) == sorted(expected)
    for label, resources in planned:
        assert f"gpu_mem_mb={expected[label]['gpu_mem_mb']}" in resources
        assert f"gres={expected[label]['gres']}" in resources and "gpu=0" in resources
