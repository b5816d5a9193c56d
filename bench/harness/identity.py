"""A cell's identity: its fully resolved content, hashed. A record is up to date when its `identity.sha256` equals
the hash of the cell as planned from today's files; the report lists what differs, field by field.

The resolved spec (JSON, stored in each record as `identity.spec`):
- `method`: the method file's name and the fingerprint of its code (`method.code`: methods/<name>.py and the
  methods/ modules it imports, as normalised ASTs); `hp`: every hyperparameter after defaults (precision included);
- `task.<name>`: the task as resolved with the cell's template (kind, template, verbalizer, fields, metrics, splits,
  max_new_tokens); `datasets.<id>`: the tasks-file entry of each dataset the cell reads (config/tasks.yaml or the
  user's tasks file: loader, fields, labels, ...); `eval.<set>`: the dataset, scorer and example limit of each eval
  set; `data.<file>`: each data file's sha256 (as SHA256SUMS lists it; a file of a user's data root as `user:<path>`);
- `model`: the registry entry (config/models.yaml, less its description), its architecture entry and `model.weights`,
  the converted weights' fingerprint; `train_size`, `seed`, `data_seed`, `dev_limit`; `needs.<dir>`: the identity of
  each record the cell reads (distill's teacher, PET's pattern models);
- `harness`: the fingerprint of the code that makes records (`harness_fingerprint`).

The harness is the packages bench/api and bench/harness (every module in them), bench/__init__.py and
methods/__init__.py: the code `run_cell` loads. The layer test (tests/test_layers.py) keeps the harness from
importing grid, report, tools or cli, so no module outside the packages can change what a cell computes. Its
fingerprint hashes each module's normalised AST: docstrings removed, comments and formatting absent by
construction, fields that are empty or None left out (so that a Python release adding an empty field to a node
changes nothing). Grid planning, the report, plots, serving, the launcher and re-stamping are outside it by their
package.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
HARNESS_PACKAGES = ("bench/api", "bench/harness")  # every module in them is the harness; nothing else in bench/ is
HARNESS_EXTRA = (PROJECT_ROOT / "methods" / "__init__.py",)  # `methods` is imported by name (importlib)
CELL_REFS = ("teacher", "patterns")  # hp naming other cells' dirs, whose records the cell reads (bench/grid/plan.py)


# ------------------------------------------------------------------ normalised code
def _strip_docstrings(tree: ast.AST) -> ast.AST:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if (
                body
                and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)
            ):
                node.body = body[1:]
    return tree


def _canonical(node) -> object:
    """A node as nested lists: its type and its non-empty fields by name; no positions (ast.dump's layout varies
    between Python releases, e.g. `type_params=[]` from 3.12)."""
    if isinstance(node, ast.AST):
        fields = [
            [name, _canonical(value)] for name, value in ast.iter_fields(node) if value is not None and value != []
        ]
        return [type(node).__name__, fields]
    if isinstance(node, list):
        return [_canonical(item) for item in node]
    if isinstance(node, (bytes, complex)) or node is Ellipsis:
        return repr(node)
    return node


@functools.lru_cache(maxsize=None)
def _code_fingerprint(path: Path, mtime_ns: int, size: int) -> str:  # mtime, size: an edited file is read again
    tree = _strip_docstrings(ast.parse(path.read_text(), filename=str(path)))
    return hashlib.sha256(json.dumps(_canonical(tree), separators=(",", ":")).encode()).hexdigest()


def code_fingerprint(path: Path) -> str:
    """sha256 of a Python file's normalised AST: a docstring, comment or formatting edit leaves it unchanged."""
    stat = path.stat()
    return _code_fingerprint(path, stat.st_mtime_ns, stat.st_size)


def files_fingerprint(paths) -> str:
    """One fingerprint of several files' code, each named by its path relative to the project."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{Path(path).resolve().relative_to(PROJECT_ROOT)}\0{code_fingerprint(Path(path))}\n".encode())
    return digest.hexdigest()


def harness_files() -> list[Path]:
    """The files of the harness: every module of HARNESS_PACKAGES (the layer test, tests/test_layers.py, keeps
    them from importing anything outside), bench/__init__.py and HARNESS_EXTRA."""
    files = {PROJECT_ROOT / "bench" / "__init__.py", *(p for p in HARNESS_EXTRA if p.is_file())}
    for package in HARNESS_PACKAGES:
        files |= set((PROJECT_ROOT / package).rglob("*.py"))
    return sorted(files)


@functools.lru_cache(maxsize=1)
def harness_fingerprint() -> str:
    """The harness's fingerprint (a record's `env.harness_sha256` and its spec's `harness`): its files' code, read
    once per process (a cell stamps the code it started with)."""
    return files_fingerprint(harness_files())


# ------------------------------------------------------------------ the resolved spec
@functools.lru_cache(maxsize=None)
def _method_part(method: str, overrides_json: str) -> tuple[str, str]:
    from bench.harness.method import get_method, method_files, resolve_hparams

    hp = resolve_hparams(get_method(method), json.loads(overrides_json))
    return json.dumps({"name": method, "code": files_fingerprint(method_files(method))}), json.dumps(hp, default=str)


@functools.lru_cache(maxsize=None)
def _model_part(model: str) -> str:
    from dataclasses import asdict

    from bench.api.errors import BenchError
    from bench.harness.models import _models_yaml, get_model_spec

    try:
        entry = {k: v for k, v in asdict(get_model_spec(model)).items() if k != "description"}
    except BenchError:  # a record of a model no longer registered: planned as such, so listed as differing
        return json.dumps({"name": model, "registered": False})
    arch = (_models_yaml().get("architectures") or {}).get(entry.get("architecture")) if entry["architecture"] else None
    return json.dumps({**entry, "architecture_entry": arch}, default=str)


def _data_sha256s(dataset_ids, root) -> dict[str, str]:
    """sha256 of each file of the datasets, as SHA256SUMS lists it (read once per root; a file that no longer
    matches its line fails the cell's own check when it runs); a user's dataset's files are found in the user's
    data roots first, and keyed `user:<path>`."""
    from bench.harness.tasks import _checksums, _config, _dataset_spec, _file_root

    user = _config()["user"]
    out = {}
    for ds in dict.fromkeys(dataset_ids):
        spec = _dataset_spec(ds)
        if "hub" in spec:
            out[f"hub:{spec['hub']['id']}/{spec['hub']['split']}"] = "hub"
        for rel in spec.get("files") or ():
            found, own = _file_root(ds, rel, root) if user and ds in user["datasets"] else (root, False)
            out[f"user:{rel}" if own else rel] = _checksums(found).get(rel)
    return dict(sorted(out.items()))


@functools.lru_cache(maxsize=None)
def _task_part(
    task_name: str, template: str, shifts_json: str, eval_limit, retention_json: str, root: str, user_file: str | None
) -> str:  # user_file: another tasks file is another key
    from bench.harness.tasks import _dataset_spec, _datasets_read, eval_dataset, eval_scorer, get_task

    task = get_task(task_name).with_template(template)
    shifts = json.loads(shifts_json)
    eval_sets = [task.name, *(task.shifts if shifts is None else shifts)]
    read = _datasets_read(task, eval_sets) + json.loads(retention_json)
    resolved = {
        "kind": task.kind,
        "template": task.template,
        "verbalizer": list(task.verbalizer),
        "text_fields": list(task.text_fields),
        "metrics": list(task.metrics),
        "train": task.train_split,
        "unlabelled": task.unlabelled_split,
        "max_new_tokens": task.max_new_tokens,
    }
    return json.dumps(
        {
            "task": {task.name: resolved},
            "eval": {
                name: {"dataset": eval_dataset(task, name), "scorer": eval_scorer(task, name), "limit": eval_limit}
                for name in eval_sets
            },
            "datasets": {ds: _dataset_spec(ds) for ds in dict.fromkeys(read)},
            "data": _data_sha256s(read, Path(root)),
        },
        default=str,
    )


def resolved_spec(config, weights: str | None, needs: dict[str, str | None] | None = None) -> dict:
    """The resolved spec of a cell (a bench.harness.cell.CellConfig or a bench.grid.plan.Cell); `weights`: the converted
    model's fingerprint; `needs`: the identity sha256 of each record the cell reads, by its dir."""
    from bench.harness.retention import datasets as retention_datasets
    from bench.harness.tasks import data_root, user_tasks_file

    method, hp_json = _method_part(config.method, json.dumps(config.hp, sort_keys=True, default=str))
    hp = json.loads(hp_json)
    retention = retention_datasets(hp) if hp.get("retention") else []
    task = json.loads(
        _task_part(
            config.task,
            hp.get("template", ""),
            json.dumps(config.shifts and list(config.shifts)),
            config.eval_limit,
            json.dumps(retention),
            str(data_root(config.data_root)),
            user_tasks_file(),
        )
    )
    return {
        "method": json.loads(method),
        "hp": hp,
        **task,
        "model": {**json.loads(_model_part(config.model)), "weights": weights},
        "train_size": config.train_size,
        "seed": config.seed,
        "data_seed": config.data_seed,
        "dev_limit": config.dev_limit,
        "needs": dict(sorted((needs or {}).items())),
        "harness": harness_fingerprint(),
    }


def spec_hash(spec: dict) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def identity(spec: dict) -> dict:
    """A record's `identity` key."""
    return {"sha256": spec_hash(spec), "spec": spec}
