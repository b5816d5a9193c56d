"""Item 6: `snakemake -n` time for grids of 100 / 1,000 / 10,000 cells (growth should be near-linear), and on the
largest grid against bare Snakemake planning as many jobs from static rules."""

import statistics

from bench.tools.benchmarks import bare_snakefile, planning_grid, record, time_dry_run


def test_planning_growth(benchmark, settings, tmp_path):
    sizes = (1, *settings.planning_cells)
    runs = {}

    def plan_all():
        for n in sizes:
            work = tmp_path / f"w{n}"
            work.mkdir(exist_ok=True)
            runs[n] = time_dry_run(work, grid=planning_grid(n, tmp_path / f"grid{n}.yaml"))
        return runs

    benchmark.pedantic(plan_all, rounds=1, iterations=1)
    seconds = {str(n): r["seconds"] for n, r in runs.items()}
    # marginal cost per added cell over each decade (1->100, 100->1,000, 1,000->10,000); linear = constant
    marginal = {f"{a:,}→{b:,}": (runs[b]["seconds"] - runs[a]["seconds"]) / (b - a) for a, b in zip(sizes, sizes[1:])}
    steps = list(marginal.values())
    growth = steps[-1] / max(steps[-2], 1e-6)  # the last decade's per-cell cost over the previous decade's
    largest = max(sizes)
    note = (
        f"Fixed cost (Python, snakemake, bench imports, a 1-cell DAG): {runs[1]['seconds']:.1f} s. Over the last "
        f"decade each added cell costs {1000 * steps[-1]:.1f} ms (grid expansion and validation, an input "
        f"function and resource lookup per job, the DAG, the dry-run listing); a grid of {largest:,} cells "
        f"plans in {runs[largest]['seconds']:.0f} s."
    )
    record(
        benchmark,
        "planning_growth",
        ratio=growth,
        marginal_ms_per_cell={k: 1000 * v for k, v in marginal.items()},
        seconds=seconds,
        cell_jobs={str(n): r["cell_jobs"] for n, r in runs.items()},
        note=note,
    )
    for n, r in runs.items():
        assert r["cell_jobs"] == n, f"grid of {n} cells planned {r['cell_jobs']} cell jobs"


def test_planning_overhead(benchmark, settings, tmp_path):
    cells = max(settings.planning_cells)
    grid = planning_grid(cells, tmp_path / "grid.yaml")
    plans = {"bare": dict(snakefile=bare_snakefile(grid, tmp_path / "Snakefile.bare")), "ours": dict(grid=grid)}
    runs = {name: [] for name in plans}

    def plan_round(round_index):
        for name in sorted(plans, reverse=round_index % 2 == 1):  # alternate which plans first
            work = tmp_path / f"{name}{round_index}"
            work.mkdir()
            runs[name].append(time_dry_run(work, **plans[name]))

    rounds = 3
    indices = iter(range(rounds))
    benchmark.pedantic(lambda: plan_round(next(indices)), rounds=rounds, iterations=1)
    (tmp_path / "dag").mkdir()
    dag_only = time_dry_run(tmp_path / "dag", grid=grid, quiet=True)["seconds"]
    ratio = statistics.median(o["seconds"] / b["seconds"] for o, b in zip(runs["ours"], runs["bare"]))
    seconds = {name: statistics.median(r["seconds"] for r in rs) for name, rs in runs.items()}
    note = (
        f"Medians of {rounds} interleaved rounds on {cells:,} cells: ours {seconds['ours']:.1f} s, bare Snakemake "
        f"{seconds['bare']:.1f} s; ours with `-n -q` (the DAG is built, nothing is listed) {dag_only:.1f} s. "
        f"The rest of a `-n` run is Snakemake's dry-run scheduling and its listing of every job."
    )
    record(
        benchmark,
        "planning_overhead",
        ratio=ratio,
        cells=cells,
        seconds=seconds,
        dag_only_seconds=dag_only,
        rounds={name: [r["seconds"] for r in rs] for name, rs in runs.items()},
        note=note,
    )
    for name, rs in runs.items():
        assert all(r["cell_jobs"] == cells for r in rs), f"{name} planned {[r['cell_jobs'] for r in rs]} cell jobs"
