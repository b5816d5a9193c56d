"""The report from synthetic records (no training): aggregation, missing/diverged/stale cells, tables only
with their data, claim verdicts (holds / fails / not run), plots. Records copy the structure written by
bench.harness.cell.run_cell; each test works in its own tmp dir (results/ and reports/ land there)."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest
import yaml

import bench.report.write as report
from bench.api.errors import BenchError
from bench.cli import main
from bench.grid.plan import current_method_sha256, current_model_fingerprint, grid_cells, planned_identity
from bench.harness import lock
from bench.harness.cell import OUTPUTS, harness_hash, write_outputs_atomic
from bench.harness.identity import identity

SIZES = {"smollm2-135m": 134_515_008, "smollm2-360m": 361_821_120}
TRAINABLE = {
    "full_ft": lambda total: total,
    "lora": lambda total: total * 0.0034,
    "prompt_tuning": lambda _: 11_520,
    "prompt_ensemble": lambda _: 57_600,
    "prefix_tuning": lambda _: 1_000_000,
}
PNG = b"\x89PNG\r\n\x1a\n"
REPO = Path(__file__).resolve().parent.parent


def write_grid(tmp_path, name="g", **data) -> str:
    data = {
        "models": ["smollm2-135m"],
        "methods": {"full_ft": {"lr": 2e-5}, "lora": {"lr": 1e-3}},
        "tasks": {"sst2": {"shifts": ["imdb"], "eval_limit": 100}},
        "train_sizes": [50],
        "seeds": [0],
        **data,
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def example_outputs(scores: dict, n: int = 100) -> dict:
    """Per-example outputs that agree with classification scores: example i is right when i < accuracy (so two
    systems' right answers overlap as far as they can); an ensemble's prompts all score its average. Eval sets
    with generation metrics only get none (their records stand for older ones without outputs)."""
    out = {}
    for eval_set, metrics in scores.items():
        if "accuracy" in metrics:

            def answer(i, accuracy):
                return i % 2 if i < round(accuracy * n / 100) else 1 - i % 2

            out[eval_set] = [
                {
                    "id": f"{eval_set}-{i}",
                    "gold": i % 2,
                    "pred": answer(i, metrics["accuracy"]),
                    "logprobs": [-0.5, -1.0],
                    **(
                        {"preds": [answer(i, metrics["accuracy_avg_single"])] * 3}
                        if "accuracy_avg_single" in metrics
                        else {}
                    ),
                }
                for i in range(n)
            ]
    return out


def write_record(
    cell,
    scores: dict,
    *,
    hp=None,
    status="ok",
    harness=None,
    flops=None,
    peak=1.9e9,
    analysis=None,
    model_sha256=None,
    outputs=True,
):
    """A record.json as run_cell writes it, from today's harness, method files, converted model and lock unless
    told; scores: {eval_set: {metric: value}}; outputs: with per-example outputs (example_outputs) beside it."""
    total = SIZES.get(cell.model, 134_515_008)
    trainable = int(TRAINABLE.get(cell.method, lambda t: 10_000)(total))
    hp = {
        "lr": 1e-3,
        "steps": 20,
        "batch_size": 8,
        "max_len": 64,
        "eval_batch_size": 16,
        "num_beams": 1,
        **cell.hp,
        **(hp or {}),
    }
    record = {
        "schema": 1,
        "config": {
            "task": cell.task,
            "model": cell.model,
            "method": cell.method,
            "train_size": cell.train_size,
            "seed": cell.seed,
            "hp": hp,
            "eval_limit": cell.eval_limit,
            "shifts": list(cell.shifts or []),
            "grid": cell.grid,
            "data_root": None,
            "hp_overrides": {k: str(v) for k, v in cell.hp.items()},
        },
        "status": status,
        "diverged_at_step": 7 if status == "diverged" else None,
        "metrics": {} if status != "ok" else {e: {**m, "n": 100} for e, m in scores.items()},
        "train": {"steps": 20, "losses": [2.1, 1.4, 0.9]},
        "cost": {
            "trainable_params": trainable,  # prefix tuning trains an MLP, saves only its output (the delta)
            "delta_params": trainable // (4 if cell.method == "prefix_tuning" else 1),
            "total_params": total + (0 if cell.method == "full_ft" else trainable),
            "delta_bytes": 4 * trainable + 1000,
            "peak_mem_bytes": int(peak),
            "peak_mem_kind": "process_max_rss",
            "train_s": 50.0,
            "train_tokens_per_s": 52.0,
            "eval_s": 60.0,
            "eval_tokens_per_s": 230.0,
            **({"flops_per_step": flops} if flops else {}),
        },
        "env": {
            "python": "3.11.7",
            "torch": "2.13.0+cpu",
            "transformers": "5.23.0",
            "peft": "0.21.2",
            "git_commit": "df8cd27",
            "harness_sha256": harness or harness_hash(),
            "device": "cpu",
            "cpu": "x86_64",
            "threads": 1,
            "host": "vm",
            **lock.environment(),
        },
        "inputs": {
            "data": {"sst2/dev.tsv": "0" * 64},
            "model": {"name": cell.model, "sha256": model_sha256 or current_model_fingerprint(cell.model) or "1" * 64},
            "method_sha256": current_method_sha256(cell.method),
        },
        **({"analysis": analysis} if analysis else {}),
    }
    grid = Path(f"{cell.grid}.yaml")  # write_grid's file, in the test's folder
    cells = {c.dir: c for c in grid_cells(str(grid))} if grid.exists() else {cell.dir: cell}
    spec = planned_identity(cell, cells)["spec"]  # the cell as planned today
    model = {**spec["model"], "weights": record["inputs"]["model"]["sha256"]}
    record["identity"] = identity({**spec, "model": model, "harness": record["env"]["harness_sha256"]})
    path = Path(cell.dir) / "record.json"
    if outputs and status == "ok":
        record["outputs"] = {
            "file": OUTPUTS,
            "sha256": write_outputs_atomic(path.parent / OUTPUTS, example_outputs(scores)),
        }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2))


def cells_of(grid, **match):
    return [c for c in grid_cells(grid) if all(str(getattr(c, k)) == str(v) for k, v in match.items())]


def plain(readme: str) -> str:
    """The report without its intervals: for asserting means and seed counts."""
    return re.sub(r" \[[^\]]*\]", "", readme)


def read(tmp_path, grid="g"):
    rep = tmp_path / "reports" / grid
    return (
        (rep / "README.md").read_text(),
        pd.read_csv(tmp_path / "results" / grid / "summary.csv"),
        (rep / "claims.md").read_text(),
    )


@pytest.fixture()
def no_plots(monkeypatch):
    """Tests that do not look at plots skip drawing them (about a second each on a loaded machine)."""
    import bench.report.plots

    monkeypatch.setattr(bench.report.plots, "make_plots", lambda summary, out: [])


def verdicts(claims_md: str) -> dict:
    rows = [line.split("|") for line in claims_md.splitlines() if line.startswith("| [")]
    return {r[1].strip().split("]")[0][1:]: r[3].strip().strip("*") for r in rows}


def test_records_without_outputs_get_intervals_over_seeds_and_cells_without_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, seeds=[0, 1, 2], methods={"full_ft": None, "lora": None, "ia3": None})
    for cell, acc, shifted in zip(cells_of(grid, method="lora"), [80, 82, 84], [70, 71, 75]):
        write_record(cell, {"sst2": {"accuracy": acc}, "imdb": {"accuracy": shifted}}, outputs=False)
    ft = cells_of(grid, method="full_ft")
    write_record(ft[0], {"sst2": {"accuracy": 85.0}, "imdb": {"accuracy": 66.0}}, outputs=False)
    write_record(ft[1], {}, status="diverged")
    log = tmp_path / "results/g/logs/sst2/smollm2-135m/full_ft/n50_s2.log"
    log.parent.mkdir(parents=True)
    log.write_text("loading\nerror: out of memory: use a smaller batch\n")
    assert main(["report", grid]) == 0
    readme, summary, claims = read(tmp_path)
    lora = summary[(summary.method == "lora") & (summary.eval_set == "sst2")].iloc[0]
    assert (lora["mean"], lora["std"], lora["seeds"]) == (82.0, 2.0, 3)
    imdb = summary[(summary.method == "lora") & (summary.eval_set == "imdb")].iloc[0]
    assert imdb["mean"] == 72.0 and imdb["std"] == pytest.approx(2.6458, abs=1e-4)
    assert summary[(summary.method == "full_ft") & (summary.eval_set == "sst2")]["seeds"].tolist() == [1]
    # no per-example outputs: t over the 3 seeds only (2 df: wider than their range); none for one seed
    half = 4.302653 * 2.0 / 3**0.5  # t(0.975; 2) · std / √3
    assert lora["interval"].startswith("t over seeds") and lora["ci_low"] == pytest.approx(82 - half, abs=1e-3)
    assert f"82.0 [{lora['ci_low']:.1f}, {lora['ci_high']:.1f}] (n=3)" in readme and "85.0 (n=1)" in readme
    assert summary[(summary.method == "full_ft") & (summary.eval_set == "sst2")]["ci_low"].isna().all()
    cells = pd.read_csv(tmp_path / "results/g/cells.csv")
    assert cells.status.value_counts().to_dict() == {"ok": 4, "not run": 3, "diverged": 1, "failed": 1}
    assert "results/g/sst2/smollm2-135m/full_ft/n50/s1`: diverged" in readme
    assert "full_ft/n50/s2`: failed" in readme and "error: out of memory: use a smaller batch" in readme
    assert readme.count("`: not run") == 3 and "ia3/n50/s0" in readme
    assert "## Stale cells" not in readme and ") †" not in readme
    assert "selected_on_dev" not in summary.columns and "Learning rate selected" not in readme  # no dev split
    # one model, one train size, no generation task: only the tables and plots the data supports
    assert "Domain shift: sst2" in readme
    interval = f"[{imdb['ci_low']:.1f}, {imdb['ci_high']:.1f}]"
    assert f"| smollm2-135m | 50 | imdb | 66.0 (n=1) | 72.0 {interval} (n=3) | +6.0 |" in readme
    for absent in ("Table-to-text", "Low-data", "Ablation", "Prompt ensembling"):
        assert absent not in readme
    plots = sorted(p.name for p in (tmp_path / "reports/g/plots").iterdir() if not p.name.startswith("claim-"))
    assert plots == ["pareto-sst2.png", "shift-sst2.png"] or plots == [
        "forest-claims.png",
        "pareto-sst2.png",
        "shift-sst2.png",
    ]
    assert verdicts(claims)["lora_e2e_not_inferior_to_full_ft"] == "not run"


def _neighbours(rows: list[list[str]], label_rows: int, task_rows: int) -> dict:
    return {
        "prompt_neighbours": {
            "k": len(rows[0]),
            "tokens": rows,
            "cosine": [[0.5, 0.25][: len(r)] for r in rows],
            "label_words": ["negative", "positive"],
            "task_words": ["review", "sentiment"],
            "rows_with_label_word": label_rows,
            "rows_with_task_word": task_rows,
        }
    }


def test_soft_prompt_interpretability_tables(tmp_path, monkeypatch, no_plots):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, methods={"prompt_tuning": None, "lora": None}, seeds=[0, 1])
    scores = {"sst2": {"accuracy": 80.0}, "imdb": {"accuracy": 70.0}}
    rows = [[" positive", "good"], [" Review", "|"], ["\n", "x\u200b"], [" a", " b"]]
    for cell in cells_of(grid, method="prompt_tuning"):
        write_record(cell, scores, analysis=_neighbours(rows, label_rows=1 + cell.seed, task_rows=1))
    for cell in cells_of(grid, method="lora"):
        write_record(cell, scores)
    report.write_report(grid)
    readme = plain(read(tmp_path)[0])
    section = readme.split("### Soft-prompt interpretability")[1]
    assert "| sst2 | smollm2-135m | prompt_tuning | 50 | 2 | 4 | 1.5 (38%) | 1 (25%) | 0.500 |" in section
    assert "lora" not in section.split("### Nearest")[0]  # only cells whose records hold the analysis
    assert "label word (the verbalizer: negative, positive)" in section and "review, sentiment" in section
    listing = section.split("### Nearest vocabulary tokens")[1]
    assert "| sst2 | smollm2-135m | prompt_tuning | 50 | 0 | 0 | ▁positive · good | 0.500 |" in listing
    # readable: no pipes, whitespace-only and unprintable tokens as their repr
    assert "| 1 | ▁Review · ¦ | 0.500 |" in listing and "| 2 | '\\n' · 'x\\u200b' |" in listing
    assert listing.count("| prompt_tuning |") == 4  # one seed listed
    tex = (tmp_path / "reports/g/tables.tex").read_text()
    assert "Soft-prompt interpretability" in tex and r"▁Review · ¦" in tex


def test_stale_cells_marked_with_the_rerun_command(tmp_path, monkeypatch, no_plots):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path)
    old, new = cells_of(grid, method="lora")[0], cells_of(grid, method="full_ft")[0]
    write_record(old, {"sst2": {"accuracy": 80.0}, "imdb": {"accuracy": 70.0}}, harness="0" * 64)
    write_record(new, {"sst2": {"accuracy": 81.0}, "imdb": {"accuracy": 60.0}})
    report.write_report(grid)
    readme, summary, _ = read(tmp_path)
    readme = plain(readme)
    assert summary.groupby("method")["stale"].all().to_dict() == {"full_ft": False, "lora": True}
    assert "80.0 (n=1) †" in readme and "81.0 (n=1) |" in readme
    stale = readme.split("## Stale cells")[1]
    assert f"rm {old.dir}/record.json" in stale and new.dir not in stale
    assert f"snakemake --cores all --config grid={grid}" in stale


def test_records_of_another_converted_model_are_stale_with_the_rerun_command(tmp_path, monkeypatch, no_plots):
    monkeypatch.chdir(tmp_path)
    models = tmp_path / "models"
    monkeypatch.setenv("PEFT_REPRO_MODELS", str(models))  # empty: whatever the checkout has converted
    grid = write_grid(tmp_path)
    old, new = cells_of(grid, method="lora")[0], cells_of(grid, method="full_ft")[0]
    write_record(old, {"sst2": {"accuracy": 80.0}, "imdb": {"accuracy": 70.0}}, model_sha256="1" * 64)
    write_record(new, {"sst2": {"accuracy": 81.0}, "imdb": {"accuracy": 60.0}})
    report.write_report(grid)
    assert "## Stale cells" not in read(tmp_path)[0]  # the model is not converted here: nothing to compare with

    (models / "smollm2-135m").mkdir(parents=True)
    (models / "smollm2-135m/manifest.json").write_text(json.dumps({"files": {"model.safetensors": "3" * 64}}))
    write_record(new, {"sst2": {"accuracy": 81.0}, "imdb": {"accuracy": 60.0}})  # made from this conversion
    report.write_report(grid)
    readme, summary, _ = read(tmp_path)
    assert summary.groupby("method")["stale"].all().to_dict() == {"full_ft": False, "lora": True}
    stale = readme.split("## Stale cells")[1]
    assert f"| `{old.dir}` | model.weights |" in stale and new.dir not in stale
    assert f"rm {old.dir}/record.json" in stale and f"snakemake --cores all --config grid={grid}" in stale


def _sweep_grid(tmp_path, lora_bleu=(55.0, 60.0), ft_bleu=(50.0, 52.0), prompt_gap=(20.0, 5.0), pt_ood=+4.0):
    """Two models x {full_ft, lora, prompt_tuning} x {sst2 (+imdb, amazon_books), e2e} x n {50, 200}."""
    grid = write_grid(
        tmp_path,
        models=["smollm2-135m", "smollm2-360m"],
        methods={"full_ft": None, "lora": None, "prompt_tuning": None},
        tasks={"sst2": {"shifts": ["imdb", "amazon_books"]}, "e2e": None},
        train_sizes=[50, 200],
    )
    for cell in grid_cells(grid):
        big, many = cell.model == "smollm2-360m", cell.train_size == 200
        if cell.task == "e2e":
            bleu = {"full_ft": ft_bleu[big], "lora": lora_bleu[big], "prompt_tuning": 40.0}[cell.method] + 2 * many
            scores = {"bleu": bleu, "rouge_l": bleu + 10}
            if cell.method == "full_ft":
                scores["nist"] = 6.5
            write_record(cell, {"e2e": scores}, flops=3.2e12)
        else:
            ft = 80.0 + 5 * big + 2 * many
            acc = {"full_ft": ft, "lora": ft - 1, "prompt_tuning": ft - prompt_gap[big]}[cell.method]
            ood = {"full_ft": 0.0, "lora": 1.0, "prompt_tuning": pt_ood}[cell.method]
            write_record(
                cell,
                {"sst2": {"accuracy": acc}, "imdb": {"accuracy": 60.0 + ood}, "amazon_books": {"accuracy": 62.0 + ood}},
                peak=3.2e9 if cell.method == "full_ft" else 2.0e9,
            )
    return grid


def test_tables_plots_and_claims_on_a_two_model_grid(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = _sweep_grid(tmp_path)
    paths = report.write_report(grid)
    readme, summary, claims = read(tmp_path)
    readme = plain(readme)
    assert len(summary) == 2 * 3 * 2 * (3 + 2) + 2 * 2  # models x methods x sizes x (3 sst2 sets + bleu, rouge_l)
    #                                                      + nist (full_ft only)
    e2e = readme.split("### Table-to-text: e2e")[1].split("###")[0]
    assert "| model | method | train size | trainable params | trainable % | BLEU | NIST | ROUGE-L |" in e2e
    assert "| smollm2-135m | full_ft | 50 | 135M | 100.000 | 50.0 (n=1) | 6.50 (n=1) | 60.0 (n=1) |" in e2e
    assert "| smollm2-360m | lora | 200 | 1.23M | 0.340 | 62.0 (n=1) | – | 72.0 (n=1) |" in e2e
    size = readme.split("### Classification accuracy by model size")[1].split("###")[0]
    assert "| sst2 | prompt_tuning | 200 | 62.0 (n=1) | 82.0 (n=1) |" in size
    assert "smollm2-135m (135M) | smollm2-360m (362M)" in size
    shift = readme.split("### Domain shift: sst2")[1].split("###")[0]
    assert "| Δ lora | Δ prompt_tuning |" in shift
    assert "| smollm2-360m | 200 | amazon_books | 62.0 (n=1) | 63.0 (n=1) | 66.0 (n=1) | +1.0 | +4.0 |" in shift
    low = readme.split("### Low-data: sst2")[1].split("###")[0]
    assert "| model | method | n=50 | n=200 |" in low and "| smollm2-135m | lora | 79.0 (n=1) | 81.0 (n=1) |" in low
    cost = readme.split("### Cost")[1]
    assert "FLOPs/step" in cost and "| e2e | smollm2-135m | full_ft | 135M | 100.000 | 135M |" in cost
    assert "Ablation" not in readme and "Prompt ensembling" not in readme
    tex = (tmp_path / "reports/g/tables.tex").read_text()
    assert tex.count(r"\begin{tabular}") == readme.count("\n### ") and r"prompt\_tuning" in tex and "$\\pm$" not in tex
    plots = {p.name for p in paths if p.suffix == ".png"}
    assert plots == {f"{kind}-{task}.png" for kind in ("size", "trainsize", "pareto") for task in ("sst2", "e2e")} | {
        "shift-sst2.png",
        "forest-claims.png",
    } | {
        f"claim-{r}.png"
        for r in (  # the claims with an interval
            "prompt_tuning_gap_shrinks_with_scale",
            "prompt_tuning_robust_to_domain_shift",
        )
    }
    for name in plots:
        assert (tmp_path / "reports/g/plots" / name).read_bytes()[:8] == PNG
    v = verdicts(claims)
    assert v["lora_e2e_not_inferior_to_full_ft"] == "inconclusive"  # BLEU records without outputs, one seed
    assert v["prompt_tuning_gap_shrinks_with_scale"] == "reproduced"
    assert v["prompt_tuning_robust_to_domain_shift"] == "reproduced"
    for absent in (
        "prefix_unseen_webnlg",
        "prefix_low_data",
        "class_label_init_best_at_small_size",
        "prompt_length_plateaus_after_20",
        "prompt_ensemble_not_inferior_to_average",
    ):
        assert v[absent] == "not run", absent
    assert "the grid has no cells with task=webnlg" in claims
    assert "200: gap by size smollm2-135m (135M) +20.0, smollm2-360m (362M) +5.0" in claims
    assert "200: gap smollm2-135m − gap smollm2-360m: +20.0 − +5.0: Δ +15.00 [" in claims


def _claims(grid):
    cells, frame, hp_cols = report.load(grid)
    summary = report.summarize(frame, hp_cols)
    claims = yaml.safe_load(report.CLAIMS.read_text())["claims"]
    return {r["id"]: r for r in report.evaluate_claims(summary, cells, hp_cols, claims)}


def test_claims_that_fail_are_contradicted(tmp_path, monkeypatch):
    """The gap grows with size, and prompt tuning drops 15-30 points more than full FT out of domain."""
    monkeypatch.chdir(tmp_path)
    grid = _sweep_grid(tmp_path, lora_bleu=(55.0, 49.0), prompt_gap=(5.0, 20.0), pt_ood=-35.0)
    result = _claims(grid)
    assert result["lora_e2e_not_inferior_to_full_ft"]["verdict"] == "inconclusive"
    lines = result["lora_e2e_not_inferior_to_full_ft"]["ours"]
    assert any("lora 51.0 (n=1) vs full_ft 54.0 (n=1) → **inconclusive**: no interval" in line for line in lines)
    assert result["prompt_tuning_gap_shrinks_with_scale"]["verdict"] == "contradicted"
    assert result["prompt_tuning_robust_to_domain_shift"]["verdict"] == "contradicted"


def test_compare_needs_the_parameter_budget_and_names_missing_cells(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path, tasks={"sst2": None}, train_sizes=[50, 200])
    check = {
        "kind": "compare",
        "where": {"task": "sst2"},
        "left": {"method": "lora"},
        "op": ">=",
        "right": {"method": "full_ft"},
        "trainable_pct_below": 0.1,
        "hypothesis": "superiority",
        "margin": 0,
    }
    for cell in grid_cells(grid):
        if cell.train_size == 50:
            write_record(cell, {"sst2": {"accuracy": 90.0 if cell.method == "lora" else 50.0}})
    cells, frame, hp_cols = report.load(grid)
    summary = report.summarize(frame, hp_cols)

    def claim(**changes):
        return report.evaluate_claims(
            summary, cells, hp_cols, [{"id": "c", "source": "s", "statement": "t", "check": {**check, **changes}}]
        )[0]

    budget = claim()
    assert budget["verdict"] == "contradicted" and "left trainable % (max): 0.340 (claim: < 0.1)" in budget["ours"]
    assert claim(trainable_pct_below=1)["verdict"] == "reproduced"  # LoRA at 0.34% < 1%, 40 points better
    absent = claim(where={"task": "sst2", "train_size": 200})
    assert absent["verdict"] == "not run" and absent["ours"] == []
    assert "results/g/sst2/smollm2-135m/lora/n200/s0 (not run)" in absent["missing"][0]
    with pytest.raises(BenchError, match="declares no margin: add `margin: <units>`"):
        report.evaluate_claims(
            summary,
            cells,
            hp_cols,
            [{"id": "c", "source": "s", "statement": "t", "check": {k: v for k, v in check.items() if k != "margin"}}],
        )


def test_prompt_ablations_and_ensembles(tmp_path, monkeypatch, no_plots):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(
        tmp_path,
        models=["smollm2-135m", "smollm2-360m"],
        tasks={"sst2": None},
        methods={
            "prompt_tuning": {"num_virtual_tokens": [1, 5, 20, 100], "init": "class_label"},  # a sweep: 4 variants
            "pt_init": {"method": "prompt_tuning", "num_virtual_tokens": 20, "init": ["vocab", "random"]},
            "prompt_ensemble": {"k": 5},
        },
    )
    by_len = {1: 50.0, 5: 60.0, 20: 70.0, 100: 70.0}
    by_init = {"class_label": 70.0, "vocab": 65.0, "random": 60.0}

    def write_all(ensemble):
        for cell in grid_cells(grid):
            if cell.method == "prompt_ensemble":
                write_record(
                    cell, {"sst2": {"accuracy": ensemble, "accuracy_avg_single": 70.0, "accuracy_best_single": 72.0}}
                )
            elif cell.model == "smollm2-135m":
                acc = by_len[cell.hp["num_virtual_tokens"]] + by_init[cell.hp["init"]] - 70.0
                write_record(cell, {"sst2": {"accuracy": acc}})
            else:
                write_record(cell, {"sst2": {"accuracy": 85.0}})

    write_all(ensemble=73.0)
    report.write_report(grid)
    readme, summary, claims = read(tmp_path)
    readme = plain(readme)
    assert {"num_virtual_tokens", "init"} <= set(summary.columns) and "k" not in summary.columns
    assert "pt_init-init=vocab" in set(summary.variant) and json.loads(summary.hp[0])["init"] == "class_label"
    ablation = readme.split("### Ablation: sst2")[1].split("###")[0]
    assert "| method | num_virtual_tokens | init | train size | smollm2-135m (135M) | smollm2-360m (362M) |" in ablation
    assert "| pt_init-init=random | 20 | random | 50 | 60.0 (n=1) | 85.0 (n=1) |" in ablation
    assert "| prompt_tuning-num_virtual_tokens=100 | 100 | class_label | 50 | 70.0 (n=1) | 85.0 (n=1) |" in ablation
    ens = readme.split("### Prompt ensembling")[1].split("###")[0]
    assert "| average prompt | best prompt | ensemble |" in ens and "| 70.0 (n=1) | 72.0 (n=1) | 73.0 (n=1) |" in ens
    v = verdicts(claims)
    assert v["class_label_init_best_at_small_size"] == "reproduced"
    assert "init=class_label 70.0 vs init=vocab 65.0: Δ +5.00 [" in claims  # two steps: a contradiction at α/2 each
    assert "init=vocab 65.0 vs init=random 60.0: Δ +5.00 [" in claims and "contradiction at α/2 each" in claims
    assert v["prompt_length_plateaus_after_20"] == "reproduced"
    assert "num_virtual_tokens=100 70.0 vs num_virtual_tokens=20 70.0: Δ +0.00 [+0.00, +0.00]" in claims
    assert v["prompt_ensemble_not_inferior_to_average"] == "reproduced"
    # one variant on both sides: the metric each side reads names it
    assert re.search(
        r"prompt_ensemble \(accuracy\) 73\.0 \[[^]]*\] \(n=1\) "
        r"vs prompt_ensemble \(accuracy_avg_single\) 70\.0 ",
        claims,
    )
    assert v["prompt_tuning_gap_shrinks_with_scale"] == "not run"

    by_len[100], by_init["random"] = 80.0, 75.0  # gains continue after 20 tokens; random beats vocab
    write_all(ensemble=60.0)  # and the ensemble falls below the average prompt
    result = _claims(grid)
    for claim in (
        "class_label_init_best_at_small_size",
        "prompt_length_plateaus_after_20",
        "prompt_ensemble_not_inferior_to_average",
    ):
        assert result[claim]["verdict"] == "contradicted", claim


def test_smallest_model_of_an_ablation_is_the_smallest_that_ran_it():
    """`model: smallest` in an ordering over `init`: a smaller model that ran one init only (another part of a
    grid of parts) does not hide the ablation run on a larger one."""
    rows = [("small", 10, "class_label")] + [("large", 100, init) for init in ("class_label", "vocab", "random")]
    S = pd.DataFrame(
        [
            {
                "model": m,
                "model_params": p,
                "primary": True,
                "in_domain": True,
                "method": "prompt_tuning",
                "hp": json.dumps({"init": init}),
            }
            for m, p, init in rows
        ]
    )
    assert set(report.select(S, {"model": "smallest"}).model) == {"small"}
    assert set(report.select(S, {"model": "smallest"}, by="init").model) == {"large"}
    assert set(report.select(S, {"model": "largest"}, by="init").model) == {"large"}
    assert set(report.select(S[S.model == "small"], {"model": "smallest"}, by="init").model) == {"small"}


def test_ordering_with_a_missing_value_is_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(
        tmp_path, methods={"prompt_tuning": {"num_virtual_tokens": 20, "init": ["class_label", "random"]}}
    )
    for cell in grid_cells(grid):
        write_record(cell, {"sst2": {"accuracy": 70.0}, "imdb": {"accuracy": 60.0}})
    result = _claims(grid)["class_label_init_best_at_small_size"]
    assert result["verdict"] == "not run"
    assert "needs init ∈ ['class_label', 'vocab', 'random'], has ['class_label', 'random']" in result["missing"][0]
    cells, frame, hp_cols = report.load(grid)
    summary = report.summarize(frame, hp_cols)
    assert hp_cols == ["init"]  # num_virtual_tokens is the same everywhere: no column, yet selectable
    assert len(report.select(summary, {"num_virtual_tokens": 20})) == 2
    assert report.select(summary, {"num_virtual_tokens": 100}).empty
    plateau = _claims(grid)["prompt_length_plateaus_after_20"]  # by a hyperparameter with one value here
    assert (
        plateau["verdict"] == "not run"
        and "needs num_virtual_tokens=20 and a larger value, has [20.0]" in plateau["missing"][0]
    )


def test_lr_selected_on_the_dev_split_not_on_test(tmp_path, monkeypatch, no_plots):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(
        tmp_path,
        seeds=[0, 1],
        tasks={"sst2": {"shifts": ["imdb"], "dev_limit": 100}},
        methods={
            "full_ft": {"lr": [1e-5, 1e-4]},
            "lora": {"lr": [1e-4, 1e-3, 1e-2]},
            "lora_r8": {"method": "lora", "r": 8, "lr": [1e-3, 1e-2]},
            "ia3": None,
        },
    )
    # (dev by seed, test): dev-best != test-best everywhere; lora lr=1e-2 has the best single dev seed (90), not mean
    scores = {
        "full_ft": {1e-5: ((80, 80), 81), 1e-4: ((70, 72), 85)},
        "lora": {1e-4: ((60, 60), 65), 1e-3: ((74, 76), 78), 1e-2: ((90, 50), 80)},
        "lora_r8": {1e-3: ((60, 62), 90), 1e-2: ((70, 70), 60)},
        "ia3": {None: ((99, 99), 50)},
    }
    for cell in grid_cells(grid):
        family = cell.label.split("-")[0]
        dev, test = scores[family][cell.hp.get("lr")]
        write_record(
            cell,
            {"dev": {"accuracy": dev[cell.seed]}, "sst2": {"accuracy": test}, "imdb": {"accuracy": test - 10}},
            hp={"r": cell.hp.get("r", 4)},
        )
    report.write_report(grid)
    readme, summary, _ = read(tmp_path)
    readme = plain(readme)
    table = readme.split("### Learning rate selected on the dev split: sst2 (accuracy)")[1].split("###")[0]
    assert (
        "| model | method | train size | lr (dev-selected) | dev | sst2 (in-domain test) | imdb | "
        "lr (best on test) | sst2 (best on test) |" in table
    )
    rows = {line.split(" | ")[1]: line for line in table.splitlines() if "smollm2" in line}
    assert rows == {  # method: dev-selected lr, its dev, test and shifted scores; best-on-test lr and its test score
        "full_ft": "| smollm2-135m | full_ft | 50 | 1e-05 | 80.0 (n=2) | 81.0 (n=2) | 71.0 (n=2) | 0.0001 | "
        "85.0 (n=2) |",
        "lora r=4": "| smollm2-135m | lora r=4 | 50 | 0.001 | 75.0 (n=2) | 78.0 (n=2) | 68.0 (n=2) | 0.01 | "
        "80.0 (n=2) |",
        "lora r=8": "| smollm2-135m | lora r=8 | 50 | 0.01 | 70.0 (n=2) | 60.0 (n=2) | 50.0 (n=2) | 0.001 | "
        "90.0 (n=2) |",
    }
    assert "ia3" not in table and "selected on the test set" in table  # no lr sweep, no row
    chosen = summary[summary["selected_on_dev"]]
    assert set(chosen["variant"]) == {"full_ft-lr=1e-05", "lora-lr=0.001", "lora_r8-lr=0.01"}
    assert len(chosen) == 3 * 3  # every row of a chosen variant: dev, sst2, imdb
    assert set(summary["eval_set"]) == {"dev", "sst2", "imdb"}  # dev stays in summary.csv ...
    shift = readme.split("### Domain shift: sst2")[1].split("###")[0]
    assert "| dev |" not in shift and "| imdb |" in shift  # ... but is no shift in the tables


def test_empty_grid_reports_every_cell_as_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = write_grid(tmp_path)
    report.write_report(grid)
    readme = (tmp_path / "reports/g/README.md").read_text()
    assert "2 cells: 2 not run" in readme and "(no results yet)" in readme
    assert set(verdicts((tmp_path / "reports/g/claims.md").read_text()).values()) == {"not run"}
    assert list((tmp_path / "reports/g/plots").iterdir()) == []


def test_snakemake_report_rule_and_html_report_offline(tmp_path, monkeypatch):
    """The report rule on synthetic records (never trains: only `report` is allowed to run), then
    `snakemake --report` packs tables and plots into one self-contained HTML file."""
    import os
    import shutil
    import subprocess
    import sys

    from bench.harness.tasks import data_root

    repo, project = Path(__file__).resolve().parent.parent, tmp_path / "project"
    for part in ("bench", "methods", "config", "Snakefile"):
        (shutil.copytree if (repo / part).is_dir() else shutil.copy2)(repo / part, project / part)
    (tmp_path / "models/tiny-llama").mkdir(parents=True)
    (tmp_path / "models/tiny-llama/manifest.json").write_text('{"files": {}}')  # the records are made from it
    monkeypatch.setenv("PEFT_REPRO_MODELS", str(tmp_path / "models"))
    grid = write_grid(
        project / "config/grids",
        "mini",
        models=["tiny-llama"],
        train_sizes=[8, 16],
        methods={"full_ft": None, "prompt_tuning": None},
    )  # a claim that runs: the domain-shift one
    env = {
        **os.environ,
        "PYTHONPATH": str(project),
        "PEFT_REPRO_MODELS": str(tmp_path / "models"),
        "PEFT_REPRO_DATA": str(data_root()),
    }
    cwd = os.getcwd()
    os.chdir(project)
    try:
        for i, cell in enumerate(grid_cells(grid)):
            write_record(cell, {"sst2": {"accuracy": 60.0 + i}, "imdb": {"accuracy": 50.0 + i}})
    finally:
        os.chdir(cwd)
    smk = [sys.executable, "-m", "snakemake", "--cores", "1", "--config", "grid=mini"]
    run = subprocess.run(
        smk + ["--allowed-rules", "report", "all"], cwd=project, env=env, capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert {p.name for p in (project / "reports/mini/plots").glob("*.png")} >= {
        "trainsize-sst2.png",
        "shift-sst2.png",
        "pareto-sst2.png",
    }
    html = subprocess.run(
        smk + ["--report", "reports/mini/report.html"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert html.returncode == 0, html.stderr[-2000:]
    page = (project / "reports/mini/report.html").read_text()
    for label in (
        "Tables",
        "Plots",
        "Claims",
        "README.html (all tables)",
        "claims.html (every claim in full)",
        "trainsize",
    ):
        assert label in page, label
    # it opens on the workflow description: the verdict table as HTML and the forest plot, not a bare rule graph
    assert "peft-repro: full fine-tuning vs parameter-efficient methods" in page
    verdicts = (project / "reports/mini/verdicts.html").read_text()
    assert "<table>" in verdicts and "<th>verdict</th>" in verdicts and "data:image/png;base64," in verdicts
    assert "Grid <code>mini</code>: 4 cells: 4 ok, 0 stale, 0 failed" in verdicts
    assert "<td>prompt_tuning_robust_to_domain_shift</td>" in verdicts
    description = page.split('<div class=\\"peft-repro-verdicts\\">', 1)[1]  # in the page's description
    assert "<th>verdict</th>" in description.split("</table>")[0]
    assert "<td>prompt_tuning_robust_to_domain_shift</td>" in description.split("</table>")[0]
    assert "data:image/png;base64," in description.split("</div>")[0]  # the forest plot, embedded
    # every output shown has a caption (config/report/*.rst)
    assert "The end-of-run summary" in page and "Every paper claim" in page and "Pareto front" in page


def test_a_grid_of_parts_reports_all_parts_and_pairs_claims_within_a_part(tmp_path, monkeypatch, no_plots):
    """Part a: prompt tuning 2 points below full FT out of domain; part b: the same labels on the same task, model
    and train size, 10 points below. The study's report keeps them apart (labels name the part where two parts share
    one) and pairs each claim's cells within a part, never a's prompt with b's full FT."""
    monkeypatch.chdir(tmp_path)
    methods = {"full_ft": {"lr": 2e-5}, "prompt_tuning": {"lr": 3e-2}}
    a, b = (write_grid(tmp_path, name, methods=methods, seeds=[0, 1]) for name in ("a", "b"))
    for grid, gap in ((a, 2.0), (b, 10.0)):
        for cell in grid_cells(grid):
            imdb = 80.0 - (gap if cell.method == "prompt_tuning" else 0.0) + cell.seed
            write_record(cell, {"sst2": {"accuracy": 85.0}, "imdb": {"accuracy": imdb}})
    study, top = tmp_path / "study.yaml", tmp_path / "README.md"
    top.write_text(f"# Suite\n\n{report.HEADLINE_START}\nold table\n{report.HEADLINE_END}\n\n## Next\n")
    study.write_text(yaml.safe_dump({"description": "a and b", "parts": [a, b], "readme": str(top)}))
    report.write_report(str(study))
    readme, summary, claims = read(tmp_path, "study")
    assert set(summary["grid"]) == {"a", "b"} and len(summary) == 2 * 2 * 2  # parts x methods x eval sets
    assert {"full_ft [a]", "prompt_tuning [b]"} <= set(summary["variant"])
    widths = readme.split("### Interval widths")[1].split("###")[0]
    assert "| sst2 | imdb | accuracy | 4 | 2 | 100 |" in widths and "| sst2 | sst2 | accuracy | 4 | 2 | 100 |" in widths
    for part, gap in (("a", 2.0), ("b", 10.0)):  # a shift table per part, each method against the part's full FT
        shift = readme.split(f"### Domain shift: sst2 (accuracy), {part}\n")[1].split("###")[0]
        assert f"| Δ prompt_tuning [{part}] |" in shift and f"Δ = method − full_ft [{part}] (points)" in shift
        assert "| imdb | 80.5 [" in shift and f"| -{gap:.1f} [" in shift
    shift = claims.split("## prompt_tuning_robust_to_domain_shift\n")[1].split("\n## ")[0]
    pairs = re.findall(
        r"prompt_tuning \[(\w)\] 85\.0 → ([\d.]+) \([-+\d.]+\) vs full_ft \[(\w)\] 85\.0 → ([\d.]+)", shift
    )
    assert sorted(pairs) == [("a", "78.5", "a", "80.5"), ("b", "70.5", "b", "80.5")]  # each part's own drop
    assert "mean over 2 setting(s)" in shift and "random effects over 2 settings (t, 1 df)" in shift
    headline = (tmp_path / "reports/study/headline.md").read_text()
    row = next(line for line in headline.splitlines() if line.startswith("| [prompt_tuning_robust_to_domain_shift]"))
    assert "QQP->MRPC 76.3 vs 73.1" in row and "mean over 2 setting(s)" in row and "Δ -6.00 [" in row
    assert "2 seeds × 100 examples" in row and "| **inconclusive**" in row  # 2 settings: t on 1 df
    written = top.read_text()
    assert "old table" not in written and written.startswith("# Suite\n") and written.endswith("\n\n## Next\n")
    block = written.split(report.HEADLINE_START)[1].split(report.HEADLINE_END)[0]
    rows = [line for line in block.splitlines() if line.startswith("| [")]
    assert len(rows) == headline.count("\n| [") and all(
        len(cell.strip()) <= report.CELL_CHARS for row in rows for cell in row.strip("|").split(" | ")
    )
    slim = next(line for line in block.splitlines() if line.startswith("| [prompt_tuning_robust_to_domain_shift]"))
    assert "| -6.00 [" in slim and "2 seeds × 100 ex. | **inconclusive** |" in slim
    assert "[c1]: reports/study/claims.md#" in block


def test_cells_two_parts_share_are_one_pair_in_a_claim(tmp_path, monkeypatch, no_plots):
    """Part b repeats part a's n=50 cells (same hyperparameters and seeds, same scores) and adds n=100: a claim
    averaging pairs counts n=50 once, and says so; the existing test above keeps pairs whose scores differ."""
    monkeypatch.chdir(tmp_path)
    methods = {"full_ft": {"lr": 2e-5}, "prompt_tuning": {"lr": 3e-2}}
    a = write_grid(tmp_path, "a", methods=methods, seeds=[0, 1])
    b = write_grid(tmp_path, "b", methods=methods, seeds=[0, 1], train_sizes=[50, 100])
    for grid in (a, b):
        for cell in grid_cells(grid):
            gap = {50: 2.0, 100: 10.0}[cell.train_size] if cell.method == "prompt_tuning" else 0.0
            write_record(cell, {"sst2": {"accuracy": 85.0}, "imdb": {"accuracy": 80.0 - gap + cell.seed}})
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"description": "a and b", "parts": [a, b]}))
    report.write_report(str(study))
    _, summary, claims = read(tmp_path, "study")
    assert len(summary[(summary["train_size"] == 50) & (summary["eval_set"] == "imdb")]) == 4  # both parts kept
    shift = claims.split("## prompt_tuning_robust_to_domain_shift\n")[1].split("\n## ")[0]
    assert "mean over 2 setting(s)" in shift and "Δ -6.00 [" in shift
    assert "train_size=50: b ran the same cells as a (same hyperparameters, seeds and scores): counted once" in shift


def test_a_part_names_a_variant_alike_on_every_model(tmp_path, monkeypatch, no_plots):
    """Part b runs a size ladder, part a the smaller model only: b's full FT is `full_ft [b]` on both models, so the
    ladder's gap is compared across them (not split into one-model groups by label)."""
    monkeypatch.chdir(tmp_path)
    methods = {"full_ft": {"lr": 2e-5}, "prompt_tuning": {"lr": 3e-2}}
    a = write_grid(tmp_path, "a", methods=methods, seeds=[0, 1])
    b = write_grid(tmp_path, "b", methods=methods, seeds=[0, 1], models=["smollm2-135m", "smollm2-360m"])
    gaps = {"smollm2-135m": 20.0, "smollm2-360m": 5.0}
    for grid in (a, b):
        for cell in grid_cells(grid):
            acc = 85.0 - (gaps[cell.model] if cell.method == "prompt_tuning" else 0.0)
            write_record(cell, {"sst2": {"accuracy": acc}, "imdb": {"accuracy": acc - 5}})
    study = tmp_path / "study.yaml"
    study.write_text(yaml.safe_dump({"description": "a and b", "parts": [a, b]}))
    report.write_report(str(study))
    _, summary, claims = read(tmp_path, "study")
    assert set(summary[summary["grid"] == "b"].groupby("variant")["model"].nunique()) == {2}
    assert set(summary["variant"]) == {"full_ft [a]", "prompt_tuning [a]", "full_ft [b]", "prompt_tuning [b]"}
    ladder = claims.split("## prompt_tuning_gap_shrinks_with_scale\n")[1].split("\n## ")[0]
    assert "gap smollm2-135m − gap smollm2-360m: +20.0 − +5.0: Δ +15.00 [" in ladder
    assert "one model size (smollm2-135m (135M) +20.0): no ladder" in ladder  # part a: one model


def test_readme_claims_table_is_the_study_reports():
    """README's study table is reports/study/headline.md's claims and verdicts, slim (both written by `python -m bench
    report study`): every cell at most 80 characters, each claim linked to its section of claims.md."""
    readme = (REPO / "README.md").read_text()
    block = readme.split(report.HEADLINE_START)[1].split(report.HEADLINE_END)[0]
    table = (REPO / "reports/study/headline.md").read_text()

    def verdicts(text):
        return re.findall(r"^\| \[(\w+)\][^|]*\|.*\| \*\*([a-z ]+)\*\*", text, re.M)

    assert verdicts(block) == verdicts(table) and len(verdicts(block)) >= 20
    rows = [line for line in block.splitlines() if line.startswith("| [")]
    assert all(len(cell.strip()) <= report.CELL_CHARS for row in rows for cell in row.strip("|").split(" | "))
    for claim, _ in verdicts(block):
        assert re.search(rf"^\[c\d+\]: reports/study/claims\.md#{claim}$", block, re.M)
    with pytest.raises(BenchError, match="README.md has no study-claims block"):
        report.readme_with_headline("# no block\n", table)


def test_power_planner_prints_a_plan_for_every_claim(tmp_path, monkeypatch, no_plots):
    """`python -m bench power GRID`: every claim of claims.yaml gets a section; a comparison left inconclusive gets
    the seeds × examples that would decide it (or why none would); one claim alone by its id (or its old id)."""
    from bench.report.write import power_report

    monkeypatch.chdir(tmp_path)
    grid = write_grid(
        tmp_path,
        seeds=[0, 1, 2],
        methods={"full_ft": None, "prompt_tuning": None},
        tasks={"sst2": {"shifts": ["imdb"]}},
    )
    for cell in grid_cells(grid):
        acc = 80.0 + cell.seed + (-3.0 if cell.method == "prompt_tuning" else 0.0)
        drop = 10 + (2 * cell.seed if cell.method == "prompt_tuning" else -cell.seed)
        write_record(cell, {"sst2": {"accuracy": acc}, "imdb": {"accuracy": acc - drop}})
    text = power_report(grid)
    claims = yaml.safe_load(report.CLAIMS.read_text())["claims"]
    assert all(f"## {c['id']}: " in text for c in claims)
    robust = text.split("## prompt_tuning_robust_to_domain_shift:")[1].split("\n## ")[0]
    assert re.search(
        r"observed at Δ [-+][\d.]+: (\d+ seeds × \d+ examples to (reproduce|contradict)|.*no number|even)", robust
    ), robust
    assert power_report(grid, "prompt_ensemble_beats_average").count("\n## ") == 1  # the old id finds it
    with pytest.raises(BenchError, match="no claim 'nosuch'"):
        power_report(grid, "nosuch")
