"""Item 6: `snakemake -n` time for grids of 100 / 1,000 / 10,000 cells (growth should be near-linear)."""
from bench.benchmarks import planning_grid, record, time_dry_run


def test_planning_growth(benchmark, settings, tmp_path):
    sizes = (1, *settings.planning_cells)
    runs = {}

    def plan_all():
        for n in sizes:
            work = tmp_path / f"w{n}"
            work.mkdir(exist_ok=True)
            runs[n] = time_dry_run(planning_grid(n, tmp_path / f"grid{n}.yaml"), work)
        return runs

    benchmark.pedantic(plan_all, rounds=1, iterations=1)
    seconds = {str(n): r["seconds"] for n, r in runs.items()}
    # marginal cost per added cell over each decade (1->100, 100->1,000, 1,000->10,000); linear = constant
    marginal = {f"{a:,}→{b:,}": (runs[b]["seconds"] - runs[a]["seconds"]) / (b - a) for a, b in zip(sizes, sizes[1:])}
    steps = list(marginal.values())
    growth = steps[-1] / max(steps[-2], 1e-6)  # the last decade's per-cell cost over the previous decade's
    largest = max(sizes)
    note = (f"Fixed cost (Python, snakemake, bench imports, a 1-cell DAG): {runs[1]['seconds']:.1f} s. Over the last "
            f"decade each added cell costs {1000 * steps[-1]:.1f} ms (grid expansion and validation, an input "
            f"function and resource lookup per job, the DAG, the dry-run listing); a grid of {largest:,} cells "
            f"plans in {runs[largest]['seconds']:.0f} s.")
    record(benchmark, "planning_growth", ratio=growth, marginal_ms_per_cell={k: 1000 * v for k, v in marginal.items()},
           seconds=seconds, cell_jobs={str(n): r["cell_jobs"] for n, r in runs.items()}, note=note)
    for n, r in runs.items():
        assert r["cell_jobs"] == n, f"grid of {n} cells planned {r['cell_jobs']} cell jobs"
