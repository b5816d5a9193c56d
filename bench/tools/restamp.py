"""`python -m bench restamp GRID...`: after a harness change that leaves results as they were, prove it and carry the
existing records over to the new harness fingerprint without recomputing them.

The proof is a golden check, run before anything is written:
- tiny cells: every tiny model (one stand-in per architecture) x every method (`tiny_cells`), run under the
  harness of `--against REV` (a git commit, unpacked into a temporary folder) and under today's code, compared bit
  for bit;
- committed cells: the cheapest training record of each grid (every record of the grids named by `--check-all`),
  and one record of each method whose code changed since the record (the cheapest of any grid: a method's code is
  the same in every grid), rerun under today's code and compared bit for bit with the committed record. Method code
  whose imports only name moved modules (`imports_moved_only`) needs no rerun of its own: the tiny cells cover it.
"Bit for bit" is every field of the record but those NOT_COMPARED (times, throughput, memory, the environment, the
delta's size on disk, the identity and the method files' bytes) and hyperparameters the harness added since (at
their defaults): metrics and samples, per-step losses, the per-example outputs' sha256, parameter counts, curves
and retention scores. Cells run one at a time, with one torch thread, in a copy of the working tree.
Only when every check passed are the grid's records re-stamped: each record whose spec differs from its cell's
planned spec in nothing but the harness (or, made before cell identity, whose method files, model, data, hp and
config are today's, by the fingerprints it carries) gains the planned `identity` and today's `env.harness_sha256`;
every other byte of it stays as it was. A record that differs in more is left stale. The log of what was checked
and written goes to reports/identity/restamp.{json,md} (--log): checks made under today's harness are reused from it.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.api.errors import BenchError

PROJECT = Path(__file__).resolve().parents[2]
LOG = PROJECT / "reports" / "identity" / "restamp.json"
GOLDEN_GRID = "golden"  # the tiny cells' folder (results/golden/ in a temporary copy; no grid file)
NOT_COMPARED = {
    "env",
    "identity",
    "config.data_root",
    "cost.peak_mem_bytes",
    "cost.peak_mem_kind",
    "cost.train_s",
    "cost.train_tokens_per_s",
    "cost.train_flops_per_s",
    "cost.mfu",
    "cost.matmul_peak_flops",
    "cost.eval_s",
    "cost.eval_tokens_per_s",
    "cost.curve_eval_s",
    "cost.retention_s",
    "curve.eval_s",
    "retention.seconds",
    "cost.delta_bytes",  # the saved delta's config names the model cache's path: its size follows the path
    "inputs.method_sha256",
}  # the method files' bytes: what a rerun of a changed method proves neutral
# Runs cells one at a time in one process (imports once); only CellConfig and run_cell, which every harness has
# (in bench/harness/ since the packages by layer, in bench/ before).
RUNNER = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
if Path("bench/harness/cell.py").is_file():  # by the tree's own files: an editable install of another tree
    from bench.harness.cell import CellConfig, run_cell  # would answer an import that this tree cannot
    from bench.api.errors import BenchError
else:
    from bench.cell import CellConfig, run_cell
    from bench.errors import BenchError
for job in json.loads(Path(sys.argv[1]).read_text()):
    try:
        run_cell(CellConfig(**job["config"]), Path(job["out"]), threads=1)
    except BenchError as error:  # a cell the harness refuses when it runs: the refusal is its result
        Path(job["out"]).mkdir(parents=True, exist_ok=True)
        Path(job["out"], "record.json").write_text(json.dumps({"refused": str(error)}))
    print("done", job["out"], flush=True)
"""


def _flat(value, prefix=""):
    if isinstance(value, dict) and value:
        return {
            k: v for key, item in value.items() for k, v in _flat(item, f"{prefix}.{key}" if prefix else key).items()
        }
    if isinstance(value, list):  # curve points carry their own train_s
        return {prefix: [_strip_point(v) for v in value]}
    return {prefix: value}


def _strip_point(value):
    return {k: v for k, v in value.items() if k != "train_s"} if isinstance(value, dict) else value


def compared(record: dict) -> dict:
    """The fields of a record that a result-neutral change leaves bit for bit as they were."""
    return {k: v for k, v in _flat(record).items() if not any(k == m or k.startswith(m + ".") for m in NOT_COMPARED)}


def added_hp(expected: dict, got: dict) -> list[str]:
    """Hyperparameters the harness added since the expected record was made (absent from it, at their defaults in
    the rerun): a record's layout, not its result; the rerun's results decide whether the default is neutral."""
    return sorted(
        f"config.hp.{k}"
        for k in set(got.get("config", {}).get("hp", {})) - set(expected.get("config", {}).get("hp", {}))
    )


def mismatches(expected: dict, got: dict) -> list[str]:
    a, b = compared(expected), compared(got)
    added = set(added_hp(expected, got))
    return sorted(k for k in set(a) | set(b) if k not in added and a.get(k, "<absent>") != b.get(k, "<absent>"))


def _config(cell) -> dict:
    """The CellConfig fields of a grid cell as `python -m bench run-cell` makes them (hp values as text)."""
    return {
        "task": cell.task,
        "model": cell.model,
        "method": cell.method,
        "train_size": cell.train_size,
        "seed": cell.seed,
        "hp": {k: str(v) for k, v in cell.hp.items()},
        "eval_limit": cell.eval_limit,
        "shifts": None if cell.shifts is None else list(cell.shifts),
        "grid": cell.grid,
        "data_root": None,
        "dev_limit": cell.dev_limit,
        "data_seed": cell.data_seed,
    }


def copy_tree(rev: str | None, into: Path) -> Path:
    """The project at `rev` (git archive), or the working tree (tracked and untracked, not ignored files)."""
    into.mkdir(parents=True)
    if rev:
        archive = subprocess.run(["git", "archive", rev], cwd=PROJECT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
        return into
    names = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    for name in filter(None, names):
        if (PROJECT / name).is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT / name, into / name)
    return into


def run_cells(tree: Path, jobs: list[dict]) -> float:
    """Run `jobs` ({config, out}) in `tree` with its own code, one at a time; returns the seconds taken."""
    from bench.harness.tasks import data_root

    listing = tree / ".golden-jobs.json"
    listing.write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1", "PEFT_REPRO_DATA": str(data_root())}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUNNER, str(listing)], cwd=tree, env=env, capture_output=True, text=True
    )
    if done.returncode:
        raise BenchError(
            f"golden cells failed in {tree}: {done.stderr.strip().splitlines()[-1:]}: fix the cell "
            "and run restamp again"
        )
    return time.perf_counter() - start


def tiny_cells() -> list:
    """Every tiny model (config/models.yaml `source: tiny`: one stand-in per architecture) x every method that
    plans on it, on SST-2 (8 examples, 2 steps, 4 eval examples), distill with a full-FT teacher and PET's final
    stage with one pattern model; and generation (E2E) on a causal LM and an encoder-decoder. The cells a cell
    reads come before it."""
    from bench.grid.plan import Cell
    from bench.harness.cell import CellConfig, plan_cell
    from bench.harness.method import method_names
    from bench.harness.models import get_model_spec, model_names

    base = {"steps": 2, "max_len": 32, "batch_size": 4}
    cells = []

    def add(task, model, method, hp, variant="", needs=()):
        cell = Cell(GOLDEN_GRID, task, model, method, 8, 0, hp, 4, (), variant, needs)
        try:
            plan_cell(CellConfig(task, model, method, 8, 0, hp, 4, (), GOLDEN_GRID))
        except BenchError:  # e.g. bitfit on a bias-free model, a soft prompt on an encoder: not a cell
            return None
        cells.append(cell)
        return cell

    for model in (m for m in model_names() if get_model_spec(m).source == "tiny"):
        teacher = None
        for method in sorted(method_names(), key=lambda m: m != "full_ft"):  # the teacher first
            hp = dict(base, **({"steps": 0} if method == "prompt_design" else {}))
            if method == "distill":
                if teacher is None:
                    continue
                hp["teacher"] = teacher.dir
                add("sst2", model, method, hp, needs=(teacher.dir,))
            elif method == "pet":
                pattern = add("sst2", model, method, dict(hp, template="pet_it_was"))
                if pattern is not None:
                    add(
                        "sst2",
                        model,
                        method,
                        dict(hp, stage="final", pool_size=8, patterns=pattern.dir),
                        "pet_final",
                        (pattern.dir,),
                    )
            else:
                cell = add("sst2", model, method, hp)
                teacher = cell if method == "full_ft" else teacher
        if model in ("tiny-llama", "tiny-t5"):
            for method in ("full_ft", "lora", "prompt_tuning"):
                add("e2e", model, method, dict(base, max_len=64))
    return cells


def cost_s(record: dict) -> float:
    cost = record.get("cost") or {}
    return sum(float(cost.get(key) or 0) for key in ("train_s", "eval_s", "curve_eval_s", "retention_s"))


def method_code_at(commit: str | None, method: str) -> tuple[str | None, str | None]:
    """(sha256 of the method's files' bytes, as a record's `inputs.method_sha256`; their code fingerprint, as a spec's
    `method.code`) at a git commit; (None, None) where the commit or a file is not in this repository."""
    import ast
    import hashlib

    from bench.harness.identity import PROJECT_ROOT, _canonical, _strip_docstrings
    from bench.harness.method import method_files

    raw, code = hashlib.sha256(), hashlib.sha256()
    for path in sorted(method_files(method)):
        relative = path.resolve().relative_to(PROJECT_ROOT)
        shown = (
            subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=PROJECT, capture_output=True)
            if commit
            else None
        )
        if shown is None or shown.returncode:
            return None, None
        raw.update(path.name.encode() + b"\0" + shown.stdout)
        tree = _strip_docstrings(ast.parse(shown.stdout.decode()))
        fingerprint = hashlib.sha256(json.dumps(_canonical(tree), separators=(",", ":")).encode()).hexdigest()
        code.update(f"{relative}\0{fingerprint}\n".encode())
    return raw.hexdigest(), code.hexdigest()


PROVE = "method code, to prove: "


def legacy_consistent(record: dict, cell, planned: dict) -> list[str]:
    """For a record made before cell identity: what, by the fingerprints and config it carries, differs from the
    planned spec: its method files (by bytes; else by code, read at the record's `env.git_commit` where that
    commit's files are the bytes the record names; a method whose code differs is re-stamped only where a rerun of
    one of its cells is identical: PROVE), model, data files, resolved hp (a key the harness added since
    is allowed: the golden check reruns the grid's cells with it), sizes, seeds, eval sets."""
    from bench.grid.plan import current_method_sha256

    spec, config, inputs = planned["spec"], record.get("config", {}), record.get("inputs", {})
    problems = []
    if inputs.get("method_sha256") != current_method_sha256(cell.method):
        raw, code = method_code_at(record.get("env", {}).get("git_commit"), cell.method)
        if raw != inputs.get("method_sha256") or code != spec["method"]["code"]:
            problems.append(f"{PROVE}{cell.method}")  # to be proven by a rerun of one of its cells
    if inputs.get("model", {}).get("sha256") != spec["model"]["weights"]:
        problems.append("model weights")
    planned_data = {k.removeprefix("user:"): v for k, v in spec["data"].items()}
    if {Path(k).name: v for k, v in inputs.get("data", {}).items()} != {
        Path(k).name: v for k, v in planned_data.items()
    }:
        problems.append("data files")
    hp = config.get("hp") or {}
    if any(json.dumps(v, default=str) != json.dumps(spec["hp"].get(k, "<absent>"), default=str) for k, v in hp.items()):
        problems.append("hp")
    eval_sets = list(spec["eval"])
    for key, want in (
        ("train_size", spec["train_size"]),
        ("seed", spec["seed"]),
        ("data_seed", spec["data_seed"]),
        ("dev_limit", spec["dev_limit"]),
        ("eval_limit", spec["eval"][eval_sets[0]]["limit"]),
        ("shifts", eval_sets[1:]),
        ("task", next(iter(spec["task"]))),
        ("model", spec["model"]["name"]),
        ("method", spec["method"]["name"]),
    ):
        if config.get(key) != want:
            problems.append(key)
    return problems


@functools.lru_cache(maxsize=None)
def imports_moved_only(commit: str | None, method: str, recorded_code: str) -> bool:
    """Whether the method's code at `commit` is the record's (`recorded_code`) and today's differs from it only in
    the module paths its imports name (the modules it imports moved, e.g. bench/method.py to bench/harness/): the
    statements it runs are the same; the tiny golden cells, every method under both commits, check the moved
    modules compute the same."""
    import ast

    from bench.harness.identity import PROJECT_ROOT, _canonical, _strip_docstrings
    from bench.harness.method import method_files

    if not commit or method_code_at(commit, method)[1] != recorded_code:
        return False

    def without_module_paths(source: str):
        tree = _strip_docstrings(ast.parse(source))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                node.module = None
        return _canonical(tree)

    for path in method_files(method):
        relative = path.resolve().relative_to(PROJECT_ROOT)
        shown = subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=PROJECT, capture_output=True)
        if shown.returncode or without_module_paths(shown.stdout.decode()) != without_module_paths(path.read_text()):
            return False
    return True


def restampable(record: dict, cell, planned: dict, against: str | None = None) -> list[str]:
    """[] when the record may take the planned identity (it differs in the harness at most, in method code whose
    imports name moved modules and nothing else: imports_moved_only, or in the identity of a record it reads that
    was itself re-stamped onto today's harness), else what differs."""
    from bench.grid.plan import stale_fields

    spec = (record.get("identity") or {}).get("spec")
    if spec:  # changed method code: to be proven by a rerun (PROVE)
        from bench.grid.plan import read_record
        from bench.harness.identity import harness_fingerprint

        def carried_over(field: str) -> bool:  # a record it reads, itself re-stamped onto today's harness (proven)
            needed = read_record(field.removeprefix("needs.")) if field.startswith("needs.") else None
            return bool(needed) and needed["env"].get("harness_sha256") == harness_fingerprint()

        return [
            f"{PROVE}{cell.method}" if field == "method.code" else field
            for field in stale_fields(record, planned)
            if field != "harness"
            and not carried_over(field)
            and not (field == "method.code" and imports_moved_only(against, cell.method, spec["method"]["code"]))
        ]
    return legacy_consistent(record, cell, planned)


def _dump(record: dict) -> str:
    return json.dumps(record, indent=2, sort_keys=False) + "\n"


def restamp_record(path: Path, planned: dict, harness: str) -> bool:
    """Write the planned identity and today's harness fingerprint into a record, every other byte as it was;
    False where the record's text is not what the harness writes (it would change elsewhere: left alone)."""
    text = path.read_text()
    record = json.loads(text)
    if _dump(record) != text:
        return False
    record["env"]["harness_sha256"] = harness
    record["identity"] = planned
    new = _dump(record)
    tmp = path.with_name(f".{path.name}.restamp.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
    return True


def main(
    grids: list[str], against: str, check_all: list[str], log: Path, dry_run: bool, logged_only: bool = False
) -> int:
    from bench.grid.plan import grid_cells, planned_identity, read_record
    from bench.harness.cell import cpu_description
    from bench.harness.identity import harness_fingerprint

    harness = harness_fingerprint()
    old_log = json.loads(log.read_text()) if log.is_file() else {}
    checks = {c["dir"]: c for c in old_log.get("checks", []) if c.get("harness") == harness}
    plan = {}
    for grid in grids:
        cells = {c.dir: c for c in grid_cells(grid)}
        rows = []
        for cell in cells.values():
            record = read_record(cell.dir)
            if not record:
                continue
            planned = planned_identity(cell, cells)
            rows.append((cell, record, planned, restampable(record, cell, planned, against)))
        plan[grid] = rows
    # the golden set
    work = Path(tempfile.mkdtemp(prefix="restamp-"))
    now = lambda: datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")  # noqa: E731
    try:
        tiny = [c for c in tiny_cells() if c.dir not in checks]
        if tiny and logged_only:
            raise BenchError(
                f"{len(tiny)} tiny golden cells are not in {log} under harness {harness[:12]}: run "
                "restamp without --logged-only"
            )
        if tiny:
            old_tree, new_tree = copy_tree(against, work / "old"), copy_tree(None, work / "new")
            jobs = [{"config": _config(c), "out": c.dir} for c in tiny]
            print(f"golden: {len(tiny)} tiny cells under {against} ...", flush=True)
            old_s = run_cells(old_tree, jobs)
            print(f"golden: the same under today's code ({old_s:.0f} s before) ...", flush=True)
            new_s = run_cells(new_tree, jobs)
            for cell in tiny:
                a = json.loads((old_tree / cell.dir / "record.json").read_text())
                b = json.loads((new_tree / cell.dir / "record.json").read_text())
                checks[cell.dir] = {
                    "dir": cell.dir,
                    "kind": f"tiny, {against} vs today's code",
                    "harness": harness,
                    "against": against,
                    "differs": mismatches(a, b),
                    "date": now(),
                    "seconds": round((old_s + new_s) / len(tiny), 1),
                }
        committed, by_key = [], {}  # (order, -records it can carry over per second, cell): --check-all grids first
        for grid, rows in plan.items():
            candidates = sorted(
                (
                    (not r["train"]["steps"], cost_s(r), c.dir, c, problems)
                    for c, r, _, problems in rows
                    if r.get("status") == "ok" and all(p.startswith(PROVE) for p in problems)
                ),
                key=lambda t: t[:3],
            )
            if grid in check_all:
                committed += [(0, t[1], t[3]) for t in candidates]
            if candidates:  # the cheapest that trains, where one does; then one cell per method to prove
                plain = sum(not problems for *_, problems in rows)
                committed.append((1, -plain / max(candidates[0][1], 1.0), candidates[0][3]))
            for key in sorted({p for *_, problems in candidates for p in problems}):
                t = next(t for t in candidates if key in t[-1])
                if key not in by_key or t[:2] < by_key[key][:2]:
                    by_key[key] = t
        # one cell per method to prove, the cheapest of any grid: a method's code is the same in every grid (the
        # tiny golden cells run every method on every architecture under both commits)
        proven_by = {c.method for *_, c in committed} | {
            c.method for rows in plan.values() for c, *_ in rows if c.dir in checks and not checks[c.dir]["differs"]
        }  # a method some other check (passed, or to run) already reruns
        committed += [(1, 0.0, t[3]) for key, t in by_key.items() if key.removeprefix(PROVE) not in proven_by]
        # past the --check-all grids, the checks that carry the most records per second first (a shared machine)
        committed = list({c.dir: c for *_, c in sorted(committed, key=lambda t: t[:2]) if c.dir not in checks}.values())
        if committed and logged_only:
            print(f"golden: {len(committed)} committed cell(s) not checked (--logged-only): their grids stay stale")
        elif committed:
            tree = copy_tree(None, work / "committed") if not (work / "committed").exists() else work / "committed"
            for cell in committed:  # one at a time, each logged as it finishes: a long check can be resumed
                out = work / "out" / cell.dir
                print(f"golden: rerunning {cell.dir} ...", flush=True)
                seconds = run_cells(tree, [{"config": _config(cell), "out": str(out)}])
                got = json.loads((out / "record.json").read_text())
                checks[cell.dir] = {
                    "dir": cell.dir,
                    "kind": "committed record vs today's code",
                    "harness": harness,
                    "differs": mismatches(read_record(cell.dir), got),
                    "added": added_hp(read_record(cell.dir), got),
                    "date": now(),
                    "seconds": round(seconds, 1),
                }
                _write_log(log, harness, cpu_description(), checks, old_log.get("restamped", {}))
                print(
                    f"  {'identical' if not checks[cell.dir]['differs'] else checks[cell.dir]['differs']}"
                    f" ({seconds:.0f} s)",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    tiny_ok = all(not checks[c.dir]["differs"] for c in tiny_cells())
    restamped = dict(old_log.get("restamped", {}))
    status = 0
    for grid, rows in plan.items():
        in_grid = [checks[c.dir] for c, *_ in rows if c.dir in checks]
        ok = tiny_ok and bool(in_grid) and not any(c["differs"] for c in in_grid)
        proven = {
            f"{PROVE}{c.method}"
            for rows_ in plan.values()
            for c, *_ in rows_
            if c.dir in checks and not checks[c.dir]["differs"]
        }
        written, already, left = 0, 0, []
        for cell, record, planned, problems in rows:
            unproven = [p for p in problems if p not in proven]
            current = (record.get("identity") or {}).get("sha256") == planned["sha256"] and record["env"].get(
                "harness_sha256"
            ) == harness
            if current:
                already += 1
            elif unproven or not ok:
                left.append({"dir": cell.dir, "differs": unproven or ["golden check failed or not run"]})
            else:
                if dry_run:
                    written += 1
                elif restamp_record(Path(cell.dir) / "record.json", planned, harness):
                    written += 1
                else:
                    left.append({"dir": cell.dir, "differs": ["record text is not the harness's JSON layout"]})
        restamped[grid] = {
            "harness": harness,
            "checked": [c["dir"] for c in in_grid],
            "restamped_now": written,
            "current": written + already,
            "left_stale": left,
            "date": now(),
            "dry_run": dry_run,
        }
        print(
            f"{grid}: {'checked' if ok else 'NOT identical or not checked'}; {written} record(s) re-stamped"
            f"{' (dry run)' if dry_run else ''}, {already} already; {len(left)} left stale"
        )
        status |= bool(left)
    _write_log(log, harness, cpu_description(), checks, restamped)
    return status


def _write_log(log: Path, harness: str, cpu: str, checks: dict, restamped: dict) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "harness": harness,
        "cpu": cpu,
        "checks": sorted(checks.values(), key=lambda c: c["dir"]),
        "restamped": restamped,
    }
    log.write_text(json.dumps(payload, indent=2) + "\n")
    lines = [
        "# Re-stamp log",
        "",
        f"Harness `{harness[:12]}`, checked on {cpu} (`python -m bench restamp`; "
        "bench/tools/restamp.py says what is compared).",
        "",
        "| cell | check | result | s | date |",
        "|---|---|---|---|---|",
        *(f"| `{c['dir']}` | {c['kind']} | {_result(c)} | {c['seconds']} | {c['date']} |" for c in payload["checks"]),
        "",
        "| grid | re-stamped by the last run | records carrying today's identity | left stale |",
        "|---|---|---|---|",
        *(f"| {g} | {r['restamped_now']} | {r['current']} | {len(r['left_stale'])} |" for g, r in restamped.items()),
        "",
    ]
    log.with_suffix(".md").write_text("\n".join(lines))


def _result(check: dict) -> str:
    if check["differs"]:
        return "DIFFERS: " + ", ".join(check["differs"][:5])
    added = check.get("added")
    return "identical" + (f" (hp the harness added since, at its default: {', '.join(added)})" if added else "")
