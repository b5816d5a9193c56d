"""Grids as data: config/grids/<name>.yaml -> the list of cells the Snakefile wires.

Imported by the Snakefile while planning, so it reads YAML and nothing heavier.
A cell's hyperparameter overrides are layered grid `hp` < task `hp` < method entry; the method's own
file supplies the defaults underneath (see bench.method.resolve_hparams).
"""
from __future__ import annotations

import functools
import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.errors import BenchError

GRIDS_DIR = Path(__file__).resolve().parent.parent / "config" / "grids"
SCHEMA = GRIDS_DIR.parent / "grid.schema.yaml"
RESOURCES = GRIDS_DIR.parent / "resources.yaml"


@dataclass(frozen=True)
class Cell:
    grid: str
    task: str
    model: str
    method: str
    train_size: int | str
    seed: int
    hp: dict
    eval_limit: int | None
    shifts: tuple[str, ...] | None

    @property
    def dir(self) -> str:
        return f"results/{self.grid}/{self.task}/{self.model}/{self.method}/n{self.train_size}/s{self.seed}"

    def cli_args(self) -> str:
        """The `python -m bench run-cell` arguments (all but --out) that reproduce this cell."""
        args = ["--grid", self.grid, "--task", self.task, "--model", self.model, "--method", self.method,
                "--train-size", str(self.train_size), "--seed", str(self.seed)]
        for key, value in sorted(self.hp.items()):
            args += ["--hp", f"{key}={value}"]
        if self.eval_limit is not None:
            args += ["--eval-limit", str(self.eval_limit)]
        if self.shifts is not None:
            args += ["--shifts", ",".join(self.shifts)]
        return shlex.join(args)


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))


def load_grid_file(name_or_path: str) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = GRIDS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise BenchError(f"grid '{name_or_path}' not found: choose one of {', '.join(grid_names())} "
                         f"(config/grids/) or pass a path to a .yaml file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise BenchError(f"grid file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BenchError(f"grid file {path} must be a YAML mapping (see config/grid.schema.yaml)")
    return path.stem, data


def validate_schema(name: str, data) -> None:
    """Structure and types, against config/grid.schema.yaml: the first problem, as one line."""
    import jsonschema

    schema = yaml.safe_load(SCHEMA.read_text())
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        where = ".".join(str(p) for p in error.absolute_path) or "top level"
        allowed = ""
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = f" (allowed: {', '.join(error.schema.get('properties', {}))})"
        raise BenchError(f"grid {name}: {where}: {error.message}{allowed} (see config/grid.schema.yaml)")


def grid_cells(name_or_path: str) -> list[Cell]:
    """Expand a schema-valid grid into cells: tasks x models x methods x train sizes x seeds."""
    name, data = load_grid_file(name_or_path)
    validate_schema(name, data)
    grid_hp = data.get("hp") or {}
    cells = []
    for task, settings in data["tasks"].items():
        settings = settings or {}
        shifts = settings.get("shifts")
        for model, method, size, seed in itertools.product(data["models"], data["methods"], data["train_sizes"],
                                                           data.get("seeds", [0])):
            hp = {**grid_hp, **(settings.get("hp") or {}), **(data["methods"][method] or {})}
            cells.append(Cell(name, task, model, method, size, seed, hp, settings.get("eval_limit"),
                              tuple(shifts) if shifts is not None else None))
    return cells


def check_cells(cells: list[Cell], data_root: str | None = None) -> None:
    """Check every distinct cell setting against the registries (names, sizes, shifts, hp types)."""
    from bench.cell import CellConfig, plan_cell

    seen = set()
    for cell in cells:
        key = (cell.task, cell.model, cell.method, cell.train_size, tuple(sorted(cell.hp.items())), cell.shifts)
        if key in seen:
            continue
        seen.add(key)
        try:
            plan_cell(CellConfig(cell.task, cell.model, cell.method, cell.train_size, cell.seed, cell.hp,
                                 cell.eval_limit, cell.shifts, cell.grid, data_root))
        except BenchError as error:
            raise BenchError(f"grid {cell.grid}: cell {cell.task}/{cell.model}/{cell.method}/n{cell.train_size}: "
                             f"{error}") from None


@functools.lru_cache(maxsize=1)
def _resource_rules() -> dict:
    return yaml.safe_load(RESOURCES.read_text())


def cell_resources(cell: Cell) -> dict:
    """Cluster resources of a cell from config/resources.yaml, its model's size and its method."""
    from bench.method import get_method
    from bench.models import get_model_spec

    rules = _resource_rules()
    params = get_model_spec(cell.model).params or 0
    tunes_base = get_method(cell.method).tunes_base
    per_param = rules["mem"]["bytes_per_param"]["tunes_base" if tunes_base else "frozen_base"]
    runtime = rules["runtime_min"]["base"] + rules["runtime_min"]["per_billion_params"] * params / 1e9
    if tunes_base:
        runtime *= rules["runtime_min"]["tunes_base_factor"]
    return {"mem_mb": int(rules["mem"]["overhead_mb"] + per_param * params / 2**20), "runtime": int(runtime),
            "cpus_per_task": rules["cpus_per_task"], "gpu": int(params >= float(rules["gpu"]["min_params"]))}
