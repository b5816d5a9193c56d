"""Command line: `peft-repro <command>` or `python -m bench <command>` (the same); see `--help`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bench.api.errors import BenchError


def parse_hp(pairs: list[str]) -> dict:
    hp = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise BenchError(f"--hp {pair!r} must look like key=value (e.g. --hp lr=1e-3)")
        hp[key.strip()] = value.strip()
    return hp


def parse_train_size(text: str) -> int | str:
    if text == "full":
        return text
    try:
        return int(text)
    except ValueError:
        raise BenchError(f"--train-size {text!r} must be a positive integer or 'full'") from None


def cmd_run_cell(args) -> None:
    from bench.harness.cell import CellConfig, run_cell
    from bench.harness.tasks import use_tasks_file

    use_tasks_file(args.tasks)

    config = CellConfig(
        task=args.task,
        model=args.model,
        method=args.method,
        train_size=parse_train_size(args.train_size),
        seed=args.seed,
        hp=parse_hp(args.hp),
        eval_limit=args.eval_limit,
        grid=args.grid,
        data_root=args.data_root,
        dev_limit=args.dev_limit,
        data_seed=args.data_seed,
        shifts=tuple(s for s in args.shifts.split(",") if s) if args.shifts is not None else None,
    )
    record = run_cell(config, Path(args.out), threads=args.threads)
    scores = {
        name: {k: round(v, 2) for k, v in m.items() if isinstance(v, float)} for name, m in record["metrics"].items()
    }
    print(f"{record['status']}: {args.out}/record.json {scores}")


def cmd_prepare_model(args) -> None:
    from bench.harness.models import prepare_model

    print(prepare_model(args.model))


def cmd_methods(args) -> None:
    from bench.harness.method import (
        CellContext,
        get_method,
        method_names,
        method_summary,
        resolve_hparams,
        total_parameters,
        trainable_parameters,
    )
    from bench.harness.tasks import get_task

    task = get_task(args.task)  # an unknown task is refused with or without --model
    if args.model:
        from bench.harness.models import architecture, get_model_spec, load_model

        spec = get_model_spec(args.model)
    for name in method_names():
        line = f"{name:16s} {method_summary(name)}"
        if args.model:
            method = get_method(name)
            try:
                hp = resolve_hparams(method, {})
                if spec.kind not in method.model_kinds:
                    raise BenchError(f"{spec.kind} models not supported")
                method.check_hparams(hp, task, spec.kind)
                method.check_architecture(hp, architecture(spec.architecture))
                model, tokenizer, _ = load_model(args.model, num_labels=len(task.verbalizer) or None, verify=False)
                total = total_parameters(model)
                ctx = CellContext(task=task, model_kind=spec.kind, tokenizer=tokenizer)
                trainable = trainable_parameters(method.apply(model, hp, ctx))
                line += f"\n{'':16s} trainable {trainable:,} = {100 * trainable / total:.4f}% of {total:,}"
            except BenchError as error:
                line += f"\n{'':16s} not applicable: {error}"
        print(line, flush=True)


def listing(what: str) -> list[str]:
    """One line per registered model, task, grid or method: its name and a short description."""

    def first_line(text) -> str:
        return " ".join(str(text or "").split())[:100]

    if what == "models":
        from bench.harness.models import get_model_spec, model_names

        specs = [get_model_spec(n) for n in model_names()]
        return [
            f"{s.name:24s} {s.kind:10s} {s.source:6s} {s.architecture or '':10s} {first_line(s.description)}"
            for s in specs
        ]
    if what == "tasks":
        from bench.harness.tasks import get_task, task_names

        return [f"{n:24s} {get_task(n).kind:15s} metrics: {', '.join(get_task(n).metrics)}" for n in task_names()]
    if what == "grids":
        from bench.grid.plan import grid_names, load_grid_file

        return [f"{n:24s} {first_line(load_grid_file(n)[1].get('description'))}" for n in grid_names()]
    from bench.harness.method import method_names, method_summary

    return [f"{n:24s} {first_line(method_summary(n))}" for n in method_names()]


def cmd_list(args) -> None:
    print("\n".join(listing(args.what)))


def cmd_report(args) -> None:
    from bench.report.write import write_report

    paths = write_report(args.grid)  # the end of a run: where the files went, then the verdicts (verdicts.md)
    print(f"wrote {len(paths)} files: {', '.join(sorted({str(p.parent if p.parent.name else p) for p in paths}))}")
    print(next(p for p in paths if p.name == "verdicts.md").read_text(), end="")


def cmd_power(args) -> None:
    from bench.report.write import power_report

    print(power_report(args.grid, args.claim))


def cmd_restamp(args) -> None:
    from bench.tools.restamp import main as restamp_main

    status = restamp_main(
        args.grids, args.against, args.check_all or [], Path(args.log), args.dry_run, args.logged_only
    )
    if status:
        sys.exit(status)


def cmd_cells(args) -> None:
    from bench.grid.plan import grid_cells

    for cell in grid_cells(args.grid):
        print(f"{cell.dir}\t{cell.cli_args()}")


def cmd_benchmarks(args) -> None:
    if args.gpu:
        import torch

        from bench.tools.benchmarks_gpu import checks_pass, default_output, measure

        out = Path(args.out) if args.out else default_output()
        data = measure(out, quick=not torch.cuda.is_available())
        print(f"{out.with_suffix('.md')}\n{out}")
        if not checks_pass(data):
            sys.exit(1)  # a correctness check failed (speed never fails)
        return
    from bench.tools.benchmarks import run_benchmarks

    status = run_benchmarks(
        quick=args.quick, threads=args.threads, out=Path(args.out) if args.out else None, report_only=args.report_only
    )
    if status:
        sys.exit(status)  # pytest's status: a correctness check failed (speed never fails)


def cmd_lock(args) -> None:
    from bench.harness.lock import LOCK, write_lock

    moved = write_lock(upgrade=args.upgrade)
    for name, (old, new) in moved.items():
        print(f"  {name}: {old} -> {new}")
    print(f"{os.path.relpath(LOCK)}: {len(moved)} pin(s) changed")


def cmd_serve_mixed(args) -> None:
    from bench.tools.serve import main as serve_main

    status = serve_main(args.serve_args)
    if status:
        sys.exit(status)


def cmd_compat(args) -> None:
    from bench.harness.lock import compat

    status = compat(args.pytest_args)
    if status:
        sys.exit(status)


def console() -> int:
    """The `peft-repro` console script (pyproject.toml [project.scripts])."""
    return main(prog="peft-repro")


def main(argv=None, prog: str = "python -m bench") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run-cell", help="train and evaluate one cell, write DIR/record.json")
    run.add_argument("--task", required=True, help="a task of config/tasks.yaml or --tasks (`list tasks`)")
    run.add_argument("--model", required=True, help="a model of config/models.yaml (`list models`)")
    run.add_argument("--method", required=True, help="a method of methods/ (`list methods`)")
    run.add_argument("--train-size", required=True, help="integer or 'full'")
    run.add_argument("--seed", type=int, default=0, help="seeds init and batch order (and the training subsample)")
    run.add_argument(
        "--data-seed",
        type=int,
        default=None,
        help="seed of the training subsample when it differs from --seed (default: --seed)",
    )
    run.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="hyperparameter override")
    run.add_argument("--eval-limit", type=int, default=None, help="examples per eval set (default: all)")
    run.add_argument(
        "--dev-limit",
        type=int,
        default=None,
        help="hold this many training examples out as eval set `dev` (default: none)",
    )
    run.add_argument("--shifts", default=None, help="comma list of shifted eval sets (default: all of the task's)")
    run.add_argument("--grid", default=None, help="grid name, recorded only")
    run.add_argument(
        "--data-root", default=None, help="folder with SHA256SUMS (default: $PEFT_REPRO_DATA or ../shared/data)"
    )
    run.add_argument(
        "--tasks",
        default=None,
        metavar="FILE",
        help="your tasks file, merged over config/tasks.yaml (default: $PEFT_REPRO_TASKS)",
    )
    run.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    run.add_argument("--out", required=True, help="cell directory")
    run.set_defaults(func=cmd_run_cell)

    prep = sub.add_parser("prepare-model", help="verify and convert a registered model once (cached)")
    prep.add_argument("model", help="a model of config/models.yaml (`list models`)")
    prep.set_defaults(func=cmd_prepare_model)

    methods = sub.add_parser("methods", help="list methods; with --model, their trainable parameters")
    methods.add_argument("--model", default=None, help="count each method's trainable parameters on this model")
    methods.add_argument("--task", default="sst2", help="task used to build the model head/verbalizer")
    methods.set_defaults(func=cmd_methods)

    report = sub.add_parser(
        "report", help="aggregate a grid's records into results/<grid>/summary.csv and reports/<grid>/"
    )
    report.add_argument("grid", help="a grid of config/grids/ (`list grids`)")
    report.set_defaults(func=cmd_report)

    power = sub.add_parser(
        "power",
        help="seeds × eval examples that would decide each claim with 80%% power, and "
        "their cost (cell-hours here, GPU-hours requested)",
    )
    power.add_argument("grid", help="a grid whose records give the variance components (e.g. study)")
    power.add_argument("claim", nargs="?", default=None, help="one claim id (default: every claim)")
    power.set_defaults(func=cmd_power)

    restamp = sub.add_parser(
        "restamp",
        help="prove a harness change result-neutral on golden cells, then carry the "
        "grids' records over to today's harness fingerprint "
        "(bench/tools/restamp.py)",
    )
    restamp.add_argument("grids", nargs="+", help="grids whose records to re-stamp (`list grids`)")
    restamp.add_argument(
        "--against", default="HEAD", help="git commit of the harness the records were made with (default: HEAD)"
    )
    restamp.add_argument(
        "--check-all",
        action="append",
        metavar="GRID",
        help="rerun every record of GRID, not only its cheapest (repeatable)",
    )
    restamp.add_argument("--log", default="reports/identity/restamp.json", help="what was checked and written")
    restamp.add_argument("--dry-run", action="store_true", help="check, and say what would be written")
    restamp.add_argument(
        "--logged-only", action="store_true", help="run no golden cell: re-stamp what the checks already in --log prove"
    )
    restamp.set_defaults(func=cmd_restamp)

    cells = sub.add_parser("cells", help="list a grid's cells and their run-cell arguments")
    cells.add_argument("grid", help="a grid of config/grids/ or a grid file's path (`list grids`)")
    cells.set_defaults(func=cmd_cells)

    benchmarks = sub.add_parser(
        "benchmarks",
        help="benchmark our own machinery against baselines (pytest-benchmark); writes reports/benchmarks.md + .json",
    )
    mode = benchmarks.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="tiny models, fewer rounds (CI; under 2 minutes); writes .benchmarks/quick.md + .json",
    )
    mode.add_argument("--full", action="store_false", dest="quick", help="SmolLM2-135M (the default)")
    mode.add_argument(
        "--gpu",
        action="store_true",
        help="the GPU check (bench/tools/benchmarks_gpu.py): random-initialised SmolLM2-135M / Qwen2.5-0.5B shapes, "
        "≤ 8 minutes on an H100; writes reports/benchmarks-gpu.md + .json; without CUDA a quick mode on tiny shapes "
        "(.benchmarks/gpu-quick.*)",
    )
    benchmarks.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    benchmarks.add_argument("--out", default=None, help="JSON path (the report goes beside it, .md)")
    benchmarks.add_argument("--report-only", action="store_true", help="only re-render the .md from the existing JSON")
    benchmarks.set_defaults(func=cmd_benchmarks)

    lock = sub.add_parser("lock", help="regenerate config/requirements.lock (every dependency pinned with sha256)")
    lock.add_argument(
        "--upgrade",
        action="store_true",
        help="move every pin to the newest version pyproject.toml "
        "allows (default: keep pins, resolve only what changed)",
    )
    lock.set_defaults(func=cmd_lock)

    compat = sub.add_parser(
        "compat",
        help="run the tests in a throwaway venv with the newest versions pyproject.toml "
        "allows (finds the next upstream break; not part of CI)",
    )
    compat.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest (e.g. -x -m 'not slow')")
    compat.set_defaults(func=cmd_compat)

    serve = sub.add_parser(
        "serve-mixed",
        help="one frozen base + several cells' deltas scoring mixed-task batches, "
        "checked against each cell's own scores (bench/tools/serve.py; --help "
        "there)",
    )
    serve.add_argument("serve_args", nargs=argparse.REMAINDER, help="cell folders, --limit N, --batch-size N")
    serve.set_defaults(func=cmd_serve_mixed)

    listed = sub.add_parser("list", help="the registered models, tasks, grids or methods, one line each")
    listed.add_argument("what", choices=("models", "tasks", "grids", "methods"), help="which registry to list")
    listed.set_defaults(func=cmd_list)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
