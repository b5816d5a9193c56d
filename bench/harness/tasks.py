"""Task registry: every dataset split and task is declared in config/tasks.yaml; this module reads it.

Kept free of torch/transformers: it is imported while planning large Snakemake grids.
Loaders turn data files into flat records (dicts); the generic code maps records to Examples
(field mapping, labels, references, grouping) as declared per dataset in the YAML.
A user's tasks file ($PEFT_REPRO_TASKS, `--tasks`) is merged over config/tasks.yaml: it may add datasets, tasks and
shifts, never change or extend what config/tasks.yaml declares, so a shared name means the same data for everyone.
"""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import io
import json
import os
import random
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from bench.api.errors import BenchError

PROJECT_ROOT: Path = Path(__file__).resolve().parents[2]
TASKS_YAML: Path = PROJECT_ROOT / "config" / "tasks.yaml"
EVAL_LIMIT_SEED = 1234
DEV_SEED = 4321  # the fixed permutation that holds a dev set out of a training split (never the cell seed)
_ROOT_FIX = "set PEFT_REPRO_DATA or pass --data-root to the folder holding shared/data"
TASKS_ENV = "PEFT_REPRO_TASKS"  # a user's tasks file, merged over config/tasks.yaml (`--tasks` sets it)
USER_KEYS = ("data_roots", "datasets", "tasks")
DATASET_KEYS = {
    "files",
    "loader",
    "fields",
    "label",
    "labels",
    "references",
    "group",
    "explode",
    "clean",
    "squash",
    "holdout",
    "scorer",
    "where",
    "hub",
}
TASK_KEYS = {
    "kind",
    "template",
    "verbalizer",
    "text_fields",
    "metrics",
    "train",
    "eval",
    "shifts",
    "max_new_tokens",
    "templates",
    "unlabelled",
    "offline",
}
DEFAULT_TEMPLATE = "default"  # the name of a task's own template + verbalizer among its `templates`
REQUIRED = {"datasets": ("files", "loader", "fields"), "tasks": ("kind", "template", "text_fields", "metrics", "eval")}


# --------------------------------------------------------------------------- data root
def data_root(explicit: str | Path | None = None) -> Path:
    """explicit argument > env PEFT_REPRO_DATA > ../shared/data beside the checkout (or beside cwd)."""
    if explicit is not None and str(explicit) != "":
        candidates = [Path(explicit)]
    elif os.environ.get("PEFT_REPRO_DATA"):
        candidates = [Path(os.environ["PEFT_REPRO_DATA"])]
    else:
        candidates = [PROJECT_ROOT.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]
    for cand in candidates:
        if (cand / "SHA256SUMS").is_file():
            return cand.resolve()
    raise BenchError(f"data root {candidates[0]} not found (no SHA256SUMS): {_ROOT_FIX}")


@functools.lru_cache(maxsize=None)
def _checksums(root: Path) -> dict[str, str]:
    sums = {}
    for line in (root / "SHA256SUMS").read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, rel = line.split(None, 1)
            rel = rel.strip().lstrip("*")
            sums[rel[2:] if rel.startswith("./") else rel] = digest.lower()
    return sums


_VERIFIED: set[tuple[Path, str]] = set()


def _verified_path(root: Path, rel: str, own: bool = False) -> Path:
    """Return root/rel after checking it against SHA256SUMS (once per process); `own`: a user's root (other fixes)."""
    path = root / rel
    if (root, rel) in _VERIFIED:
        return path
    if not path.is_file():
        raise BenchError(f"data file {rel} not found under data root {root}: {_ROOT_FIX}")
    expected = _checksums(root).get(rel)
    if expected is None:
        fix = (
            f"list it: (cd {root} && sha256sum {rel} >> SHA256SUMS)"
            if own
            else "restore SHA256SUMS from the original shared/data copy"
        )
        raise BenchError(f"data file {rel} is not listed in {root / 'SHA256SUMS'}: {fix}")
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    got = h.hexdigest()
    if got != expected:
        fix = (
            f"restore the file, or if you changed it on purpose replace its line in {root / 'SHA256SUMS'} "
            f"with the output of (cd {root} && sha256sum {rel})"
            if own
            else "restore it from the original shared/data copy"
        )
        raise BenchError(f"data file {rel} fails its sha256 check (expected {expected[:12]}…, got {got[:12]}…): {fix}")
    _VERIFIED.add((root, rel))
    return path


# --------------------------------------------------------------------------- loaders: path, options -> records
def _text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _load_csv(path: Path, delimiter: str = ",", quoting: int = csv.QUOTE_MINIMAL) -> list[dict]:
    with _text(path) as fh:
        return list(csv.DictReader(fh, delimiter=delimiter, quoting=quoting))


def _load_jsonl(path: Path) -> list[dict]:
    with _text(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _linearize(triples: list[tuple[str, str, str]]) -> str:
    return " ; ".join(" | ".join(part.replace("_", " ").strip() for part in t) for t in triples)


def _load_json(path: Path) -> list[dict]:
    with _text(path) as fh:
        return json.load(fh)


def _load_webnlg(path: Path) -> list[dict]:
    return [
        {"triples": _linearize([t.split(" | ") for t in r["triples"]]), "refs": r["lex"]} for r in _load_jsonl(path)
    ]


def _load_dart(path: Path) -> list[dict]:
    return [
        {"triples": _linearize(r["tripleset"]), "refs": [a["text"] for a in r["annotations"]]} for r in _load_json(path)
    ]


def _load_multirc(path: Path) -> list[dict]:
    return [
        {"passage": p["passage"]["text"], "question": q["question"], "answer": a["text"], "label": a["label"]}
        for p in _load_jsonl(path)
        for q in p["passage"]["questions"]
        for a in q["answers"]
    ]


LOADERS = {
    "csv": _load_csv,
    "tsv": lambda p: _load_csv(p, "\t"),  # quoted fields may hold newlines
    "tsv_raw": lambda p: _load_csv(p, "\t", csv.QUOTE_NONE),  # GLUE style: quotes are text
    "jsonl": _load_jsonl,
    "json": _load_json,
    "webnlg": _load_webnlg,
    "dart": _load_dart,
    "multirc": _load_multirc,
}


# --------------------------------------------------------------------------- Example / Task
@dataclass(frozen=True)
class Example:
    fields: dict[str, str] = field(hash=False)
    label: int | None = None
    references: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    name: str
    kind: str
    template: str
    verbalizer: tuple[str, ...]
    text_fields: tuple[str, ...]
    metrics: tuple[str, ...]
    train_split: str | None
    eval_split: str
    shifts: dict[str, str] = field(hash=False)
    max_new_tokens: int = 0
    templates: dict[str, dict] = field(default_factory=dict, hash=False)  # name -> {template, verbalizer, source}
    unlabelled_split: str | None = None  # where unlabelled pools are drawn from (default: the training split)

    def template_names(self) -> list[str]:
        return [DEFAULT_TEMPLATE, *self.templates]

    def with_template(self, name: str) -> Task:
        """The task with one of its alternative templates (and that template's verbalizer, else the task's): hp
        `template`; "" or "default" is the task's own."""
        if name in ("", DEFAULT_TEMPLATE):
            return self
        if name not in self.templates:
            raise BenchError(
                f"template {name!r} is not one of task {self.name}'s templates: choose one of "
                f"{', '.join(self.template_names())} (config/tasks.yaml: tasks.{self.name}.templates)"
            )
        alt = self.templates[name]
        return replace(self, template=alt["template"], verbalizer=tuple(alt.get("verbalizer") or self.verbalizer))

    def prompt(self, ex: Example) -> str:
        try:
            return self.template.format(**ex.fields)
        except KeyError as err:
            raise BenchError(
                f"task {self.name} template needs field {err} but the example has "
                f"{sorted(ex.fields)}: fix the template or fields in config/tasks.yaml"
            ) from None

    def target(self, ex: Example) -> str:
        if self.kind == "classification":
            return self.verbalizer[ex.label]
        if not ex.references:
            raise BenchError(
                f"task {self.name}: example has no reference text: "
                "give its dataset a `references` key in config/tasks.yaml"
            )
        return " " + ex.references[0]

    @property
    def eval_sets(self) -> list[str]:
        """In-domain eval set (the task name) followed by the shift names."""
        return [self.name, *self.shifts]


def _read_yaml(path: Path, fix: str) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise BenchError(f"cannot read {path}: {' '.join(str(err).split())}: {fix}") from None
    if not isinstance(data, dict):
        raise BenchError(f"{path} is not a YAML mapping: {fix}")
    return data


def _merge_user_file(cfg: dict, path: Path) -> dict:
    """Merge a user's tasks file into cfg; returns what the user file declares (its roots resolved)."""
    user = _read_yaml(path, f"fix it, or unset {TASKS_ENV} / drop --tasks")
    for key in user:
        if key not in USER_KEYS:
            raise BenchError(f"{path}: unknown key '{key}': use {', '.join(USER_KEYS)} (docs/extend.md: Add a dataset)")
    for section, allowed in (("datasets", DATASET_KEYS), ("tasks", TASK_KEYS)):
        entries = user[section] = user.get(section) or {}
        if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
            raise BenchError(f"{path}: {section} must map names to mappings (see config/tasks.yaml)")
        for name, entry in entries.items():
            unknown = sorted(set(entry) - allowed)
            missing = [k for k in REQUIRED[section] if k not in entry] if name not in cfg[section] else []
            if unknown or missing:
                problem = f"unknown key '{unknown[0]}'" if unknown else f"no '{missing[0]}'"
                raise BenchError(
                    f"{path}: {section}.{name}: {problem}: use {', '.join(sorted(allowed))} "
                    f"(a new one needs {', '.join(REQUIRED[section])}; see config/tasks.yaml)"
                )
    roots = user.get("data_roots") or []
    if not isinstance(roots, list):
        raise BenchError(f"{path}: data_roots must be a list of folders (relative to {path.parent})")
    user["data_roots"] = [(path.parent / str(r)).resolve() for r in roots]
    for root in user["data_roots"]:
        if not (root / "SHA256SUMS").is_file():
            raise BenchError(
                f"data root {root} (data_roots of {path}) has no SHA256SUMS: "
                f"create it: (cd {root} && sha256sum FILE... > SHA256SUMS)"
            )
    taken = "config/tasks.yaml declares it and a tasks file may only add: give yours a new name"
    for ds, entry in user["datasets"].items():
        if ds in cfg["datasets"]:
            raise BenchError(f"{path}: dataset {ds}: {taken}")
        cfg["datasets"][ds] = entry
    for name, entry in user["tasks"].items():
        if name not in cfg["tasks"]:
            cfg["tasks"][name] = entry
            continue
        if set(entry) != {"shifts"} or not isinstance(entry["shifts"], dict):
            raise BenchError(f"{path}: tasks.{name}: {taken} (to one of its tasks, only `shifts: {{name: dataset}}`)")
        shifts = cfg["tasks"][name]["shifts"] = dict(cfg["tasks"][name].get("shifts") or {})
        for shift, ds in entry["shifts"].items():
            if shift in shifts:
                raise BenchError(f"{path}: tasks.{name}.shifts.{shift}: {taken}")
            shifts[shift] = ds
    return user


@functools.lru_cache(maxsize=None)
def _merged(user_file: str | None) -> dict:
    cfg = _read_yaml(TASKS_YAML, "restore config/tasks.yaml")
    cfg["user"] = _merge_user_file(cfg, Path(user_file)) if user_file else None
    declared = "config/tasks.yaml" + (f" or {user_file}" if user_file else "")
    for name, t in cfg["tasks"].items():
        for ds in [t.get("train"), t.get("unlabelled"), t["eval"], *(t.get("shifts") or {}).values()]:
            if ds is not None and ds not in cfg["datasets"]:
                raise BenchError(f"task {name} uses undeclared dataset '{ds}': declare it under datasets in {declared}")
        clash = {name, "dev"} & set(t.get("shifts") or {})
        if clash:
            raise BenchError(
                f"task {name}: shift name '{clash.pop()}' is taken (the in-domain and dev eval sets): "
                f"rename the shift in {declared}"
            )
        if t["kind"] == "generation":
            from bench.harness.scorers import check_scorer

            for ds in [t["eval"], *(t.get("shifts") or {}).values()]:
                check_scorer(cfg["datasets"][ds].get("scorer"), t["metrics"], f"task {name}, dataset {ds}")
    return cfg


def user_tasks_file() -> str | None:
    """The user's tasks file ($PEFT_REPRO_TASKS, which `--tasks` sets), as an absolute path; None without one."""
    value = os.environ.get(TASKS_ENV)
    return os.path.abspath(value) if value else None  # not resolve(): Snakemake asks at every job of a plan


def use_tasks_file(path: str | Path | None) -> None:
    """Merge `path` over config/tasks.yaml in this process and in the cells it starts (via $PEFT_REPRO_TASKS)."""
    if path:
        if not Path(path).is_file():
            raise BenchError(
                f"tasks file {path} not found: pass the path of your tasks file (docs/extend.md: Add a dataset)"
            )
        os.environ[TASKS_ENV] = os.path.abspath(path)


def _config() -> dict:
    return _merged(user_tasks_file())


def task_names() -> list[str]:
    return list(_config()["tasks"])


def dataset_ids() -> list[str]:
    return list(_config()["datasets"])


def get_task(name: str) -> Task:
    return _task(name, user_tasks_file())


def task_offline_twin(name: str) -> str | None:
    """The task that stands in for `name` where the hub cannot be reached (its `offline` key: the same kind,
    template, metrics and shift names, on local files); None for a task without one."""
    tasks = _config()["tasks"]
    twin = (tasks.get(name) or {}).get("offline")
    if twin is None:
        return None
    task, other = get_task(name), get_task(twin)
    if (other.kind, other.template, other.metrics, set(other.shifts)) != (
        task.kind,
        task.template,
        task.metrics,
        set(task.shifts),
    ):
        raise BenchError(
            f"task {name}: its offline twin {twin} differs in kind, template, metrics or shift names: "
            "make them equal in config/tasks.yaml"
        )
    return twin


@functools.lru_cache(maxsize=None)
def _task(name: str, user_file: str | None) -> Task:
    tasks = _merged(user_file)["tasks"]
    if name not in tasks:
        raise BenchError(f"unknown task '{name}': choose one of {', '.join(tasks)} (config/tasks.yaml)")
    t = tasks[name]
    return Task(
        name=name,
        kind=t["kind"],
        template=t["template"],
        verbalizer=tuple(t.get("verbalizer") or ()),
        text_fields=tuple(t["text_fields"]),
        metrics=tuple(t["metrics"]),
        train_split=t.get("train"),
        eval_split=t["eval"],
        shifts=dict(t.get("shifts") or {}),
        max_new_tokens=int(t.get("max_new_tokens") or 0),
        templates=_templates(name, t),
        unlabelled_split=t.get("unlabelled"),
    )


def _templates(name: str, t: dict) -> dict[str, dict]:
    """A task's alternative templates, checked: each a template over the task's fields and, for classification, a
    verbalizer with one word per label."""
    templates = t.get("templates") or {}
    for label, alt in templates.items():
        words = alt.get("verbalizer") if isinstance(alt, dict) else None
        if (
            not isinstance(alt, dict)
            or not isinstance(alt.get("template"), str)
            or label == DEFAULT_TEMPLATE
            or set(alt) - {"template", "verbalizer", "source"}
            or (words is not None and len(words) != len(t.get("verbalizer") or ()))
        ):
            raise BenchError(
                f"task {name}: templates.{label} must be {{template: str, verbalizer: [one word per "
                f"label], source: str}} and not be named {DEFAULT_TEMPLATE!r}: fix config/tasks.yaml"
            )
    return dict(templates)


# --------------------------------------------------------------------------- splits
def _dataset_spec(dataset_id: str) -> dict:
    datasets = _config()["datasets"]
    if dataset_id not in datasets:
        raise BenchError(f"unknown dataset '{dataset_id}': choose one of {', '.join(datasets)} (config/tasks.yaml)")
    return datasets[dataset_id]


def _clean(text: str, spec: dict) -> str:
    for old, new in spec.get("clean") or ():
        text = text.replace(old, new)
    return " ".join(text.split()) if spec.get("squash") else text


def _to_example(rec: dict, spec: dict) -> Example:
    fields = {k: _clean(src.format(**rec) if "{" in src else str(rec[src]), spec) for k, src in spec["fields"].items()}
    label = None
    if "label" in spec:
        raw = rec[spec["label"]]
        label = spec["labels"].index(raw) if "labels" in spec else int(raw)
    refs: tuple[str, ...] = ()
    if "references" in spec:
        raw = rec[spec["references"]]
        refs = tuple(r.strip() for r in ([raw] if isinstance(raw, str) else raw) if r and r.strip())
    return Example(fields=fields, label=label, references=refs)


def _holdout(records: list, seed: int, size: int, part: str) -> list:
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    keep = set(order[-size:]) if part == "dev" else set(order[:-size])
    return [r for i, r in enumerate(records) if i in keep]


def _file_root(dataset_id: str, rel: str, root: Path) -> tuple[Path, bool]:
    """The root holding one of a dataset's files (verified there), and whether it is a user's root. A dataset of
    the user's tasks file is looked up in its data_roots in order, then in the shared root; any other only in the
    shared root, so that a user's files never change a shared dataset."""
    user = _config()["user"]
    if user and dataset_id in user["datasets"]:
        for own in user["data_roots"]:
            if (own / rel).is_file():
                _verified_path(own, rel, own=True)
                return own, True
        if not (root / rel).is_file():
            roots = ", ".join(map(str, [*user["data_roots"], root]))
            raise BenchError(
                f"data file {rel} of dataset {dataset_id} not found in data roots {roots}: put it in "
                f"one of the data_roots of {user_tasks_file()} (paths relative to the root)"
            )
    _verified_path(root, rel)
    return root, False


def _hub_records(dataset_id: str, hub: dict) -> list[dict]:
    """A split of a hub dataset (cluster users: full XSum), through the `datasets` library; needs the network."""
    try:
        import datasets

        return [dict(row) for row in datasets.load_dataset(hub["id"], split=hub["split"])]
    except Exception as error:  # offline, or the hub refused: one line, before any model loads
        raise BenchError(
            f"dataset {dataset_id} is {hub['id']} ({hub['split']}) on the hub and could not be loaded "
            f"({type(error).__name__}: {' '.join(str(error).split())[:160]}): run where the hub is "
            "reachable (unset HF_HUB_OFFLINE), or use the task's offline twin (config/tasks.yaml "
            "`offline`)"
        ) from None


@functools.lru_cache(maxsize=64)
def _load_split_cached(dataset_id: str, root: Path, user_file: str | None) -> tuple[Example, ...]:
    spec = _dataset_spec(dataset_id)
    if "hub" in spec:
        records = _hub_records(dataset_id, spec["hub"])
    else:
        loader = LOADERS.get(spec["loader"])
        if loader is None:
            raise BenchError(
                f"dataset {dataset_id} names unknown loader '{spec['loader']}': "
                f"use one of {', '.join(LOADERS)} in config/tasks.yaml"
            )
        records = [rec for rel in spec["files"] for rec in loader(_file_root(dataset_id, rel, root)[0] / rel)]
    if "holdout" in spec:
        h = spec["holdout"]
        records = _holdout(records, int(h["seed"]), int(h["size"]), h["part"])
    for key, pattern in (spec.get("where") or {}).items():  # e.g. XSum's BBC section: records whose value matches
        records = [r for r in records if re.match(pattern, str(r.get(key, "")))]
    try:
        examples = [_to_example(rec, spec) for rec in records]
    except (KeyError, ValueError, IndexError) as err:
        raise BenchError(
            f"dataset {dataset_id}: record does not match its declaration ({err!r}): "
            "fix fields/label/references in config/tasks.yaml"
        ) from None
    if spec.get("explode"):
        examples = [Example(ex.fields, ex.label, (ref,)) for ex in examples for ref in ex.references]
    if spec.get("group"):
        groups: dict[tuple, list] = {}
        for ex in examples:
            key = tuple(sorted(ex.fields.items()))
            groups.setdefault(key, [ex.fields, ex.label, []])[2].extend(ex.references)
        examples = [Example(f, lab, tuple(refs)) for f, lab, refs in groups.values()]
    return tuple(examples)


def load_split(dataset_id: str, root: Path | None = None) -> list[Example]:
    """All examples of a dataset split, in file order (grouped splits: first-appearance order)."""
    return list(_load_split_cached(dataset_id, data_root(root), user_tasks_file()))


def split_size(dataset_id: str, root=None) -> int:
    """Examples in a split; a hub split's declared `rows` (planning reads no network)."""
    hub = _dataset_spec(dataset_id).get("hub")
    if hub is not None:
        return int(hub["rows"])
    return len(_load_split_cached(dataset_id, data_root(root), user_tasks_file()))


# --------------------------------------------------------------------------- sampling
def sample(examples: list[Example], size: int | str, seed: int) -> list[Example]:
    """size "full": all examples in file order; int n: first n of a seeded permutation (nested across n)."""
    if isinstance(size, str) and size.strip().lower() == "full":
        return list(examples)
    try:
        n = int(size)
        if isinstance(size, float) and size != n:
            raise ValueError
    except (TypeError, ValueError):
        raise BenchError(
            f"sample size {size!r} is not valid: use 'full' or an integer from 1 to {len(examples)}"
        ) from None
    if not 1 <= n <= len(examples):
        raise BenchError(
            f"sample size {n} is out of range for a split of {len(examples)} examples: "
            f"use 'full' or an integer from 1 to {len(examples)}"
        )
    return [examples[i] for i in _permutation(len(examples), seed)[:n]]


def _permutation(count: int, seed: int) -> list[int]:
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order


def _dev_split(task: Task, n, root) -> tuple[list[Example], list[Example]]:
    """(dev, rest) of the task's training split: dev = the last n of a permutation seeded with DEV_SEED (read from
    the end, so a smaller dev set is a prefix of a larger one); rest = every other example, in file order."""
    if task.train_split is None:
        raise BenchError(
            f"task {task.name} has no training split to hold a dev set out of: drop dev_limit for this task"
        )
    examples = load_split(task.train_split, root)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n < len(examples):
        raise BenchError(
            f"dev_limit {n!r} is out of range for task {task.name}: its training split "
            f"{task.train_split} has {len(examples)} examples; use an integer from 1 to "
            f"{len(examples) - 1} (the rest is left to train on)"
        )
    order = list(range(len(examples)))
    random.Random(DEV_SEED).shuffle(order)
    held = order[::-1][:n]
    skip = set(held)
    return [examples[i] for i in held], [ex for i, ex in enumerate(examples) if i not in skip]


def dev_examples(task: Task, n: int, root=None) -> list[Example]:
    """The selection split: n examples held out of the task's training split by a fixed permutation (seed
    DEV_SEED, the same for every cell seed and train size); `train_examples(..., holdout=n)` never draws them."""
    return _dev_split(task, n, root)[0]


def train_examples(task: Task, size, seed, root=None, holdout: int | None = None) -> list[Example]:
    """`sample` of the training split; with `holdout` n, of the split less `dev_examples(task, n)` (still nested
    across sizes for a seed, but not the same examples as without a holdout)."""
    if task.train_split is None:
        raise BenchError(
            f"task {task.name} is evaluation-only (no training split in shared/data): "
            "drop it from training grids or choose another task"
        )
    pool = load_split(task.train_split, root) if holdout is None else _dev_split(task, holdout, root)[1]
    return sample(pool, size, seed)


def unlabelled_pool(
    task: Task, labelled: list[Example], pool_size: int, seed, root=None, holdout: int | None = None
) -> list[Example]:
    """`pool_size` examples of the task's `unlabelled` split (default: its training split, less the dev hold-out)
    whose fields are those of no labelled example, with every label removed (None): the first of a seeded
    permutation (the permutation `train_examples` draws from when it is the training split), so a smaller pool is
    a prefix of a larger one (semi-supervised methods: PET's unlabelled set)."""
    source = task.unlabelled_split or task.train_split
    if source is None:
        raise BenchError(
            f"task {task.name} has no training or unlabelled split to draw an unlabelled pool from: "
            "give it `unlabelled: <dataset>` in config/tasks.yaml or choose another task"
        )
    examples = (
        _dev_split(task, holdout, root)[1]
        if holdout is not None and source == task.train_split
        else load_split(source, root)
    )
    taken = {_fields_key(ex) for ex in labelled}
    pool = []
    for i in _permutation(len(examples), seed):
        if len(pool) == pool_size:
            break
        if _fields_key(examples[i]) not in taken:
            pool.append(replace(examples[i], label=None))
    if len(pool) < pool_size or pool_size < 1:
        raise BenchError(
            f"unlabelled pool of {pool_size} does not fit task {task.name}: {source} holds "
            f"{len(pool)} examples beside the {len(labelled)} labelled ones; use a pool_size from 1 to "
            f"{len(pool)}"
        )
    return pool


def _fields_key(ex: Example) -> tuple:
    return tuple(sorted(ex.fields.items()))


def eval_dataset(task: Task, eval_set: str) -> str:
    """Dataset id of an eval set: the task name (in-domain) or one of its shift names."""
    if eval_set == task.name:
        return task.eval_split
    if eval_set in task.shifts:
        return task.shifts[eval_set]
    raise BenchError(f"unknown eval set '{eval_set}' for task {task.name}: choose one of {', '.join(task.eval_sets)}")


def eval_scorer(task: Task, eval_set: str) -> str | None:
    """The official scorer of a generation eval set (its dataset's `scorer`; `dev`, held out of the training
    split, is scored as the in-domain set); None for classification."""
    if task.kind != "generation":
        return None
    dataset = task.eval_split if eval_set == "dev" else eval_dataset(task, eval_set)
    return _dataset_spec(dataset)["scorer"]


def eval_examples(task: Task, eval_set: str, limit: int | None, root=None) -> list[Example]:
    """Eval examples; `limit` takes a fixed seeded subset (seed 1234) so every cell sees the same ones."""
    examples = load_split(eval_dataset(task, eval_set), root)
    if limit is None:
        return examples
    if int(limit) <= 0:
        raise BenchError(f"eval limit {limit} must be positive: pass a positive limit, or none for all examples")
    return examples if int(limit) >= len(examples) else sample(examples, int(limit), EVAL_LIMIT_SEED)


def _datasets_read(task: Task, eval_sets: list[str]) -> list[str]:
    return (
        ([task.train_split] if task.train_split else [])
        + ([task.unlabelled_split] if task.unlabelled_split else [])
        + [eval_dataset(task, s) for s in eval_sets]
    )


def file_sha256s(task: Task, eval_sets: list[str], root=None) -> dict[str, str]:
    """Verified sha256 of every file a cell of `task` reads (training + given eval sets), by path relative to the
    shared root, or by full path for a file in a user's root."""
    return dataset_sha256s(_datasets_read(task, eval_sets), root)


def dataset_sha256s(dataset_ids: list[str], root=None) -> dict[str, str]:
    """Verified sha256 of every file of the given datasets, keyed as `file_sha256s` keys them."""
    root_path = data_root(root)
    out = {}
    for ds in dataset_ids:
        if "hub" in _dataset_spec(ds):  # no file to hash: the record names the hub split it read
            hub = _dataset_spec(ds)["hub"]
            out[f"hub:{hub['id']}/{hub['split']}"] = "not checked (hub dataset)"
        for rel in _dataset_spec(ds).get("files") or ():
            found, own = _file_root(ds, rel, root_path)
            out[str(found / rel) if own else rel] = _checksums(found)[rel]
    return dict(sorted(out.items()))


def user_inputs(task: Task, eval_sets: list[str], root=None) -> list[str]:
    """The user's tasks file and user data files (verified) that a cell of `task` evaluating `eval_sets` reads; none
    when it reads nothing the user's file declares. They are the cell's Snakemake inputs and recorded in it."""
    user = _config()["user"]
    if user is None:
        return []
    declared = user["tasks"].get(task.name) or {}
    own_datasets = [ds for ds in _datasets_read(task, eval_sets) if ds in user["datasets"]]
    if not (set(declared) - {"shifts"} or set(declared.get("shifts") or {}) & set(eval_sets) or own_datasets):
        return []
    root_path = data_root(root)
    files = [str(_file_root(ds, rel, root_path)[0] / rel) for ds in own_datasets for rel in _dataset_spec(ds)["files"]]
    return [user_tasks_file(), *dict.fromkeys(files)]
