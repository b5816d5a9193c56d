"""Benchmarks of our own machinery (pytest-benchmark): deselected unless asked for.

Run them with `python -m bench benchmarks [--quick]` (writes the report), or directly with
`python -m pytest tests/benchmarks --run-benchmarks` (or PEFT_REPRO_BENCHMARKS=1; mode from
PEFT_REPRO_BENCH_MODE=quick|full, default quick; threads from PEFT_REPRO_BENCH_THREADS, default 1).
The plain `python -m pytest` run deselects everything in this folder.
"""

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_addoption(parser):
    # Registered only when this folder is on the command line (pytest reads non-initial conftests'
    # options never); PEFT_REPRO_BENCHMARKS=1 works from anywhere.
    parser.addoption(
        "--run-benchmarks", action="store_true", default=False, help="run tests/benchmarks (deselected by default)"
    )


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "benchmark: a benchmark of our own machinery (deselected unless --run-benchmarks or PEFT_REPRO_BENCHMARKS=1)",
    )


def enabled(config) -> bool:
    return os.environ.get("PEFT_REPRO_BENCHMARKS") == "1" or bool(config.getoption("--run-benchmarks", default=False))


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.benchmark)
    if enabled(config):
        return
    deselected = [item for item in items if HERE in Path(str(item.path)).resolve().parents]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = [item for item in items if item not in deselected]


@pytest.fixture(scope="session", autouse=True)
def bench_threads():
    import torch

    from bench.tools.benchmarks import bench_threads as threads

    previous = torch.get_num_threads()
    torch.set_num_threads(threads())
    os.environ["OMP_NUM_THREADS"] = str(threads())
    yield threads()
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def settings():
    from bench.tools.benchmarks import settings as current

    return current()


@pytest.fixture(scope="session")
def zero_shot(settings):
    """(model, tokenizer) of the mode's model, untrained, shared by the evaluation benchmarks."""
    from bench.tools.benchmarks import load

    return load(settings.model)


@pytest.fixture(scope="session")
def matmul_peak(bench_threads):
    """This machine's fp32 (CPU) / bf16 (CUDA) matmul peak, measured in this session."""
    from bench.harness.flops import measure_matmul_peak
    from bench.tools.benchmarks import device

    size = 8192 if device() == "cuda" else 2048
    return {
        "flops": measure_matmul_peak(bench_threads, device(), size=size),
        "size": size,
        "dtype": "bf16" if device() == "cuda" else "fp32",
    }


@pytest.fixture(scope="session")
def memory_probes(settings, bench_threads):
    """One fresh subprocess per method: peak memory, its estimate, step times and FLOPs (items 4 and 5)."""
    from bench.tools.benchmarks import run_memory_probes

    # quick mode: two probes at a time (tiny models; memory is per process, timings are not judged there)
    return run_memory_probes(
        settings.model,
        settings.memory_methods,
        settings.memory_steps,
        bench_threads,
        parallel=2 if settings.mode == "quick" else 1,
    )
