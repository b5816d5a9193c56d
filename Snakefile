# Wiring only: cells come from config/grids/<grid>.yaml (default: smoke); all logic lives in bench/.
#   snakemake --cores all                       # the default grid
#   snakemake --cores all --config grid=NAME    # another grid (a name in config/grids/ or a .yaml path)
#   ... --config tasks=FILE                     # your tasks file, merged over config/tasks.yaml (docs/extend.md: Add a dataset)
#   ... --config forkserver=true                # many short cells on this machine: jobs fork an imported process
import gc
import inspect
import json
import os
import sys
import tempfile
from pathlib import Path

from snakemake.common import overwrite_function_params
from snakemake.resources import Resource

from bench.tools import launch
from bench.api.errors import BenchError
from bench.grid.plan import (cell_resources, cell_threads, check_cells, grid_cells, load_grid_file, planned_identity,
                        read_record, up_to_date as record_up_to_date)
from bench.harness.models import cache_dir
from bench.harness.tasks import use_tasks_file

gc.disable()  # planning allocates millions of long-lived objects that the cyclic collector only re-scans; on at onstart
GRID = config.get("grid", "smoke")
try:  # a malformed grid stops here, before any job is planned, with one line naming the fix
    use_tasks_file(config.get("tasks"))  # for the cells too: they inherit $PEFT_REPRO_TASKS
    CELLS = {cell.dir: cell for cell in grid_cells(GRID)}
    check_cells(list(CELLS.values()), config.get("data_root"))
except BenchError as error:
    sys.exit(f"error: {error}")
RECORDS = [f"{d}/record.json" for d in CELLS]
GRID_NAME = load_grid_file(GRID)[0]  # a grid of parts: its cells sit in their parts' folders, its report in its own
config["peft_repro_report_dir"] = f"reports/{GRID_NAME}"  # for the HTML report's opening page (its verdicts)
REPORT = f"{workflow.basedir}/config/report"  # `snakemake --report`: the opening page and every output's caption


report: f"{REPORT}/workflow.rst"
PY = sys.executable
MODELS = cache_dir()  # converted checkpoints, shared by every grid ($PEFT_REPRO_MODELS overrides)
DATA_ROOT = f"--data-root {config['data_root']}" if "data_root" in config else ""
FORK_SOCKET = None  # bench/tools/launch: the imports saved per job; for local runs (a SLURM job runs on its own)
FORK_SERVER = []  # its process, once onstart has started it
if config.get("forkserver") in (True, "true", "1"):
    PY = f"{PY} -m bench.tools.launch run"  # without the server (not yet started, or gone) the same command runs plainly
    FORK_SOCKET = os.environ[launch.SOCKET_ENV] = f"{tempfile.gettempdir()}/peft-repro-fork-{os.getpid()}.sock"


def signed(function):  # Snakemake reads an input function's signature at every job: read it once (10k-cell plans)
    overwrite_function_params(function, inspect.signature(function).parameters)
    return function


signed(Resource.evaluate)  # ... and that of Resource.evaluate for every resource of every job (a tenth of a plan)


def cell_of(w):
    return CELLS[f"results/{w.grid}/{w.task}/{w.model}/{w.variant}/n{w.size}/s{w.seed}"]


UP_TO_DATE = {}  # cell dir -> whether its record is what the cell asks for today (bench/harness/identity.py)


def up_to_date(cell):
    if cell.dir not in UP_TO_DATE:
        record = read_record(cell.dir)  # {} without a record: the cell runs
        UP_TO_DATE[cell.dir] = bool(record) and record_up_to_date(record, planned(cell))
    return UP_TO_DATE[cell.dir]


def planned(cell):
    return planned_identity(cell, CELLS, config.get("data_root"))


@signed
def cell_sources(w):
    """A cell reruns when its record is not what the cell asks for today: the record's identity (the hash of its
    resolved spec: method code and hp, task, data files, model, seeds, harness) differs from the planned one. Such a
    record gets an input written now, `.planned-<hash>.json` beside it (the planned spec; the cell removes it when
    it has run): newer than the record, it reruns the cell whatever the other files' times and without .snakemake
    metadata (a clone has none; a missing input would not do: Snakemake does not rebuild a missing intermediate
    file for an output that exists). Otherwise content, not file times, decides: the model is ancient (converting
    it for a new cell would otherwise rerun every cell), and so is a teacher record that is itself up to date."""
    cell = cell_of(w)
    teachers = [f"{d}/record.json" for d in cell.needs]
    if up_to_date(cell):
        return [ancient(t) if up_to_date(CELLS[d]) else t for d, t in zip(cell.needs, teachers)]
    return [ancient(f"{MODELS}/{cell.model}/manifest.json"), *teachers, *planned_stamp(cell)]


def planned_stamp(cell):
    if not read_record(cell.dir):  # no record: the cell runs anyway
        return []
    stamp = Path(cell.dir, f".planned-{planned(cell)['sha256'][:16]}.json")
    stamp.write_text(json.dumps(planned(cell)["spec"], indent=2) + "\n")  # written at each plan: its time is now
    return [str(stamp)]


def resource(key):
    return signed(lambda wildcards: cell_resources(cell_of(wildcards))[key])


onstart:
    gc.enable()
    if FORK_SOCKET and not FORK_SERVER and (server := launch.start(FORK_SOCKET)):
        FORK_SERVER.append(server)


onsuccess:
    for server in FORK_SERVER:
        server.terminate()
    verdicts = Path(f"reports/{GRID_NAME}/verdicts.md")  # the run ends on the verdicts, not on file paths
    if verdicts.is_file() and not workflow.dryrun:
        print("\n" + verdicts.read_text(), end="", file=sys.stderr)


onerror:
    for server in FORK_SERVER:
        server.terminate()


wildcard_constraints:
    size=r"\d+|full",
    seed=r"\d+(-d\d+)?",  # init seed, and `-d<data seed>` where the block has data_seeds


rule all:  # every record, not only the report: Snakemake rebuilds no missing record for a report that exists
    input:
        RECORDS,
        f"reports/{GRID_NAME}/README.md",


rule prepare_model:
    output:
        f"{MODELS}/{{model}}/manifest.json",
    shell:
        "{PY} -m bench prepare-model {wildcards.model}"


rule cell:
    input:
        cell_sources,
    output:
        "results/{grid}/{task}/{model}/{variant}/n{size}/s{seed}/record.json",
    log:
        "results/{grid}/logs/{task}/{model}/{variant}/n{size}_s{seed}.log",
    params:
        args=signed(lambda w: cell_of(w).cli_args()),
    priority: resource("runtime")  # the longest cells first, so that no core idles through the last one
    threads: cell_threads()  # one per cell (FEASIBILITY: two 1-thread cells beat one 2-thread cell)
    resources:
        mem_mb=resource("mem_mb"),
        runtime=resource("runtime"),
        gpu=resource("gpu"),
        gpu_mem_mb=resource("gpu_mem_mb"),  # --resources gpu_mem_mb=<MiB> runs as many cells on one GPU as fit
        gres=resource("gres"),  # SLURM: shards of a GPU that small cells share (config/resources.yaml gpu_mem.share)
    shell:
        "OMP_NUM_THREADS={threads} {PY} -m bench run-cell {params.args} {DATA_ROOT} --threads {threads}"
        " --out $(dirname {output}) 2>&1 | tee {log}; rm -f $(dirname {output})/.planned-*.json"


rule report:  # records only, never trains; `snakemake --report reports/<grid>/report.html` packs the outputs
    input:
        records=RECORDS,
        harness=expand(f"{workflow.basedir}/bench/{{name}}.py",  # every bench/**/*.py: they decide what is stale
                       name=glob_wildcards(f"{workflow.basedir}/bench/{{name}}.py").name),
        claims=f"{workflow.basedir}/config/claims.yaml",
    output:
        readme=f"reports/{GRID_NAME}/README.md",
        tables=report(f"reports/{GRID_NAME}/README.html", caption=f"{REPORT}/tables.rst", category="Tables",
                      labels={"file": "README.html (all tables)"}),
        tex=report(f"reports/{GRID_NAME}/tables.tex", caption=f"{REPORT}/tex.rst", category="Tables",
                   labels={"file": "tables.tex (LaTeX)"}),
        verdicts=report(f"reports/{GRID_NAME}/verdicts.html", caption=f"{REPORT}/verdicts.rst", category="Claims",
                        labels={"file": "verdicts.html (claim | Δ | verdict)"}),
        verdicts_md=f"reports/{GRID_NAME}/verdicts.md",
        claims=report(f"reports/{GRID_NAME}/claims.html", caption=f"{REPORT}/claims.rst", category="Claims",
                      labels={"file": "claims.html (every claim in full)"}),
        claims_md=f"reports/{GRID_NAME}/claims.md",
        headline=report(f"reports/{GRID_NAME}/headline.md", caption=f"{REPORT}/headline.rst", category="Claims",
                        labels={"file": "headline.md (claim | paper | ours | verdict)"}),
        summary=report(f"results/{GRID_NAME}/summary.csv", caption=f"{REPORT}/summary.rst", category="Tables",
                       labels={"file": "summary.csv (mean, std, seeds)"}),
        cells=report(f"results/{GRID_NAME}/cells.csv", caption=f"{REPORT}/cells.rst", category="Tables",
                     labels={"file": "cells.csv (status)"}),
        plots=report(directory(f"reports/{GRID_NAME}/plots"), patterns=["{kind}-{task}.png"],
                     caption=f"{REPORT}/plot.rst", category="Plots", subcategory="{kind}",
                     labels={"figure": "{task}", "kind": "{kind}"}),
    shell:
        "{PY} -m bench report {GRID:q}"
