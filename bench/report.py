"""Records -> results/<grid>/{summary,cells}.csv and reports/<grid>/{README.md, tables.tex, claims.md, plots/}.

Reads records only; never trains. summary.csv is tidy: one row per cell minus its seed -- task, model, method,
variant (the grid's label: the method, or e.g. `prompt_tuning-num_virtual_tokens=5` for a sweep), train size,
eval set, metric -- with the mean, std and count of seeds, cost means, `stale` (made by other harness code,
method files or converted model than today's), a column per hyperparameter whose value differs between cells of
one method, and `hp` (all resolved hyperparameters, JSON), and -- where records have a `dev` eval set (dev_limit) -- `selected_on_dev`
(the lr chosen on it; dev is otherwise left out of tables, plots and claims). cells.csv has every cell of the grid with its status: ok,
diverged, failed (no record, a log), not run (neither).
Tables are small functions over the summary; config/claims.yaml is checked by one dispatcher (CHECKS).
"""
from __future__ import annotations

import json
import math
import operator
import re
from collections import namedtuple
from pathlib import Path

import pandas as pd
import yaml

from bench.cell import harness_hash
from bench.grid import CELL_REFS, grid_cells, load_grid_file, outdated_inputs

CLAIMS = Path(__file__).resolve().parent.parent / "config" / "claims.yaml"
KEYS = ["task", "model", "method", "train_size"]
ALIGN = ["task", "model", "train_size", "eval_set", "metric"]
COST = ["trainable_params", "delta_params", "total_params", "delta_bytes", "peak_mem_bytes",
        "train_tokens_per_s", "eval_tokens_per_s", "train_s", "eval_s", "flops_per_step"]
PRIMARY_ORDER = ("accuracy", "bleu", "rouge_l", "rouge_1", "f1")
GEN_METRICS = {"bleu": "BLEU", "nist": "NIST", "meteor": "METEOR", "rouge_l": "ROUGE-L", "cider": "CIDEr",
               "ter": "TER"}
EVAL_SHORT = {"webnlg": "A", "test_seen": "S", "test_unseen": "U"}
ENSEMBLE = {"accuracy_avg_single": "average prompt", "accuracy_best_single": "best prompt", "accuracy": "ensemble"}
Table = namedtuple("Table", "title header rows note")


# ------------------------------------------------------------------ records -> tidy table
def _read(cell) -> tuple[dict | None, str, str]:
    path = Path(cell.dir) / "record.json"
    label = getattr(cell, "label", cell.method)  # the Snakefile's log path
    log = Path(f"results/{cell.grid}/logs/{cell.task}/{cell.model}/{label}/n{cell.train_size}_s{cell.seed}.log")
    if not path.exists():
        if not log.exists():
            return None, "not run", "no record, no log"
        last = ([line for line in log.read_text(errors="replace").splitlines() if line.strip()] or [""])[-1].strip()
        return None, "failed", f"no record; log {log}: {last[:160]}"
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        return None, "unreadable", f"{path}: {error}"
    if record.get("status") != "ok":
        return record, str(record.get("status")), f"{record.get('status')} at step {record.get('diverged_at_step')}"
    return record, "ok", ""


def load(grid: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(cells: one row per grid cell, its status and its record's `analysis`; rows: one per ok record x eval set x
    metric; hp columns)."""
    current, cells, rows = harness_hash(), [], []
    for cell in grid_cells(grid):
        base = {"task": cell.task, "model": cell.model, "method": cell.method,
                "variant": getattr(cell, "label", cell.method), "train_size": str(cell.train_size),
                "seed": cell.seed, "dir": cell.dir}
        record, status, detail = _read(cell)
        harness = (record or {}).get("env", {}).get("harness_sha256") or ""
        made_from = [] if record is None else [
            *([f"harness {harness[:12] or '?'}"] if harness != current else []),
            *(f"other {what}" for what in outdated_inputs(record, cell))]  # its method files, the converted model
        stale = bool(made_from)
        cells.append({**base, "status": status, "stale": stale, "harness": harness[:12],
                      "stale_because": ", ".join(made_from), "detail": detail,
                      "analysis": record.get("analysis") if status == "ok" else None})
        if status != "ok":
            continue
        hp = {key: str(value) for key, value in record["config"].get("hp", {}).items()
              if key not in CELL_REFS}  # another cell's dir (distill's teacher): it names the seed, so not an hp
        cost = {key: record["cost"].get(key) for key in COST}
        for eval_set, metrics in record["metrics"].items():
            for metric, value in metrics.items():
                if metric != "n" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    rows.append({**base, "hp": hp, "hp_json": json.dumps(hp, sort_keys=True),
                                 "eval_set": eval_set, "metric": metric, "value": float(value), "stale": stale, **cost})
    frame = pd.DataFrame(rows)
    hp_cols = []
    if len(frame):  # hp keys whose values differ between cells that share task, model, method and train size
        per_record = frame.drop_duplicates("dir")
        hp = pd.DataFrame(list(per_record["hp"]), index=per_record.index).fillna("")
        hp_cols = [key for key in hp if hp.join(per_record[KEYS]).groupby(KEYS)[key].nunique().max() > 1]
        for key in hp_cols:
            frame[key] = [h.get(key, "") for h in frame["hp"]]
    return pd.DataFrame(cells), frame.drop(columns="hp", errors="ignore"), hp_cols


def _num(value):
    """Natural sort key: numbers by value, then text ('full' after every integer train size)."""
    try:
        return (0, float(value), "")
    except (TypeError, ValueError):
        return (1, math.inf, str(value))


def summarize(frame: pd.DataFrame, hp_cols: list[str]) -> pd.DataFrame:
    group = KEYS[:3] + ["variant", "train_size"] + hp_cols + ["eval_set", "metric"]
    for col in COST:
        frame[col] = pd.to_numeric(frame[col], errors="coerce")
    cost = {col: (col, "mean") for col in COST if frame[col].notna().any()}
    S = frame.groupby(group, sort=False).agg(mean=("value", "mean"), std=("value", "std"),
                                             seeds=("seed", "nunique"), stale=("stale", "any"), **cost,
                                             hp=("hp_json", "first")).reset_index()
    S["model_params"] = S["model"].map(frame.groupby("model")["total_params"].min())  # base size: least total
    S["trainable_pct"] = 100 * S["trainable_params"] / S["model_params"]
    S["in_domain"] = S["eval_set"] == S["task"]
    primary = {t: next((m for m in PRIMARY_ORDER if m in set(g["metric"])), g["metric"].iloc[0])
               for t, g in S.groupby("task")}
    S["primary"] = S["metric"] == S["task"].map(primary)
    first = {c: {v: i for i, v in enumerate(dict.fromkeys(S[c]))}
             for c in ("task", "method", "variant", "eval_set", "metric")}
    rank = lambda r: (first["task"][r["task"]], r["model_params"], r["model"], first["method"][r["method"]],  # noqa
                      *[_num(r[k]) for k in hp_cols], first["variant"][r["variant"]], _num(r["train_size"]),
                      not r["in_domain"], first["eval_set"][r["eval_set"]], first["metric"][r["metric"]])
    return pd.DataFrame(sorted(S.to_dict("records"), key=rank), columns=S.columns).round(4)


# ------------------------------------------------------------------ formatting
def human(n) -> str:
    if n is None or pd.isna(n):
        return "–"
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.0f}"


def fmt(r: dict | None) -> str:
    """mean ± std (n=seeds), † when stale."""
    if r is None:
        return "–"
    digits = 2 if abs(r["mean"]) < 10 else 1
    spread = f" ± {r['std']:.{digits}f}" if r["seeds"] > 1 else ""
    return f"{r['mean']:.{digits}f}{spread} (n={r['seeds']})" + (" †" if r["stale"] else "")


def pivot(T: pd.DataFrame, index: list[str], column: str, order: list, lead=None) -> list[list]:
    rows = []
    for key, g in T.groupby(index, sort=False):
        by = {r[column]: r for r in g.to_dict("records")}
        rows.append([*key, *(lead(g) if lead else []), *(fmt(by.get(c)) for c in order)])
    return rows


def _models(T: pd.DataFrame) -> dict:
    sizes = T.groupby("model")["model_params"].first().sort_values()
    return {m: f"{m} ({human(p)})" for m, p in sizes.items()}


def _in_domain(S: pd.DataFrame) -> pd.DataFrame:
    return S[S["primary"] & S["in_domain"]]


# ------------------------------------------------------------------ tables (each: summary -> list[Table])
def generation_tables(S):
    out = []
    for task, T in S[S["metric"].isin(list(GEN_METRICS))].groupby("task", sort=False):
        sets = list(dict.fromkeys(T["eval_set"]))
        label = lambda m, e: GEN_METRICS[m] + (f" {EVAL_SHORT.get(e, e)}" if len(sets) > 1 else "")  # noqa: E731
        T = T.assign(col=[label(m, e) for m, e in zip(T["metric"], T["eval_set"])])
        order = [c for c in dict.fromkeys(label(m, e) for m in GEN_METRICS for e in sets) if c in set(T["col"])]
        rows = pivot(T, ["model", "variant", "train_size"], "col", order,
                      lead=lambda g: [human(g["trainable_params"].iloc[0]), f"{g['trainable_pct'].iloc[0]:.3f}"])
        note = "S/U/A: seen / unseen categories / all." if "test_unseen" in sets else ""
        out.append(Table(f"Table-to-text: {task}", ["model", "method", "train size", "trainable params",
                                                    "trainable %", *order], rows, note))
    return out


def size_tables(S):
    T = _in_domain(S)[lambda d: d["metric"].isin(["accuracy", "f1"])]
    if T.empty:
        return []
    labels = _models(T)
    rows = pivot(T.assign(col=T["model"].map(labels)), ["task", "variant", "train_size"], "col", list(labels.values()))
    return [Table("Classification accuracy by model size (in-domain)",
                  ["task", "method", "train size", *labels.values()], rows,
                  "Model size = the least total parameter count among the model's records.")]


def shift_tables(S):
    out = []
    for task, T in S[S["primary"]].groupby("task", sort=False):
        if T["in_domain"].all():
            continue
        variants = list(dict.fromkeys(T["variant"]))
        ref = "full_ft" if "full_ft" in variants else None
        others = [v for v in variants if v != ref] if ref else []
        rows = []
        for (model, size, eval_set), g in T.groupby(["model", "train_size", "eval_set"], sort=False):
            by = {r["variant"]: r for r in g.to_dict("records")}
            deltas = [f"{by[v]['mean'] - by[ref]['mean']:+.1f}" if v in by and ref in by else "–" for v in others]
            rows.append([model, size, eval_set + (" (in-domain)" if eval_set == task else ""),
                         *(fmt(by.get(v)) for v in variants), *deltas])
        out.append(Table(f"Domain shift: {task} ({T['metric'].iloc[0]})", ["model", "train size", "eval set",
                         *variants, *(f"Δ {v}" for v in others)], rows,
                         f"Δ = method − {ref} (points)." if ref else "No full_ft cells: no Δ column."))
    return out


def lowdata_tables(S):
    out = []
    for task, T in _in_domain(S).groupby("task", sort=False):
        sizes = sorted(set(T["train_size"]), key=_num)
        if len(sizes) >= 2:
            out.append(Table(f"Low-data: {task} ({T['metric'].iloc[0]}) by training examples",
                             ["model", "method", *(f"n={s}" for s in sizes)],
                             pivot(T, ["model", "variant"], "train_size", sizes), ""))
    return out


def ablation_tables(S, hp_cols):
    out = []
    for task, T in _in_domain(S).groupby("task", sort=False) if hp_cols else []:
        varied = [m for m, g in T.groupby("method", sort=False) if len(g[hp_cols].drop_duplicates()) > 1]
        T = T[T["method"].isin(varied)]
        if len(T):
            labels = _models(T)
            rows = pivot(T.assign(col=T["model"].map(labels)), ["variant", *hp_cols, "train_size"], "col",
                         list(labels.values()))
            out.append(Table(f"Ablation: {task} ({T['metric'].iloc[0]}) by {', '.join(hp_cols)}",
                             ["method", *hp_cols, "train size", *labels.values()], rows, ""))
    return out


def ensemble_tables(S):
    keys = ["task", "model", "variant", "train_size", "eval_set"]
    singles = S[S["metric"].isin(["accuracy_avg_single", "accuracy_best_single"])][keys].drop_duplicates()
    if singles.empty:
        return []
    T = S[S["metric"].isin(list(ENSEMBLE))].merge(singles, on=keys)
    return [Table("Prompt ensembling", [*keys, *ENSEMBLE.values()], pivot(T, keys, "metric", list(ENSEMBLE)),
                  "average / best: the single prompts' mean and best accuracy; ensemble: their majority vote.")]


def dev_selection_tables(S):
    """Where variants of one method differ only in lr and have `dev` scores (cells with dev_limit): per task x model
    x method (x its other hp) x train size, the lr with the best mean dev primary metric over seeds, with its test
    scores beside the best-on-test lr's. Sets S["selected_on_dev"] (only when S has dev rows) on the chosen rows."""
    if S.empty or not (S["eval_set"] == "dev").any():
        return []
    S["selected_on_dev"] = False
    hp = S["hp"].map(json.loads)
    rest = hp.map(lambda h: json.dumps({k: v for k, v in h.items() if k != "lr"}, sort_keys=True))
    P = S.assign(lr=hp.map(lambda h: h.get("lr")), rest=rest)[S["primary"]]
    out = []
    for task, T in P.groupby("task", sort=False):
        shifts = [e for e in dict.fromkeys(T["eval_set"]) if e not in ("dev", task)]
        rests = {m: [json.loads(r) for r in g["rest"].unique()] for m, g in T.groupby("method")}
        rows = []
        for (model, method, size, rest), g in T.groupby(["model", "method", "train_size", "rest"], sort=False):
            dev, test = g[g["eval_set"] == "dev"], g[g["eval_set"] == task]
            if dev["lr"].nunique() < 2:
                continue
            pick = dev.loc[dev["mean"].idxmax()]  # ties: the first in summary order (the smaller lr)
            best = test.loc[test["mean"].idxmax()].to_dict() if len(test) else None
            S.loc[(S["task"] == task) & (S["model"] == model) & (S["train_size"] == size)
                  & (S["variant"] == pick["variant"]), "selected_on_dev"] = True
            at = {r["eval_set"]: r for r in g[g["variant"] == pick["variant"]].to_dict("records")}
            family = rests[method]  # label a method's lr sweeps by the other hp that tell them apart
            others = sorted({k for r in family for k in r if len({json.dumps(x.get(k)) for x in family}) > 1})
            label = " ".join([method, *(f"{k}={json.loads(rest).get(k)}" for k in others)])
            rows.append([model, label, size, pick["lr"], fmt(pick), fmt(at.get(task)),
                         *(fmt(at.get(e)) for e in shifts), "–" if best is None else best["lr"], fmt(best)])
        if rows:
            out.append(Table(f"Learning rate selected on the dev split: {task} ({T['metric'].iloc[0]})",
                             ["model", "method", "train size", "lr (dev-selected)", "dev", f"{task} (in-domain test)",
                              *shifts, "lr (best on test)", f"{task} (best on test)"], rows,
                             "dev-selected: the lr with the best mean dev score over seeds (dev = dev_limit examples "
                             "held out of the training split); its test and shifted scores are the fair result. "
                             "best on test: the lr with the best in-domain test score, i.e. selected on the test set "
                             "(optimistic), for contrast only."))
    return out


def cost_tables(S, hp_cols):
    R = S.drop_duplicates(["task", "model", "variant", "train_size"])  # cost: one per record, not per eval set
    cols = [c for c in COST + ["trainable_pct", "model_params"] if c in R]
    G = R.groupby(["task", "model", "variant"], sort=False)[cols].mean().reset_index()
    flops = "flops_per_step" in G and G["flops_per_step"].notna().any()
    rows = [[r["task"], r["model"], r["variant"], human(r["trainable_params"]), f"{r['trainable_pct']:.3f}",
             human(r["delta_params"]), f"{r['delta_bytes'] / 2**20:.2f}", f"{r['peak_mem_bytes'] / 2**30:.2f}",
             f"{r['train_tokens_per_s']:.0f}", f"{r['eval_tokens_per_s']:.0f}",
             *([human(r["flops_per_step"])] if flops else [])] for r in G.to_dict("records")]
    return [Table("Cost", ["task", "model", "method", "trainable params", "trainable %", "delta params", "delta MB",
                           "peak mem GB", "train tok/s", "eval tok/s", *(["FLOPs/step"] if flops else [])], rows,
                  "Means over train sizes and seeds. Peak memory: process peak RSS on CPU, max allocated on CUDA. "
                  "Delta params < trainable params where training uses a reparametrisation (prefix tuning's MLP).")]


NEIGHBOUR_ROWS = 10  # prompt rows listed per cell in the nearest-token table


def _token(text: str) -> str:
    """A decoded vocabulary token, readable in a table cell: spaces as ▁ (" good" and "good" are two tokens),
    whitespace-only or unprintable ones as their repr, no pipes."""
    shown = text.replace(" ", "▁") if text.strip() else repr(text)
    return (shown if shown.isprintable() else repr(text)).replace("|", "¦")


def interpretability_tables(cells: pd.DataFrame) -> list[Table]:
    """Lester et al. §7 from the records' `analysis.prompt_neighbours` (methods/prompt_tuning.py), as `load` keeps it."""
    found = [(c, c["analysis"]["prompt_neighbours"]) for c in cells.to_dict("records")
             if "prompt_neighbours" in (c["analysis"] or {})]
    if not found:
        return []
    keys = ["task", "model", "variant", "train_size"]
    frame = pd.DataFrame([{**{k: c[k] for k in keys}, "seed": c["seed"], "rows": len(n["tokens"]),
                           "label": n["rows_with_label_word"], "task_words": n["rows_with_task_word"],
                           "top1": sum(row[0] for row in n["cosine"]) / len(n["cosine"])} for c, n in found])
    G = frame.groupby(keys, sort=False).agg(seeds=("seed", "nunique"), rows=("rows", "first"), label=("label", "mean"),
                                            task_words=("task_words", "mean"), top1=("top1", "mean")).reset_index()
    summary = [[*(r[k] for k in keys), r["seeds"], r["rows"], f"{r['label']:g} ({100 * r['label'] / r['rows']:.0f}%)",
                f"{r['task_words']:g} ({100 * r['task_words'] / r['rows']:.0f}%)", f"{r['top1']:.3f}"]
               for r in G.to_dict("records")]
    first = found[0][1]
    note = (f"Each learned prompt token's {first['k']} nearest vocabulary tokens by cosine similarity to the input "
            "embeddings; counted are prompt tokens with a label word (the verbalizer: "
            f"{', '.join(first['label_words']) or 'none'}) or a task word (a word of the task's prompt template: "
            f"{', '.join(first['task_words']) or 'none'}) among them, as whole tokens, case-insensitive; means over "
            "seeds. Top-1 cosine: mean over prompt tokens of the nearest token's similarity.")
    listing = []
    for c, n in sorted(found, key=lambda item: item[0]["seed"]):
        if any(row[:4] == [c[k] for k in keys] for row in listing):
            continue  # one seed per cell: the lowest
        listing += [[*(c[k] for k in keys), c["seed"], i, " · ".join(_token(t) for t in tokens), f"{cosine[0]:.3f}"]
                    for i, (tokens, cosine) in enumerate(zip(n["tokens"][:NEIGHBOUR_ROWS], n["cosine"]))]
    return [Table("Soft-prompt interpretability (Lester §7)", [*keys, "seeds", "prompt tokens",
                                                               "with a label word", "with a task word", "top-1 cosine"],
                  summary, note),
            Table(f"Nearest vocabulary tokens of the first {NEIGHBOUR_ROWS} prompt tokens",
                  [*keys, "seed", "prompt token", f"nearest {first['k']} (most similar first)", "top-1 cosine"],
                  listing, "")]


def md_table(t: Table) -> str:
    lines = [f"### {t.title}", "", "| " + " | ".join(t.header) + " |", "|" + "---|" * len(t.header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines + ([f"\n{t.note}"] if t.note else []) + [""])


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "_": r"\_", "#": r"\#", "{": r"\{", "}": r"\}",
       "$": r"\$", "^": r"\^{}", "~": r"\~{}", "±": r"$\pm$", "Δ": r"$\Delta$", "†": r"$^\dagger$", "–": "--",
       "−": "-"}


def tex_table(t: Table) -> str:
    def esc(text):  # one pass: a replacement is never escaped again
        return re.sub("|".join(map(re.escape, TEX)), lambda match: TEX[match.group()], str(text))
    body = [" & ".join(esc(c) for c in row) + r" \\" for row in t.rows]
    return "\n".join([r"\begin{table}[t]", r"\centering\small", r"\begin{tabular}{" + "l" * len(t.header) + "}",
                      r"\toprule", " & ".join(esc(h) for h in t.header) + r" \\", r"\midrule", *body, r"\bottomrule",
                      r"\end{tabular}", r"\caption{" + esc(t.title + (". " + t.note if t.note else "")) + "}",
                      r"\end{table}", ""])


# ------------------------------------------------------------------ claims (config/claims.yaml)
OPS = {">=": operator.ge, ">": operator.gt, "<=": operator.le, "<": operator.lt}


def select(S: pd.DataFrame, sel: dict) -> pd.DataFrame:
    """Rows matching every key (a value or a list): a summary column or any resolved hyperparameter.
    Default: the task's primary metric, in-domain eval set. model: smallest|largest picks by size."""
    if S.empty:
        return S
    T = S if "metric" in sel else S[S["primary"]]
    T = T if "eval_set" in sel or "in_domain" in sel else T[T["in_domain"]]
    for key, want in sorted(sel.items(), key=lambda kv: kv[1] in ("smallest", "largest")):
        if T.empty:
            return T
        if key == "model" and want in ("smallest", "largest"):
            want = T.loc[T["model_params"].idxmin() if want == "smallest" else T["model_params"].idxmax(), "model"]
        T = T[_isin(T[key] if key in T else T["hp"].map(lambda h: json.loads(h).get(key)), want)]  # or any hp
    return T


def _isin(values: pd.Series, want) -> pd.Series:
    return values.astype(str).isin({str(w) for w in (want if isinstance(want, list) else [want])})


def missing(cells: pd.DataFrame, sel: dict) -> str:
    """Which cells a selection needs and lacks, named by directory."""
    C, desc = cells, ", ".join(f"{k}={v}" for k, v in sel.items())
    for key in KEYS:
        if key in sel and sel[key] not in ("smallest", "largest"):
            C = C[_isin(C[key], sel[key])]
    if C.empty:
        return f"the grid has no cells with {desc}"
    bad = C[C["status"] != "ok"]
    if bad.empty:
        return f"no results with {desc} (the records lack that eval set, metric or hyperparameter value)"
    named = [f"{d} ({s})" for d, s in zip(bad["dir"], bad["status"])]
    more = f"; … and {len(named) - 8} more (see cells.csv)" if len(named) > 8 else ""
    return f"{desc}: " + "; ".join(named[:8]) + more


def _varying(T: pd.DataFrame, keys: list[str]) -> list[str]:
    """The keys that tell rows of T apart (labels leave out what the whole selection shares)."""
    return [k for k in keys if T[k].nunique() > 1]


def _mark(ok) -> str:
    return " ✓" if ok else " ✗"


def _side(r: dict, suffix: str) -> dict:
    return {k: r[k + suffix] for k in ("mean", "std", "seeds", "stale")}


def _pairs(S, cells, c):
    """Left and right selections joined on every ALIGN key that neither side names (hp columns ignored)."""
    where = c.get("where", {})
    L, R = select(S, {**where, **c["left"]}), select(S, {**where, **c["right"]})
    gone = [missing(cells, {**where, **side}) for side, T in ((c["left"], L), (c["right"], R)) if T.empty]
    on = [k for k in ALIGN if k not in c["left"] and k not in c["right"]]
    P = L.merge(R, on=on, suffixes=("_l", "_r")) if not gone else L.iloc[0:0]
    if not gone and P.empty:
        gone = [f"left and right share no {'/'.join(on)}"]
    return P, on, gone


def check_compare(S, cells, hp_cols, c):
    P, on, gone = _pairs(S, cells, c)
    if gone:
        return None, [], gone
    op, margin, keys = OPS[c.get("op", ">=")], c.get("margin", 0), _varying(P, on)
    lines = [f"{' '.join(str(r[k]) for k in keys) or 'all'}: {r['variant_l']} {fmt(_side(r, '_l'))} vs "
             f"{r['variant_r']} {fmt(_side(r, '_r'))} (Δ {r['mean_l'] - r['mean_r']:+.1f})"
             + ("" if c.get("reduce") == "mean" else _mark(op(r["mean_l"], r["mean_r"] + margin)))
             for r in P.to_dict("records")]
    if c.get("reduce") == "mean":
        ok = op(P["mean_l"].mean(), P["mean_r"].mean() + margin)
        lines.append(f"mean over {len(P)} pairs: {P['mean_l'].mean():.1f} vs {P['mean_r'].mean():.1f}" + _mark(ok))
    else:
        ok = all(op(a, b + margin) for a, b in zip(P["mean_l"], P["mean_r"]))
    if "trainable_pct_below" in c:
        pct = P["trainable_pct_l"].max()
        ok = ok and pct < c["trainable_pct_below"]
        lines.append(f"left trainable % (max): {pct:.3f} (claim: < {c['trainable_pct_below']})")
    return bool(ok), lines, []


def check_gap_shrinks(S, cells, hp_cols, c):
    P, on, gone = _pairs(S, cells, c)
    results, lines, by = [], [], [k for k in on if k != "model"] + ["variant_l", "variant_r"]
    for _, g in (P.groupby(by, sort=False) if not gone else []):
        label = " ".join(str(g[k].iloc[0]) for k in _varying(P, by)) or "all"
        g = g.assign(gap=g["mean_l"] - g["mean_r"]).groupby(["model_params_l", "model"], as_index=False)["gap"].mean()
        if len(g) < 2:
            gone.append(f"{label}: needs ≥ 2 model sizes, has {list(g['model'])}")
            continue
        ok = g["gap"].iloc[-1] < g["gap"].iloc[0] and (g["gap"].is_monotonic_decreasing or not c.get("strict"))
        results.append(bool(ok))
        lines.append(f"{label}: gap by size " + ", ".join(
            f"{m} ({human(p)}) {d:+.1f}" for m, p, d in zip(g["model"], g["model_params_l"], g["gap"])) + _mark(ok))
    return (all(results) if results else None), lines, gone


def _groups(S, cells, hp_cols, c):
    T, by = select(S, c.get("where", {})), c["by"]
    if T.empty:
        return [], [missing(cells, c.get("where", {}))]
    if by not in T:  # a hyperparameter that does not vary in this grid: one value, read from `hp`
        T = T.assign(**{by: T["hp"].map(lambda h: str(json.loads(h).get(by)))})
    on = [k for k in ALIGN + ["method"] + hp_cols if k != by and (k not in hp_cols or (T[k] != "").all())]
    keys = _varying(T, on)
    return [(" ".join(str(g[k].iloc[0]) for k in keys) or "all", g.groupby(by)["mean"].mean())
            for _, g in T.groupby(on, sort=False)], []


def check_ordering(S, cells, hp_cols, c):
    groups, gone = _groups(S, cells, hp_cols, c)
    results, lines, margin = [], [], c.get("margin", 0)
    for label, means in groups:
        order = c["order"]
        if order in ("increasing", "decreasing"):
            order = sorted(means.index, key=_num, reverse=order == "increasing")
        order = [str(v) for v in order]
        if not set(order) <= set(means.index) or len(order) < 2:
            gone.append(f"{label}: needs {c['by']} ∈ {order}, has {sorted(means.index, key=_num)}")
            continue
        seq = [means[v] for v in order]
        results.append(bool(all(a >= b - margin for a, b in zip(seq, seq[1:]))))
        lines.append(f"{label}: " + " ≥ ".join(f"{c['by']}={v} {means[v]:.1f}" for v in order) + _mark(results[-1]))
    return (all(results) if results else None), lines, gone


def check_plateau(S, cells, hp_cols, c):
    groups, gone = _groups(S, cells, hp_cols, c)
    results, lines, after = [], [], float(c["after"])
    for label, means in groups:
        xs = {_num(v)[1]: m for v, m in means.items() if _num(v)[0] == 0}
        if after not in xs or not any(x > after for x in xs):
            gone.append(f"{label}: needs {c['by']}={after:g} and a larger value, has {sorted(xs)}")
            continue
        gain = max(m for x, m in xs.items() if x > after) - xs[after]
        results.append(bool(gain <= c["max_gain"]))
        lines.append(f"{label}: " + ", ".join(f"{c['by']}={x:g}: {xs[x]:.1f}" for x in sorted(xs))
                     + f"; best gain beyond {after:g}: {gain:+.1f} (claim: ≤ {c['max_gain']})" + _mark(results[-1]))
    return (all(results) if results else None), lines, gone


CHECKS = {"compare": check_compare, "gap_shrinks": check_gap_shrinks, "ordering": check_ordering,
          "plateau": check_plateau}


def evaluate_claims(S, cells, hp_cols, claims: list[dict]) -> list[dict]:
    out = []
    for claim in claims:
        ok, ours, gone = CHECKS[claim["check"]["kind"]](S, cells, hp_cols, claim["check"])
        verdict = "not run" if ok is None else "reproduced" if ok else "not reproduced"
        out.append({**claim, "verdict": verdict, "ours": ours, "missing": gone})
    return out


def claims_md(grid: str, results: list[dict]) -> str:
    def paper(p):
        return "<br>".join(f"{k}: {v}" for k, v in p.items()) if isinstance(p, dict) else str(p).strip()
    lines = [f"# Claims: grid `{grid}`", "", "Checks are declared in `config/claims.yaml`; kinds: "
             + ", ".join(CHECKS) + ". A claim whose cells are absent is *not run*, never reproduced. "
             "Our numbers: mean ± std (n = seeds); † = stale (README.md: Stale cells).", "",
             "| claim | source | verdict |", "|---|---|---|"]
    lines += [f"| [{r['id']}](#{r['id']}) | {r['source']} | **{r['verdict']}** |" for r in results]
    for r in results:
        lines += ["", f"## {r['id']}", "", f"{r['statement'].strip()} — *{r['source']}*", "",
                  f"**Verdict: {r['verdict']}**", "", f"Check: `{json.dumps(r['check'])}`", "",
                  "| paper | ours |", "|---|---|",
                  f"| {paper(r.get('paper', '–'))} | {'<br>'.join(r['ours']) or '–'} |"]
        if r["missing"]:
            lines += ["", ("Missing: " if r["verdict"] == "not run" else "Not compared: ") + "; ".join(r["missing"])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ the report
def write_report(grid: str) -> list[Path]:
    from bench.plots import make_plots

    name, data = load_grid_file(grid)
    current, (cells, frame, hp_cols) = harness_hash(), load(grid)
    S = summarize(frame, hp_cols) if len(frame) else pd.DataFrame()
    res, rep = Path("results") / name, Path("reports") / name
    plots_dir = rep / "plots"
    for folder in (res, plots_dir):
        folder.mkdir(parents=True, exist_ok=True)
    for old in plots_dir.glob("*.png"):
        old.unlink()
    selection = dev_selection_tables(S)  # before writing: it adds summary.csv's selected_on_dev column
    S.to_csv(res / "summary.csv", index=False)
    cells.drop(columns="analysis").to_csv(res / "cells.csv", index=False)
    S = S[S["eval_set"] != "dev"] if len(S) else S  # dev is for selection only: not a shift in tables, plots, claims
    tables = [*generation_tables(S), *size_tables(S), *shift_tables(S), *lowdata_tables(S),
              *ablation_tables(S, hp_cols), *selection, *ensemble_tables(S), *cost_tables(S, hp_cols),
              *interpretability_tables(cells)] if len(S) else []
    plots = make_plots(S, plots_dir) if len(S) else []
    claims = evaluate_claims(S, cells, hp_cols, yaml.safe_load(CLAIMS.read_text())["claims"])
    counts = cells["status"].value_counts()
    parts = [f"# Report: grid `{name}`", "", *([data["description"], ""] if data.get("description") else []),
             f"{len(cells)} cells: " + ", ".join(f"{n} {s}" for s, n in counts.items())
             + f"; {int(cells['stale'].sum())} stale. Tables: mean ± std over seeds (n = seeds with a result); "
             "accuracy in %, BLEU/METEOR/ROUGE ×100, NIST and CIDEr raw (as LoRA Table 3); † = stale: made by other "
             "harness code, method files or converted model. Machine-readable: "
             f"`results/{name}/summary.csv`, `results/{name}/cells.csv`; LaTeX: `tables.tex`.", "",
             "## Tables", "", *(md_table(t) for t in tables), *([] if tables else ["(no results yet)", ""])]
    parts += ["## Plots", "", *(f"![{p.stem}](plots/{p.name})\n" for p in plots)] if plots else []
    parts += ["## Claims", "", "| claim | verdict |", "|---|---|",
              *(f"| [{r['id']}](claims.md#{r['id']}) | {r['verdict']} |" for r in claims), ""]
    bad = cells[cells["status"] != "ok"]
    if len(bad):
        parts += ["## Cells without a result", "", *(f"- `{r['dir']}`: {r['status']} — {r['detail']}"
                                                     for r in bad.head(60).to_dict("records")),
                  *([f"- … and {len(bad) - 60} more: `results/{name}/cells.csv`"] if len(bad) > 60 else []), ""]
    stale = cells[cells["stale"]]
    if len(stale):
        parts += ["## Stale cells", "", f"{len(stale)} record(s) were computed by other harness code (bench/*.py, "
                  f"sha256 `env.harness_sha256`; the current one is `{current[:12]}`), other method files or another "
                  "converted model (`inputs`) than today's:", "", "| cell | status |",
                  "|---|---|", *(f"| `{r['dir']}` | stale: {r['stale_because']} |" for r in stale.to_dict("records")),
                  "", "Snakemake does not track bench/*.py for cells, nor a method file or a model older than the "
                  "record, so it may not rerun them by itself. Rerun "
                  "exactly these cells by deleting their records, then run the grid:", "", "```bash",
                  *(f"rm {d}/record.json" for d in stale["dir"]), f"snakemake --cores all --config grid={grid}", "```",
                  "", f"(`snakemake --cores all --config grid={grid} --forcerun cell` reruns every cell.)", ""]
    paths = [res / "summary.csv", res / "cells.csv", rep / "README.md", rep / "tables.tex", rep / "claims.md"]
    paths[2].write_text("\n".join(parts))
    paths[3].write_text("% peft-repro tables for grid " + name + "; needs \\usepackage{booktabs}\n\n"
                        + "\n".join(tex_table(t) for t in tables))
    paths[4].write_text(claims_md(name, claims))
    return paths + plots
