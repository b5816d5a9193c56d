"""Grids as data: config/grids/<name>.yaml -> the list of cells the Snakefile wires.

Imported by the Snakefile while planning, so it reads YAML and nothing heavier.
A cell's hyperparameter overrides are layered grid `hp` < task `hp` < method entry; the method's own
file supplies the defaults underneath (see bench.harness.method.resolve_hparams).
"""

from __future__ import annotations

import functools
import itertools
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from bench.api.errors import BenchError
from bench.grid.derive import derive_grid
from bench.harness.identity import CELL_REFS

GRIDS_DIR = Path(__file__).resolve().parents[2] / "config" / "grids"
SCHEMA = GRIDS_DIR.parent / "grid.schema.yaml"
RESOURCES = GRIDS_DIR.parent / "resources.yaml"


@dataclass(frozen=True)
class Cell:
    grid: str
    task: str
    model: str
    method: str  # the file methods/<method>.py
    train_size: int | str
    seed: int
    hp: dict
    eval_limit: int | None
    shifts: tuple[str, ...] | None
    variant: str = ""  # the label in the grid (and the cell's folder); defaults to the method
    needs: tuple[str, ...] = ()  # dirs of cells of the grid this one reads (e.g. distill's teacher): run first
    dev_limit: int | None = None  # training examples held out as eval set `dev` (lr selection); None = no dev
    data_seed: int | None = None  # the training subsample's seed when it differs from the init seed (`data_seeds`)

    @property
    def label(self) -> str:
        return self.variant or self.method

    @property
    def replicate(self) -> str:
        """The seed part of the cell's folder: `3`, or `3-d1` (init seed 3 on data subsample 1)."""
        return f"{self.seed}" if self.data_seed is None else f"{self.seed}-d{self.data_seed}"

    @property
    def dir(self) -> str:
        return f"results/{self.grid}/{self.task}/{self.model}/{self.label}/n{self.train_size}/s{self.replicate}"

    def cli_args(self) -> str:
        """The `python -m bench run-cell` arguments (all but --out) that reproduce this cell."""
        args = [
            "--grid",
            self.grid,
            "--task",
            self.task,
            "--model",
            self.model,
            "--method",
            self.method,
            "--train-size",
            str(self.train_size),
            "--seed",
            str(self.seed),
        ]
        for key, value in sorted(self.hp.items()):
            args += ["--hp", f"{key}={value}"]
        if self.eval_limit is not None:
            args += ["--eval-limit", str(self.eval_limit)]
        if self.shifts is not None:
            args += ["--shifts", ",".join(self.shifts)]
        if self.dev_limit is not None:
            args += ["--dev-limit", str(self.dev_limit)]
        if self.data_seed is not None:
            args += ["--data-seed", str(self.data_seed)]
        return shlex.join(args)


def grid_names() -> list[str]:
    return sorted(p.stem for p in GRIDS_DIR.glob("*.yaml"))


def load_grid_file(name_or_path: str) -> tuple[str, dict]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = GRIDS_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        raise BenchError(
            f"grid '{name_or_path}' not found: choose one of {', '.join(grid_names())} "
            f"(config/grids/) or pass a path to a .yaml file"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise BenchError(f"grid file {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise BenchError(f"grid file {path} must be a YAML mapping (see config/grid.schema.yaml)")
    return path.stem, data


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    return yaml.safe_load(SCHEMA.read_text())


def validate_schema(name: str, data, definition: str | None = None, where: str = "") -> None:
    """Structure and types, against config/grid.schema.yaml: the first problem, as one line."""
    import jsonschema

    schema = _schema() if definition is None else {**_schema(), "$ref": f"#/$defs/{definition}"}
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(data))
    if error is not None:
        where = ".".join([where] * bool(where) + [str(p) for p in error.absolute_path]) or "top level"
        allowed = ""
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = f" (allowed: {', '.join(error.schema.get('properties', {}))})"
        raise BenchError(f"grid {name}: {where}: {error.message}{allowed} (see config/grid.schema.yaml)")


def blocks(name: str, data: dict, derived_from: tuple[str, ...] = ()) -> list[dict]:
    """The grid's blocks, each completed from the top-level keys and schema-checked; a grid that says `derive:`
    has those of its source grid, cut (bench/grid/derive.py)."""
    validate_schema(name, data)
    if "derive" in data:
        source_name, source = load_grid_file(data["derive"]["from"])
        if source_name in (name, *derived_from):
            raise BenchError(
                f"grid {name}: derive.from {data['derive']['from']} derives from itself: name a grid "
                "that lists its blocks"
            )
        return blocks(name, derive_grid(data["derive"], blocks(source_name, source, (name, *derived_from))))
    shared = {k: v for k, v in data.items() if k not in ("blocks", "description", "derive")}
    listed = data.get("blocks") or [{}]
    merged = [{**shared, **block} for block in listed]
    for i, block in enumerate(merged):
        validate_schema(name, block, "block", f"blocks.{i}" if "blocks" in data else "")
    return merged


def method_variants(label: str, entry: dict | None) -> list[tuple[str, str, dict]]:
    """(variant label, method file, hp) for a grid's method entry; list values sweep."""
    entry = dict(entry or {})
    method = entry.pop("method", label)
    swept = sorted(k for k, v in entry.items() if isinstance(v, list))
    variants = []
    for values in itertools.product(*(entry[k] for k in swept)):
        hp = {**entry, **dict(zip(swept, values))}
        suffix = "".join(f"-{k}={v}" for k, v in zip(swept, values))
        variants.append((label + suffix, method, hp))
    return variants


# CELL_REFS (bench/harness/identity.py): hp that name other cells of the grid: a method entry's `<ref>_method` (that
# cell's
# method label; for `patterns`, several labels separated by commas) and optional `<ref>_model` (default: this cell's
# model) become hp `<ref>` = those cells' dirs (comma-separated), for the same task, train size and seed (distill's
# teacher, PET's pattern models); the cell then `needs` them.


def _cell_refs(name: str, task: str, model: str, size, seed: int, hp: dict) -> tuple[dict, tuple[str, ...]]:
    hp, needs = dict(hp), []
    for ref in CELL_REFS:
        if f"{ref}_model" in hp or f"{ref}_method" in hp:
            other = hp.pop(f"{ref}_model", model)
            if f"{ref}_method" not in hp:
                raise BenchError(
                    f"grid {name}: a method entry has {ref}_model but no {ref}_method: add "
                    f"{ref}_method (the {ref} cell's method label in this grid)"
                )
            dirs = [
                Cell(name, task, str(other), label.strip(), size, seed, {}, None, None).dir
                for label in str(hp.pop(f"{ref}_method")).split(",")
            ]
            hp[ref] = ",".join(dirs)
            needs += dirs
    return hp, tuple(needs)


def grid_cells(name_or_path: str, within: tuple[str, ...] = ()) -> list[Cell]:
    """Expand a schema-valid grid: per block, tasks x models x methods (x sweeps) x train sizes x seeds (x data
    seeds, where the block names `data_seeds`). A grid of `parts` is the union of its parts' cells, each in its
    own part's folder (results/<part>/...): parts run one at a time, the whole reports once."""
    name, data = load_grid_file(name_or_path)
    if "parts" in data:
        validate_schema(name, data)
        if name in within:
            raise BenchError(
                f"grid {name}: its parts include itself (through {' -> '.join(within)}): list grids of "
                "blocks in `parts`"
            )
        return [cell for part in data["parts"] for cell in grid_cells(part, (*within, name))]
    cells = {}
    for block in blocks(name, data):
        for task, settings in block["tasks"].items():
            settings = settings or {}
            shifts = settings.get("shifts")
            variants = [v for label, entry in block["methods"].items() for v in method_variants(label, entry)]
            for model, (label, method, method_hp), size, seed, data_seed in itertools.product(
                block["models"],
                variants,
                block["train_sizes"],
                block.get("seeds", [0]),
                block.get("data_seeds", [None]),
            ):
                hp, needs = _cell_refs(
                    name,
                    task,
                    model,
                    size,
                    seed,
                    {**(block.get("hp") or {}), **(settings.get("hp") or {}), **method_hp},
                )
                cell = Cell(
                    name,
                    task,
                    model,
                    method,
                    size,
                    seed,
                    hp,
                    settings.get("eval_limit"),
                    tuple(shifts) if shifts is not None else None,
                    "" if label == method else label,
                    needs,
                    settings.get("dev_limit"),
                    data_seed,
                )
                if cells.setdefault(cell.dir, cell) != cell:  # two blocks, one folder, different settings
                    raise BenchError(
                        f"grid {name}: two blocks make cell {cell.dir} with different settings "
                        f"({cells[cell.dir].cli_args()} vs {cell.cli_args()}): give one of the method "
                        "entries another label"
                    )
    return list(cells.values())


def planned_identity(cell: Cell, cells: dict[str, Cell], data_root: str | None = None) -> dict:
    """The identity (`{"sha256", "spec"}`) a record of `cell` made from today's files would carry; `cells`: the
    grid's cells by dir (the cells this one reads are planned too). The converted model's fingerprint is today's
    where the model is converted here, else the one its record names (conversion is pinned by the registry entry's
    sha256, which the spec holds), else unknown."""
    from bench.harness.cell import CellConfig
    from bench.harness.identity import identity, resolved_spec

    weights = current_model_fingerprint(cell.model) or recorded_weights(read_record(cell.dir))
    key = (cell.dir, cell.cli_args(), data_root, weights)
    if key not in _PLANNED:
        needs = {d: planned_identity(cells[d], cells, data_root)["sha256"] if d in cells else None for d in cell.needs}
        config = CellConfig(
            cell.task,
            cell.model,
            cell.method,
            cell.train_size,
            cell.seed,
            cell.hp,
            cell.eval_limit,
            cell.shifts,
            cell.grid,
            data_root,
            cell.dev_limit,
            cell.data_seed,
        )
        _PLANNED[key] = identity(resolved_spec(config, weights, needs))
    return _PLANNED[key]


_PLANNED: dict[tuple, dict] = {}  # a plan asks for each cell once per job, and a teacher's once per student


def read_record(cell_dir: str) -> dict:
    """A cell's record; {} where it has none (or an unreadable one). Read again when its file changed."""
    path = Path(cell_dir) / "record.json"
    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
        if key not in _RECORDS:
            _RECORDS[key] = json.loads(path.read_text())
        return _RECORDS[key]
    except (OSError, ValueError):
        return {}


_RECORDS: dict[tuple, dict] = {}


def recorded_weights(record: dict) -> str | None:
    return (record.get("identity") or {}).get("spec", {}).get("model", {}).get("weights") or record.get(
        "inputs", {}
    ).get("model", {}).get("sha256")


def up_to_date(record: dict, planned: dict) -> bool:
    """Whether a record is what its cell asks for today: its identity hash is the planned one."""
    return (record.get("identity") or {}).get("sha256") == planned["sha256"]


def stale_fields(record: dict, planned: dict) -> list[str]:
    """What differs between a record's resolved spec and its cell's planned one ([] when up to date)."""
    return (
        [] if up_to_date(record, planned) else differences((record.get("identity") or {}).get("spec"), planned["spec"])
    )


SHORT = 40  # a differing value up to this long (as JSON) is shown `old → new`; longer ones by their field's name


def differences(old: dict | None, new: dict) -> list[str]:
    """What differs between two resolved specs, field by field: `hp.steps 20 → 30` for short values, the field's
    name alone for long ones (`task.sst2.template`, `harness`); for a record without a spec, one line saying so."""
    if not old:
        return ["no resolved spec (made before cell identity)"]
    before, after = _flat(old), _flat(new)
    out = []
    for key in sorted(set(before) | set(after), key=lambda k: (k != "harness", k)):
        a, b = before.get(key, _MISSING), after.get(key, _MISSING)
        if a == b:
            continue
        a, b = ("(none)" if v is _MISSING else json.dumps(v, ensure_ascii=False, default=str) for v in (a, b))
        out.append(key if len(a) > SHORT or len(b) > SHORT else f"{key} {a} → {b}")
    return out


_MISSING = object()


def _flat(value, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict) and value:
        return {
            k: v
            for key, item in value.items()
            for k, v in _flat(item, f"{prefix}.{key}" if prefix else str(key)).items()
        }
    return {prefix: value}


@functools.cache
def current_method_sha256(method: str) -> str:
    """As a record's `inputs.method_sha256`, of today's files."""
    from bench.harness.cell import files_sha256
    from bench.harness.method import method_files

    return files_sha256(method_files(method))


def current_model_fingerprint(model: str) -> str | None:
    """As a record's `inputs.model.sha256`, of the model converted now (None while it is not)."""
    from bench.harness.models import cache_dir

    manifest = cache_dir() / model / "manifest.json"
    try:
        return _manifest_fingerprint(manifest, manifest.stat().st_mtime_ns)
    except FileNotFoundError:
        return None


@functools.cache
def _manifest_fingerprint(manifest: Path, mtime_ns: int) -> str:  # mtime_ns: a re-conversion is read again
    from bench.harness.models import model_fingerprint

    return model_fingerprint(json.loads(manifest.read_text()))


def check_cells(cells: list[Cell], data_root: str | None = None) -> None:
    """Check every distinct cell setting against the registries (names, sizes, shifts, hp types)."""
    from bench.harness.cell import CellConfig, plan_cell

    dirs = {cell.dir for cell in cells}
    for cell in cells:
        for need in cell.needs:
            ref = next((k for k, v in cell.hp.items() if need in str(v).split(",")), "needed")
            if need == cell.dir or need not in dirs:
                problem = "is the cell itself" if need == cell.dir else "is not in the grid"
                raise BenchError(
                    f"grid {cell.grid}: cell {cell.task}/{cell.model}/{cell.label}/n{cell.train_size}: "
                    f"{ref} cell {need} {problem}: add its model and method label to the grid (same "
                    f"task, train sizes and seeds) or fix {ref}_model/{ref}_method"
                )
    seen = set()
    for cell in cells:
        need, one_gpu = cell_resources(cell)["gpu_mem_mb"], _resource_rules()["gpu_mem"]["share"]["gpu_mb"]
        if one_gpu and need > one_gpu:  # the harness trains on one device
            raise BenchError(
                f"grid {cell.grid}: cell {cell.task}/{cell.model}/{cell.label}: {cell.method} on "
                f"{cell.model} needs ~{need // 1024} GiB of GPU memory (bench/grid/gpu_memory.py), more "
                f"than one GPU's {one_gpu // 1024} GiB (config/resources.yaml), and the harness trains "
                "on one device: use a parameter-efficient method, a smaller batch_size or max_len, or a "
                "smaller model"
            )
        key = (
            cell.task,
            cell.model,
            cell.method,
            cell.train_size,
            tuple(sorted(cell.hp.items())),
            cell.shifts,
            cell.dev_limit,
            cell.data_seed is None,
        )
        if key in seen:
            continue
        seen.add(key)
        try:
            plan_cell(
                CellConfig(
                    cell.task,
                    cell.model,
                    cell.method,
                    cell.train_size,
                    cell.seed,
                    cell.hp,
                    cell.eval_limit,
                    cell.shifts,
                    cell.grid,
                    data_root,
                    cell.dev_limit,
                    cell.data_seed,
                )
            )
        except BenchError as error:
            raise BenchError(
                f"grid {cell.grid}: cell {cell.task}/{cell.model}/{cell.label}/n{cell.train_size}: {error}"
            ) from None


def cell_user_inputs(cell: Cell, data_root: str | None = None) -> list[str]:
    """The user's tasks file and data files the cell reads (bench.harness.tasks.user_inputs): Snakemake inputs of the
    cell."""
    from bench.harness.tasks import get_task, user_inputs

    task = get_task(cell.task)
    return user_inputs(task, [task.name, *(task.shifts if cell.shifts is None else cell.shifts)], data_root)


@functools.lru_cache(maxsize=1)
def _resource_rules() -> dict:
    return yaml.safe_load(RESOURCES.read_text())


def cell_resources(cell: Cell) -> dict:
    """Cluster resources of a cell from config/resources.yaml, its model's size, its method and hyperparameters:
    `mem_mb`, `runtime` (which also orders the jobs: Snakefile priority, the longest first), `gpu_mem_mb` (the
    analytic estimate of bench/grid/gpu_memory.py), and on SLURM either `gres` (shards of a GPU that other cells
    share) or `gpu` (1: a GPU of its own)."""
    if cell.dir not in _BY_CELL:  # Snakemake asks once per job and resource: 10,000-cell grids plan in seconds
        _BY_CELL[cell.dir] = _resources(cell.model, cell.method, json.dumps(cell.hp, sort_keys=True, default=str))
    return _BY_CELL[cell.dir]


_BY_CELL: dict[str, dict] = {}


@functools.lru_cache(maxsize=None)
def _resources(model: str, method: str, hp_json: str) -> dict:
    from bench.grid.gpu_memory import cell_gpu_memory
    from bench.harness.method import get_method, resolve_hparams
    from bench.harness.models import get_model_spec

    rules = _resource_rules()
    params = get_model_spec(model).params or 0
    spec = get_method(method)
    hp = resolve_hparams(spec, json.loads(hp_json))
    per_param = rules["mem"]["bytes_per_param"]["tunes_base" if spec.tunes_base else "frozen_base"]
    runtime = rules["runtime_min"]["base"] + rules["runtime_min"]["per_billion_params"] * params / 1e9
    if spec.tunes_base:
        runtime *= rules["runtime_min"]["tunes_base_factor"]
    if hp["steps"] <= 0:
        runtime *= rules["runtime_min"]["eval_only_factor"]
    return {
        "mem_mb": int(rules["mem"]["overhead_mb"] + per_param * params / 2**20),
        "runtime": int(runtime),
        **cell_gpu_memory(model, method, hp, rules["gpu_mem"]),
    }


def cell_threads() -> int:
    """Torch threads per cell; SLURM's --cpus-per-task follows a job's threads."""
    return int(_resource_rules()["cpus_per_task"])
