"""The cell contract: (task, model, method, train size, seed, hyperparameters) -> DIR/record.json.

Everything a cell needs is checked before the model loads, so a bad input fails in a second with one
line. The record is written once, at the end, through a temporary file and a rename: a killed cell
never leaves a partial record, and a finished record is never touched by a failing rerun.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import hashlib
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.api.errors import BenchError
from bench.harness import curves, lock, retention
from bench.harness.flops import matmul_peak_flops, train_flops
from bench.harness.identity import CELL_REFS, identity, resolved_spec
from bench.harness.kinds import get_kind
from bench.harness.method import (
    CellContext,
    check_precision,
    get_method,
    method_files,
    resolve_hparams,
    total_parameters,
    trainable_parameters,
)

RECORD_SCHEMA = 1
HARNESS_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CellConfig:
    task: str
    model: str
    method: str
    train_size: int | str
    seed: int = 0
    hp: dict = field(default_factory=dict)  # overrides of the method's defaults
    eval_limit: int | None = None  # examples per eval set (a fixed seeded subset); None = all
    shifts: tuple[str, ...] | None = None  # shifted eval sets to run; None = all of the task's
    grid: str | None = None
    data_root: str | None = None
    dev_limit: int | None = None  # hold this many training examples out as eval set `dev` (lr selection); None = no dev
    data_seed: int | None = None  # seed of the training subsample; None = `seed` (which always seeds init and order)


def files_sha256(paths) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def harness_hash() -> str:
    """The fingerprint of the code that makes records (bench/harness/identity.py says which code, and how)."""
    from bench.harness.identity import harness_fingerprint

    return harness_fingerprint()


def write_atomic(path: Path, write, mode: str = "w") -> None:
    """`write(handle)` into a temporary file beside `path`, then rename it to `path`: never a partial file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except OSError as error:  # a full disk, an unwritable folder: one line, and no partial file left
        temporary.unlink(missing_ok=True)
        raise BenchError(no_space(path, error)) from None


def no_space(path: Path, error: OSError) -> str:
    """The one line for an OSError while writing `path`."""
    if error.errno == errno.ENOSPC:
        return f"no space left on the device while writing {path}: free some space (or pass another --out), then rerun"
    return f"cannot write {path} ({error.strerror or error}): pass an --out folder you can write to, then rerun"


def save_delta_atomic(method, model, delta_dir: Path) -> None:
    """The method's delta into a temporary folder beside `delta_dir`, renamed over it once complete: a full disk
    (safetensors raises mid-file) leaves the previous delta or none, never a partial one, and says so in one line."""
    temporary = delta_dir.with_name(f".{delta_dir.name}.{os.getpid()}.tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        method.save_delta(model, temporary)
        if delta_dir.exists():
            shutil.rmtree(delta_dir)
        os.replace(temporary, delta_dir)
    except Exception as error:  # safetensors reports a failed write as its own error type (SafetensorError)
        shutil.rmtree(temporary, ignore_errors=True)
        if isinstance(error, OSError):
            raise BenchError(no_space(delta_dir, error)) from None
        if "No space left" in str(error) or "os error 28" in str(error):
            raise BenchError(no_space(delta_dir, OSError(errno.ENOSPC, "No space left on device"))) from None
        raise


def write_json_atomic(path: Path, payload: dict) -> None:
    def write(handle):
        json.dump(payload, handle, indent=2, sort_keys=False)
        handle.write("\n")

    write_atomic(path, write)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HARNESS_DIR, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def cpu_description() -> str:
    """The CPU's model name and the vector extensions that decide which matmul kernels run (fp32 results can differ
    in the last bits between machines that differ in them; bf16 autocast is fast only with avx512_bf16/amx_bf16)."""
    from bench.harness.flops import device_name

    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        flags = ""
    present = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split()]
    return " ".join([device_name("cpu"), *(f"+{f}" for f in present)])


def environment(device: str) -> dict:
    import peft
    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "git_commit": git_commit(),
        "harness_sha256": harness_hash(),
        "device": device,
        "cpu": cpu_description(),
        "threads": torch.get_num_threads(),
        "host": platform.node(),
        **lock.environment(),
    }


@dataclass
class Plan:
    """A validated cell: everything resolved, nothing heavy loaded yet."""

    config: CellConfig
    task: object
    model_spec: object
    method: object
    hp: dict
    eval_sets: list[str]


@functools.lru_cache(maxsize=1)
def supported_versions() -> None:  # once per process: planning checks every cell
    lock.check_supported()


def plan_cell(config: CellConfig) -> Plan:
    """Validate a cell against the registries; raises BenchError with one line naming the fix."""
    from bench.harness.models import architecture, get_model_spec
    from bench.harness.tasks import data_root, dev_examples, get_task, split_size, user_inputs

    supported_versions()
    check_counts(config)
    task = get_task(config.task)
    spec = get_model_spec(config.model)
    method = get_method(config.method)
    hp = resolve_hparams(method, config.hp)
    task = task.with_template(hp["template"])
    if spec.kind not in method.model_kinds:
        raise BenchError(
            f"method {method.name} does not support {spec.kind} models like {spec.name}: "
            f"it supports {', '.join(method.model_kinds)}"
        )
    if not get_kind(spec.kind).generates and task.kind != "classification":
        raise BenchError(f"{spec.kind} {spec.name} cannot do generation task {task.name}: use a causal LM")
    method.check_hparams(hp, task, spec.kind)
    method.check_architecture(hp, architecture(spec.architecture))
    curves.check(hp)
    check_precision(hp)
    retention.check(hp, task, spec.kind)
    root = data_root(config.data_root)
    if task.train_split is None and hp["steps"] > 0:
        raise BenchError(f"task {task.name} has no training split (evaluation only): use steps=0 or another task")
    held = ""
    if config.dev_limit is not None:
        dev_examples(task, config.dev_limit, root)  # raises if the task has no training split, or it is too small
        held = f" (its training split less dev_limit={config.dev_limit})"
    if task.train_split is not None:
        available = split_size(task.train_split, root) - (config.dev_limit or 0)
        size = config.train_size
        if size != "full" and not (isinstance(size, int) and 0 < size <= available):
            raise BenchError(f"train size {size!r} invalid for {task.name}{held}: use 'full' or 1..{available}")
    if config.data_seed is not None and (task.train_split is None or config.train_size == "full"):
        raise BenchError(
            f"data seed {config.data_seed} set for {task.name} at train size {config.train_size}: a data "
            "seed draws a subsample of the training split: drop data_seeds from this block, or use "
            "integer train sizes on a task with a training split"
        )
    shifts = list(task.shifts) if config.shifts is None else list(config.shifts)
    unknown = [s for s in shifts if s not in task.shifts]
    if unknown:
        raise BenchError(
            f"shift(s) {unknown} not defined for task {task.name}: choose from {', '.join(task.shifts) or 'none'}"
        )
    if hp["steps"] == 0 and config.eval_limit is None and config.grid is None:
        raise BenchError(
            f"steps=0 scores every example of {', '.join([task.name, *shifts])} "
            "without training, which takes many minutes on a CPU: pass --eval-limit N (e.g. 200), or "
            "plan the cell in a grid"
        )
    user_inputs(task, [task.name] + shifts, root)  # a user's data file missing or failing its sha256: fail now
    return Plan(config, task, spec, method, hp, [task.name] + shifts)


SEED_MAX = 2**32 - 1  # numpy's seeds


def check_counts(config: CellConfig) -> None:
    """Seeds and example counts of a cell, each in its range: one line naming the fix, before anything loads."""
    for name, value in (("seed", config.seed), ("data seed", config.data_seed)):
        if value is not None and not (isinstance(value, int) and 0 <= value <= SEED_MAX):
            raise BenchError(
                f"{name} {value} must be an integer in 0..{SEED_MAX}: use e.g. --{name.replace(' ', '-')} 0"
            )
    for name, value in (("eval limit", config.eval_limit), ("dev limit", config.dev_limit)):
        if value is not None and not (isinstance(value, int) and value > 0):
            raise BenchError(
                f"{name} {value} must be a positive number of examples: use e.g. "
                f"--{name.replace(' ', '-')} 200, or leave it out"
            )


def check_writable(out_dir: Path) -> None:
    """The cell's folder can be made and takes a file, before a model loads: one line otherwise. Folders made for
    the probe are removed again (the cell writes its own when it has something to write)."""
    made = [d for d in (out_dir, *out_dir.parents) if not d.exists()]
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".writable-"):
            pass
    except OSError as error:
        raise BenchError(
            f"cannot write to {out_dir} ({error.strerror or error}): pass an --out folder you can write to"
        ) from None
    finally:
        for folder in made:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()


def seed_everything(seed: int) -> None:
    import numpy
    import torch

    random.seed(seed)
    numpy.random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_bytes(device: str) -> int:
    import torch

    if device.startswith("cuda"):
        return int(torch.cuda.max_memory_allocated())
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class FormattedTask:
    """A task whose `prompt(ex)` is the method's `format_prompt` of the task's prompt; every other
    attribute is the task's. Training batches and evaluation both read prompts through it."""

    def __init__(self, task, method, hp: dict, ctx: CellContext):
        self._task, self._method, self._hp, self._ctx = task, method, hp, ctx

    def __getattr__(self, name):  # only called for names not set in __init__
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._task, name)

    def prompt(self, ex) -> str:
        return self._method.format_prompt(self._task.prompt(ex), self._hp, self._ctx)


def evaluate_set(
    plan: Plan, model, tokenizer, examples, timer, task=None, scorer: str | None = None
) -> tuple[dict, list[dict]]:
    """(metrics, per-example outputs) of one eval set; `task` (default plan.task) is the task as the method formats
    it; `scorer` the eval set's official scorer (generation; bench/harness/scorers.py). The metrics are the method's
    `score_outputs` of the outputs, so re-scoring the kept outputs gives them."""
    from bench.harness import evaluation
    from bench.harness.train import autocast

    task, hp = task or plan.task, plan.hp
    kind, extra = get_kind(plan.model_spec.kind), plan.method.extra_positions(hp)
    with autocast(hp, next(model.parameters()).device, enabled=task.kind == "classification"):
        rows = plan.method.evaluate(model, tokenizer, task, examples, hp, timer)
        if rows is None and task.kind == "classification":
            scores = kind.label_scores(model, tokenizer, task, examples, hp, extra, timer)
            rows = evaluation.classification_outputs(scores, examples)
    if rows is None:
        hypotheses = kind.generate(
            model, tokenizer, [task.prompt(ex) for ex in examples], task.max_new_tokens, hp, extra, timer
        )
        rows = evaluation.generation_outputs(hypotheses, examples)
    metrics = plan.method.score_outputs(rows, task.metrics, scorer)
    if task.kind != "classification":
        metrics["samples"] = [{"input": task.prompt(ex), "output": r["hyp"]} for ex, r in zip(examples[:3], rows)]
    return metrics, rows


OUTPUTS = "outputs.jsonl.gz"  # beside record.json: every eval set's per-example outputs, one JSON line each


def write_outputs_atomic(path: Path, outputs: dict[str, list[dict]]) -> str:
    """Per-example outputs ({eval set: rows}) as gzip'd JSON lines, each row with its `eval_set`, written like
    the record (temporary file, rename); returns the file's sha256, which the record keeps. mtime 0: the same
    outputs give the same bytes."""
    lines = "".join(
        json.dumps({"eval_set": name, **row}, ensure_ascii=False) + "\n"
        for name, rows in outputs.items()
        for row in rows
    )
    data = gzip.compress(lines.encode(), mtime=0)
    write_atomic(path, lambda handle: handle.write(data), "wb")
    return hashlib.sha256(data).hexdigest()


def read_outputs(cell_dir: Path, record: dict) -> dict[str, list[dict]] | None:
    """A record's per-example outputs by eval set; None when the record has none (older records) or the file is
    missing or does not match the sha256 in the record."""
    kept = record.get("outputs")
    path = Path(cell_dir) / (kept or {}).get("file", OUTPUTS)
    if not kept or not path.is_file():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != kept.get("sha256"):
        return None
    outputs: dict[str, list[dict]] = {}
    for line in gzip.decompress(data).decode().splitlines():
        row = json.loads(line)
        outputs.setdefault(row.pop("eval_set"), []).append(row)
    return outputs


def run_cell(config: CellConfig, out_dir: Path, threads: int | None = None) -> dict:
    """Run one cell and write out_dir/record.json; returns the record."""
    harness_hash()  # the code this cell starts with is the code its record names
    plan = plan_cell(config)
    check_writable(out_dir)
    from bench.harness.scorers import check_metric_tools
    from bench.harness.tasks import eval_scorer

    # e.g. METEOR without Java: one line now, not a traceback after training
    check_metric_tools(plan.task.metrics, {eval_scorer(plan.task, name) for name in plan.eval_sets})
    import torch

    from bench.harness.batches import training_batches
    from bench.harness.evaluation import Timer
    from bench.harness.models import load_model, model_fingerprint
    from bench.harness.tasks import (
        data_root,
        dataset_sha256s,
        dev_examples,
        eval_examples,
        file_sha256s,
        train_examples,
        user_inputs,
    )
    from bench.harness.train import train

    if threads:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    task, hp, method = plan.task, plan.hp, plan.method
    root = data_root(config.data_root)
    seed_everything(config.seed)
    trains = hp["steps"] > 0
    # loaded also when nothing trains: a method may read them (in-context demonstrations)
    data_seed = config.seed if config.data_seed is None else config.data_seed
    train_set = train_examples(task, config.train_size, data_seed, root, config.dev_limit) if task.train_split else []
    eval_sets = {name: eval_examples(task, name, config.eval_limit, root) for name in plan.eval_sets}
    if config.dev_limit is not None:  # the selection split first, then in-domain and shifts
        eval_sets = {"dev": dev_examples(task, config.dev_limit, root), **eval_sets}
    ctx = CellContext(
        task=task, model_kind=plan.model_spec.kind, tokenizer=None, train_examples=train_set, seed=config.seed
    )
    if trains:  # e.g. a teacher's labels (distill), before this cell's model loads; not part of the cell's cost
        train_set = ctx.train_examples = method.prepare_train_examples(train_set, hp, ctx)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
    model, tokenizer, manifest = load_model(config.model, num_labels=len(task.verbalizer) or None)
    ctx.tokenizer = tokenizer
    retained = retention.Retention(tokenizer, hp, root) if hp["retention"] else None
    retained_base = retained.measure(model.to(device)) if retained else None  # before the method touches it
    seed_everything(config.seed)
    model = method.apply(model, hp, ctx).to(device)
    prompted = FormattedTask(task, method, hp, ctx)
    curve = None
    if hp["eval_every"] > 0:
        curve_set, curve_subset = curves.curve_examples(eval_sets, task.name, hp["curve_limit"])
        curve = curves.LearningCurve(
            lambda m, examples: evaluate_set(
                plan, m, tokenizer, examples, None, prompted, eval_scorer(plan.task, curve_set)
            ),
            curve_set,
            curve_subset,
            task.metrics[0],
        )

    result = (
        train(
            model,
            method,
            hp,
            training_batches(
                tokenizer,
                prompted,
                ctx.model_kind,
                train_set,
                hp["batch_size"],
                hp["max_len"],
                config.seed,
                hp["group_by_length"],
                with_index=True,
            ),
            ctx.model_kind,
            progress=f"{config.method} {config.task} n={config.train_size}",
            on_eval=curve,
        )
        if trains
        else None
    )
    record = {
        "schema": RECORD_SCHEMA,
        "config": {
            **{
                k: v for k, v in asdict(config).items() if k not in ("dev_limit", "data_seed") or v is not None
            },  # opt-in keys
            "shifts": plan.eval_sets[1:],
            "hp": hp,
            "hp_overrides": dict(config.hp),
        },
        "status": "diverged" if result and result.diverged_at_step is not None else "ok",
        "diverged_at_step": result.diverged_at_step if result else None,
        "metrics": {},
        "train": {"steps": result.steps_done if result else 0, "losses": result.losses if result else []},
    }
    delta_dir = out_dir / "delta"
    delta_bytes = 0
    eval_timer = Timer()
    eval_start = time.perf_counter()
    if record["status"] == "ok":
        save_delta_atomic(method, model, delta_dir)
        delta_bytes = sum(f.stat().st_size for f in delta_dir.rglob("*") if f.is_file())
        outputs = {}
        for name, examples in eval_sets.items():
            record["metrics"][name], outputs[name] = evaluate_set(
                plan, model, tokenizer, examples, eval_timer, prompted, eval_scorer(plan.task, name)
            )
            record["metrics"][name]["n"] = len(examples)
        record["outputs"] = {"file": OUTPUTS, "sha256": write_outputs_atomic(out_dir / OUTPUTS, outputs)}
        if trains and (analysis := method.analyse(model, hp, ctx)):
            record["analysis"] = analysis
    peak_mem = peak_memory_bytes(device)  # before matmul_peak_flops: its benchmark matrices would count
    run_flops = (
        train_flops(
            model,
            method.tunes_base,
            result.tokens,
            result.encoder_tokens,
            method.extra_positions(hp),
            result.steps_done * hp["batch_size"],
            result.head_positions,
        )
        if result
        else 0.0
    )
    peak_flops = (
        matmul_peak_flops(torch.get_num_threads(), device, hp["precision"]) if run_flops and result.train_s > 0 else 0.0
    )
    record["cost"] = {
        "trainable_params": trainable_parameters(model) if trains else 0,
        "delta_params": method.delta_parameters(model) if trains else 0,
        "total_params": total_parameters(model),
        "delta_bytes": delta_bytes,
        "peak_mem_bytes": peak_mem,
        "peak_mem_kind": "cuda_max_allocated" if device == "cuda" else "process_max_rss",
        "train_s": round(result.train_s, 3) if result else 0.0,
        "train_tokens_per_s": round(result.tokens_per_s, 2) if result else 0.0,
        "flops_per_step": round(run_flops / result.steps_done) if result and result.steps_done else 0,
        "train_flops_per_s": round(run_flops / result.train_s) if peak_flops else 0.0,
        "mfu": round(run_flops / result.train_s / peak_flops, 4) if peak_flops else 0.0,
        "matmul_peak_flops": round(peak_flops),
        "eval_s": round(time.perf_counter() - eval_start, 3),
        "eval_tokens_per_s": round(eval_timer.tokens / eval_timer.seconds, 2) if eval_timer.seconds else 0.0,
    }
    if curve:  # opt-in keys: cells without eval_every / retention are as before
        record["curve"] = curve.record(result.curve_eval_s)
        record["cost"]["curve_eval_s"] = round(result.curve_eval_s, 3)
    if retained and record["status"] == "ok":
        record["retention"] = retained.record(retained_base, retained.measure(model, method.extra_positions(hp)))
        record["cost"]["retention_s"] = record["retention"]["seconds"]
    record["env"] = environment(device)
    if own := user_inputs(task, plan.eval_sets, root):  # opt-in key: cells reading only shared data are as before
        record["config"]["tasks_file"] = {
            "path": own[0],
            "sha256": hashlib.sha256(Path(own[0]).read_bytes()).hexdigest(),
        }
    record["inputs"] = {
        "data": {
            **file_sha256s(task, plan.eval_sets, root),
            **(dataset_sha256s(retention.datasets(hp), root) if retained else {}),
        },
        "model": {"name": config.model, "sha256": model_fingerprint(manifest)},
        "method_sha256": files_sha256(method_files(config.method)),
    }
    record["identity"] = identity(resolved_spec(config, record["inputs"]["model"]["sha256"], needed_identities(hp)))
    write_json_atomic(out_dir / "record.json", record)
    return record


def needed_identities(hp: dict) -> dict[str, str | None]:
    """The identity sha256 of each record the cell reads (hp `teacher`, `patterns`: cell dirs), by dir."""
    dirs = [d for ref in CELL_REFS for d in str(hp.get(ref) or "").split(",") if d]
    found = {}
    for d in dirs:
        try:
            found[d] = json.loads(Path(d, "record.json").read_text()).get("identity", {}).get("sha256")
        except (OSError, ValueError):
            found[d] = None
    return found
