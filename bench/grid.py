"""Grids as data: config/grids/<name>.yaml -> the list of cells the Snakefile wires.

Imported by the Snakefile while planning, so it reads YAML and nothing heavier.
A cell's hyperparameter overrides are layered grid `hp` < task `hp` < method entry; the method's own
file supplies the defaults underneath (see bench.method.resolve_hparams).
"""
from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.errors import BenchError

GRIDS_DIR = Path(__file__).resolve().parent.parent / "config" / "grids"
GRID_KEYS = {"description", "models", "methods", "tasks", "train_sizes", "seeds", "hp"}
TASK_KEYS = {"shifts", "eval_limit", "hp"}


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
        raise BenchError(f"grid file {path} must be a mapping with keys {', '.join(sorted(GRID_KEYS))}")
    return path.stem, data


def _mapping(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BenchError(f"{where} must be a mapping (key: value), got {type(value).__name__}")
    return value


def grid_cells(name_or_path: str) -> list[Cell]:
    """Expand a grid into cells: tasks x models x methods x train sizes x seeds."""
    name, data = load_grid_file(name_or_path)
    unknown = set(data) - GRID_KEYS
    if unknown:
        raise BenchError(f"grid {name}: unknown key(s) {sorted(unknown)}: valid are {', '.join(sorted(GRID_KEYS))}")
    for key in ("models", "methods", "tasks", "train_sizes"):
        if not data.get(key):
            raise BenchError(f"grid {name}: '{key}' is missing or empty")
    grid_hp = _mapping(data.get("hp"), f"grid {name}: hp")
    tasks = _mapping(data["tasks"], f"grid {name}: tasks")
    methods = _mapping(data["methods"], f"grid {name}: methods")
    cells = []
    for task, settings in tasks.items():
        settings = _mapping(settings, f"grid {name}: tasks.{task}")
        extra = set(settings) - TASK_KEYS
        if extra:
            raise BenchError(f"grid {name}: tasks.{task} has unknown key(s) {sorted(extra)}: "
                             f"valid are {', '.join(sorted(TASK_KEYS))}")
        shifts = settings.get("shifts")
        task_hp = _mapping(settings.get("hp"), f"grid {name}: tasks.{task}.hp")
        for model, method, size, seed in itertools.product(data["models"], methods, data["train_sizes"],
                                                           data.get("seeds", [0])):
            hp = {**grid_hp, **task_hp, **_mapping(methods[method], f"grid {name}: methods.{method}")}
            cells.append(Cell(name, task, model, method, size, seed, hp, settings.get("eval_limit"),
                              tuple(shifts) if shifts is not None else None))
    return cells
