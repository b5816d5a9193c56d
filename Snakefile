# Wiring only: cells come from config/grids/<grid>.yaml (default: smoke); all logic lives in bench/.
#   snakemake --cores all                       # the default grid
#   snakemake --cores all --config grid=NAME    # another grid (a name in config/grids/ or a .yaml path)
import sys

from bench.errors import BenchError
from bench.grid import cell_resources, check_cells, grid_cells
from bench.models import cache_dir

GRID = config.get("grid", "smoke")
try:  # a malformed grid stops here, before any job is planned, with one line naming the fix
    CELLS = {cell.dir: cell for cell in grid_cells(GRID)}
    check_cells(list(CELLS.values()), config.get("data_root"))
except BenchError as error:
    sys.exit(f"error: {error}")
GRID_NAME = next(iter(CELLS.values())).grid
PY = sys.executable
MODELS = cache_dir()  # converted checkpoints, shared by every grid ($PEFT_REPRO_MODELS overrides)
DATA_ROOT = f"--data-root {config['data_root']}" if "data_root" in config else ""


def cell_of(w):
    return CELLS[f"results/{w.grid}/{w.task}/{w.model}/{w.method}/n{w.size}/s{w.seed}"]


def resource(key):
    return lambda wildcards: cell_resources(cell_of(wildcards))[key]


wildcard_constraints:
    size=r"\d+|full",
    seed=r"\d+",


rule all:
    input:
        [f"{d}/record.json" for d in CELLS],
        f"reports/{GRID_NAME}/README.md",


rule prepare_model:
    output:
        f"{MODELS}/{{model}}/manifest.json",
    shell:
        "{PY} -m bench prepare-model {wildcards.model}"


rule cell:
    input:
        method=f"{workflow.basedir}/methods/{{method}}.py",
        model=f"{MODELS}/{{model}}/manifest.json",
    output:
        "results/{grid}/{task}/{model}/{method}/n{size}/s{seed}/record.json",
    log:
        "results/{grid}/logs/{task}/{model}/{method}/n{size}_s{seed}.log",
    params:
        args=lambda w: cell_of(w).cli_args(),
    threads: 1
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime"),
        cpus_per_task=resource("cpus_per_task"),
        gpu=resource("gpu"),
    shell:
        "OMP_NUM_THREADS={threads} {PY} -m bench run-cell {params.args} {DATA_ROOT} --threads {threads}"
        " --out $(dirname {output}) 2>&1 | tee {log}"


rule report:
    input:
        records=[f"{d}/record.json" for d in CELLS],
        code=f"{workflow.basedir}/bench/report.py",
    output:
        "reports/{grid}/README.md",
        "results/{grid}/summary.csv",
    shell:
        "{PY} -m bench report {wildcards.grid}"
