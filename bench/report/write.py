"""Records -> results/<grid>/{summary,cells}.csv and reports/<grid>/{README.md, tables.tex, claims.md, plots/}.

Reads records only; never trains. The parts, one job each: bench/report/summary.py (records -> summary table),
bench/report/stats.py (bootstrap intervals), bench/report/tables.py (tables), bench/report/claims.py (claim
verdicts), bench/report/plots.py (figures); this file writes them out. Where records have a `dev` eval set (dev_limit),
summary.csv gains `selected_on_dev` (the lr chosen on it); dev is otherwise left out of tables, plots and claims.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from bench.api.errors import BenchError
from bench.grid.plan import load_grid_file
from bench.harness.cell import harness_hash, write_atomic
from bench.report.claims import (  # noqa: F401 (the API)
    CELL_CHARS,
    CLAIM_KINDS,
    CLAIMS,
    HEADLINE_END,
    HEADLINE_START,
    claims_md,
    evaluate_claims,
    headline_md,
    readme_with_headline,
    select,
    slim_headline_md,
)
from bench.report.curves import curve_points, curve_tables, records, retention_tables
from bench.report.power import claim_plans
from bench.report.stats import CORPUS_RESAMPLES, RESAMPLES
from bench.report.summary import PER_SEED, add_intervals, load, paired_difference, summarize  # noqa: F401
from bench.report.tables import (
    ablation_tables,
    cost_tables,
    dev_selection_tables,
    ensemble_tables,
    generation_tables,
    interpretability_tables,
    interval_tables,
    lowdata_tables,
    md_table,
    shift_tables,
    size_tables,
    tex_table,
)
from bench.report.templates import template_tables
from bench.report.verdicts import Gate

INTERVALS = (
    "Intervals: seeds and eval examples as two levels -- Student's t over the per-seed values (seeds − 1 "
    "df) plus the eval examples' shared sampling variance (analytic for accuracy and ROUGE, from "
    f"{RESAMPLES:,} bootstrap replicates of the examples for BLEU, NIST, METEOR and CIDEr, "
    f"{CORPUS_RESAMPLES} re-scored ones for F1), Welch–Satterthwaite df; records without per-example outputs: "
    "t over seeds; one seed: examples only; none with one seed and no outputs (bench/report/stats.py, "
    "docs/statistics.md)."
)


def verdicts_md(name: str, claims: list[dict], cells: pd.DataFrame) -> str:
    """The end-of-run summary (`python -m bench report` prints it; reports/<grid>/verdicts.md keeps it): the cells'
    counts (ok / stale / failed) and one row per claim that ran, claim | Δ [95% interval] | verdict, columns padded so
    that the Markdown table reads as a table in a terminal too; the claims not run, named on one line."""
    from bench.report.verdicts import deciding

    status = cells["status"] if len(cells) else pd.Series(dtype=str)
    stale = int(cells["stale"].sum()) if len(cells) else 0
    ok = int(((status == "ok") & ~cells["stale"]).sum()) if len(cells) else 0
    others = status[status != "ok"].value_counts()
    failed = int(others.get("failed", 0))
    more = "".join(f", {n} {s}" for s, n in others.items() if s != "failed")
    lines = [
        f"Grid `{name}`: {len(cells)} cells: {ok} ok, {stale} stale, {failed} failed{more} (results/{name}/cells.csv)."
    ]
    if claims:
        counts = pd.Series([r["verdict"] for r in claims]).value_counts()
        lines.append(
            f"Claims: {', '.join(f'{n} {v}' for v, n in counts.items())} of {len(claims)} (reports/{name}/claims.md)."
        )
        rows, absent = [], [r["id"] for r in claims if r["verdict"] == "not run"]
        for r in claims:
            if r["verdict"] == "not run":
                continue
            f = deciding(r["found"]) if r["found"] else None
            iv = f.interval if f is not None else None
            delta = f"{iv.estimate:+.2f} [{iv.low:+.2f}, {iv.high:+.2f}] {f.comparison.unit}" if iv is not None else "–"
            rows.append((r["id"], delta, r["verdict"]))
        head = ("claim", "Δ [95% interval]", "verdict")
        widths = [max(len(row[i]) for row in [head, *rows]) for i in range(3)]
        lines += (
            [
                "",
                *(
                    "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |"
                    for row in [head, tuple("-" * w for w in widths), *rows]
                ),
            ]
            if rows
            else []
        )
        lines += ["", f"Not run (no cells of theirs here): {', '.join(absent)}."] if absent else []
    return "\n".join(lines) + "\n"


def markdown_html(text: str) -> str:
    """Markdown (tables included) as an HTML fragment, for pages `snakemake --report` shows inline (it offers .md
    files as downloads); images dropped (the report's Plots category holds them)."""
    import re

    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").enable("table").render(re.sub(r"!\[[^\]]*\]\([^)]*\)\n?", "", text))


def verdicts_html(verdicts: str, forest: Path | None) -> str:
    """verdicts.md as HTML with the forest plot embedded (a data URI): the Snakemake report's opening page includes
    it (config/report/workflow.rst)."""
    import base64

    image = (
        f'<p><img alt="forest plot of the claims" style="max-width:100%" src="data:image/png;base64,'
        f'{base64.b64encode(forest.read_bytes()).decode()}"></p>\n'
        if forest is not None
        else ""
    )
    return '<div class="peft-repro-verdicts">\n' + markdown_html(verdicts) + image + "</div>\n"


def write_report(grid: str) -> list[Path]:
    """The grid's report; where the grid names a `readme` (the study: README.md), also that file's study-claims
    block (the claims table, linked to this report's claims.md)."""
    from bench.report.plots import make_plots, plot_claims, plot_curves, plot_forest

    name, data = load_grid_file(grid)
    readme = Path(data["readme"]) if data.get("readme") else None
    current, (cells, frame, hp_cols) = harness_hash(), load(grid)
    S = add_intervals(summarize(frame, hp_cols), cells) if len(frame) else pd.DataFrame()
    res, rep = Path("results") / name, Path("reports") / name
    plots_dir = rep / "plots"
    for folder in (res, plots_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()
    selection = dev_selection_tables(S)  # before writing: it adds summary.csv's selected_on_dev column
    summary, status = S.drop(columns=list(PER_SEED), errors="ignore"), cells.drop(columns=["analysis", "outputs"])
    write_atomic(res / "summary.csv", lambda handle: summary.to_csv(handle, index=False))
    write_atomic(res / "cells.csv", lambda handle: status.to_csv(handle, index=False))
    S = S[S["eval_set"] != "dev"] if len(S) else S  # dev is for selection only: not a shift in tables, plots, claims
    tables = (
        [
            *generation_tables(S),
            *size_tables(S),
            *shift_tables(S, paired_difference(cells, S)),
            *lowdata_tables(S),
            *ablation_tables(S, hp_cols),
            *template_tables(S, hp_cols),
            *selection,
            *ensemble_tables(S),
            *cost_tables(S, hp_cols),
            *interval_tables(S),
            *interpretability_tables(cells),
        ]
        if len(S)
        else []
    )
    found = records(cells) if len(cells) else []  # records with a learning curve or retention
    tables += [*curve_tables(found), *retention_tables(found)]
    plots = [*(make_plots(S, plots_dir) if len(S) else []), *plot_curves(curve_points(found), plots_dir)]
    claims = evaluate_claims(S, cells, hp_cols, yaml.safe_load(CLAIMS.read_text())["claims"])
    forest = plot_forest(claims, plots_dir)
    plots += ([forest] if forest else []) + plot_claims(claims, plots_dir)
    before = rep / "verdicts-before.json"  # the verdicts under the statistics before these (shown before → after)
    before = json.loads(before.read_text())["verdicts"] if before.exists() else None
    counts = cells["status"].value_counts()
    parts = [
        f"# Report: grid `{name}`",
        "",
        *([data["description"], ""] if data.get("description") else []),
        f"{len(cells)} cells: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; {int(cells['stale'].sum())} stale. Tables: mean over seeds [95% interval] (n = seeds with a "
        "result); "
        f"{INTERVALS} "
        "accuracy in %, BLEU/METEOR/ROUGE ×100, NIST and CIDEr raw (as LoRA Table 3); † = stale (see Stale "
        "cells). "
        "Machine-readable: "
        f"`results/{name}/summary.csv`, `results/{name}/cells.csv`; LaTeX: `tables.tex`.",
        "",
        "## Tables",
        "",
        *(md_table(t) for t in tables),
        *([] if tables else ["(no results yet)", ""]),
    ]
    parts += ["## Plots", "", *(f"![{p.stem}](plots/{p.name})\n" for p in plots)] if plots else []
    parts += [
        "## Claims",
        "",
        "| claim | test | verdict |",
        "|---|---|---|",
        *(
            f"| [{r['id']}](claims.md#{r['id']}) | {r['test']} | {r['verdict']}"
            + (f": {r['why']}".replace("|", "\\|") if r.get("why") else "")
            + " |"
            for r in claims
        ),
        "",
    ]
    unlearned = Gate(S, dict(zip(cells["dir"], cells["outputs"]))).failures() if len(S) else []
    if unlearned:
        parts += [
            "## Cells that did not learn",
            "",
            "The learning gate (docs/statistics.md): these systems' in-domain "
            "accuracy does not clear the majority class of their eval examples at its one-sided 97.5% lower "
            "bound; claims reading them are not decided.",
            "",
            "| part | variant | task | model | train size | in-domain accuracy | majority class | what would fix it |",
            "|---|---|---|---|---|---|---|---|",
            *("| " + " | ".join(row) + " |" for row in unlearned),
            "",
        ]
    bad = cells[cells["status"] != "ok"]
    if len(bad):
        parts += [
            "## Cells without a result",
            "",
            *(f"- `{r['dir']}`: {r['status']} — {r['detail']}" for r in bad.head(60).to_dict("records")),
            *([f"- … and {len(bad) - 60} more: `results/{name}/cells.csv`"] if len(bad) > 60 else []),
            "",
        ]
    stale = cells[cells["stale"]]
    if len(stale):
        parts += [
            "## Stale cells",
            "",
            f"{len(stale)} record(s) are not what their cell asks for today: the record's "
            "resolved spec (`identity.spec`: method code and hyperparameters, task, data files, model, seeds, "
            f"harness `{current[:12]}`; bench/harness/identity.py) differs from the cell's as planned from "
            f"today's "
            "files, field by field below, or the record was made under another dependency lock "
            "(`env.lock_sha256`; the packages whose versions differ from `config/requirements.lock` are "
            "named):",
            "",
            "| cell | differs |",
            "|---|---|",
            *(f"| `{r['dir']}` | {r['stale_because']} |" for r in stale.to_dict("records")),
            "",
            "Snakemake reruns a record whose spec differs by itself (a harness change proved result-neutral "
            "re-stamps them instead: `python -m bench restamp`), one stale only by the lock it does not. To "
            "rerun exactly these cells, delete their records, then run the grid:",
            "",
            "```bash",
            *(f"rm {d}/record.json" for d in stale["dir"]),
            f"snakemake --cores all --config grid={grid}",
            "```",
            "",
            f"(`snakemake --cores all --config grid={grid} --forcerun cell` reruns every cell.)",
            "",
        ]
    paths = [
        res / "summary.csv",
        res / "cells.csv",
        rep / "README.md",
        rep / "tables.tex",
        rep / "claims.md",
        rep / "headline.md",
        rep / "verdicts.md",
        rep / "verdicts.html",
        rep / "claims.html",
        rep / "README.html",
    ]
    texts = {
        paths[3]: "% peft-repro tables for grid "
        + name
        + "; needs \\usepackage{booktabs}\n\n"
        + "\n".join(tex_table(t) for t in tables),
        paths[4]: claims_md(name, claims, before),
        paths[5]: headline_md(claims, before=before),
        paths[6]: verdicts_md(name, claims, cells),
    }
    texts[paths[7]] = verdicts_html(texts[paths[6]], forest)
    texts[paths[8]] = markdown_html(texts[paths[4]])
    texts[paths[9]] = markdown_html("\n".join(parts))  # the tables, viewable in `snakemake --report`'s page
    if readme is not None:
        texts[readme] = readme_with_headline(readme.read_text(), slim_headline_md(claims, f"{rep}/claims.md"))
        paths.append(readme)
    texts[paths[2]] = "\n".join(parts)  # README.md last: the file `rule all` asks for
    for path, text in texts.items():  # atomically: a killed report never leaves a partial file to be trusted
        write_atomic(path, lambda handle, text=text: handle.write(text))
    return paths + plots


def power_report(grid: str, claim: str | None = None) -> str:
    """The planner's text for a grid's claims (or one)."""
    import yaml

    claims = yaml.safe_load(CLAIMS.read_text())["claims"]
    if claim is not None:
        claims = [c for c in claims if c["id"] == claim or c.get("was") == claim]
        if not claims:
            raise BenchError(f"no claim {claim!r} in {CLAIMS}: name one of its ids (python -m bench power GRID)")
    cells, frame, hp_cols = load(grid)
    S = add_intervals(summarize(frame, hp_cols), cells) if len(frame) else frame
    if len(S):
        S = S[S["eval_set"] != "dev"]
    lines = [f"# Power plan: grid `{grid}` (80% power; one-sided tests as each claim states)", ""]
    for result in evaluate_claims(S, cells, hp_cols, claims):
        lines.append(f"## {result['id']}: {result['verdict']}" + (f" — {result['why']}" if result.get("why") else ""))
        plans = claim_plans(result)
        if not plans:
            lines.append(
                "- nothing to plan: "
                + (
                    "decided"
                    if result["verdict"] in ("reproduced", "contradicted")
                    else result.get("why") or "no comparison with an interval"
                )
            )
        for label, texts in plans:
            lines += [f"- {label}: " + "; ".join(texts)]
        lines.append("")
    return "\n".join(lines)
