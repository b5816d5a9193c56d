"""Item 5: FLOPs per training step and MFU against this machine's measured matmul peak (reported)."""

import statistics

from bench.harness.flops import flops_per_step, measure_matmul_peak
from bench.tools.benchmarks import bench_threads, device, record


def test_flops_utilisation(benchmark, settings, memory_probes, matmul_peak):
    size = matmul_peak["size"]
    # the benchmark itself: one peak measurement (kept in the JSON beside the session's value)
    benchmark.pedantic(
        lambda: measure_matmul_peak(bench_threads(), device(), size=size, repeats=3), rounds=1, iterations=1
    )
    peak = matmul_peak["flops"]
    rows = {}
    for method, probe in memory_probes.items():
        skip = 1 if len(probe["step_s"]) > 1 else 0  # steady state: the steps after the first
        steady = probe["step_s"][skip:]
        virtual = [probe["extra_positions"] * s for s in probe["sequences_per_step"][skip:]]
        tokens = probe["tokens_per_step"][skip:]
        positions = [t + v for t, v in zip(tokens, virtual)]
        padded = [n + v for n, v in zip(probe["padded_tokens_per_step"][skip:], virtual)]
        rows[method] = {
            "tokens": statistics.mean(tokens),
            "positions": statistics.mean(positions),
            "padded_tokens": statistics.mean(padded),
            "flops_per_step": probe["flops_per_step"],
            "step_s": statistics.mean(steady),
            "flops_per_s": probe["train_flops_per_s"],
            "mfu": probe["train_flops_per_s"] / peak,
        }
    record(
        benchmark,
        "flops",
        rows=rows,
        mfu={m: r["mfu"] for m, r in rows.items()},
        peak_flops=peak,
        peak_size=size,
        peak_dtype=matmul_peak["dtype"],
        model=settings.model,
        full_ft_params=memory_probes.get("full_ft", {}).get("total_params", 0),
    )
    # the formula, on the counts it documents
    assert flops_per_step(100, True, 10) == 6000
    assert flops_per_step(100, False, 10, extra_positions=2, sequences=5, trainable_params=1) == (400 + 2) * 20
    assert flops_per_step(100, True, 10, head_params=30, head_positions=2) == 6 * (70 * 10 + 30 * 2)  # head at targets
    assert all(0 < r["mfu"] < 1.5 for r in rows.values())
