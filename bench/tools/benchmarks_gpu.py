"""`python -m bench benchmarks --gpu`: the GPU check, one command, no weights and no data needed.

Random-initialised models of the real shapes (SmolLM2-135M and Qwen2.5-0.5B, their configs' shapes written out
below), the byte-level tokenizer of the tiny test models (its ids fit any vocabulary) and synthetic SST-2 sentences
and E2E-style meaning representations, so that only the working tree has to travel. Each part is a ratio against a
baseline measured in the same process (interleaved rounds, median of per-round ratios), as `bench/tools/benchmarks.py`:

1. harness training steps (`bench.harness.train.train`, methods/lora.py) vs a bare PyTorch + peft loop over the same
   pre-built batches (goal ≤ 0.85×), per shape; with the FLOPs of those steps, MFU against the device's bf16
   dense peak (datasheet table below; and against the bf16 matmul peak measured in this run);
2. decoding: `bench.harness.generation.decode` (finished rows dropped) vs `model.generate`, 64 prompts at batch
   64, 60 new tokens; a random model never ends a line, so each row is given an output length (a fixed draw, half the
   maximum on average, as the study's WebNLG decoding made tokens in 49% of its slots) through `decode`'s `stop`;
   the tokens must equal `generate`'s up to each row's length (fp32, where greedy outputs do not depend on the batch);
3. rank scoring: `bench.harness.evaluation.rank_scores` vs one pass per label word with logits everywhere (goal ≥ 2×);
4. cells per hour: K training cells (each its own process: start, CUDA context, model, LoRA, steps, scoring), one
   at a time vs as many side by side as fit the GPU's memory at the first cell's measured peak (what Snakemake's
   `--resources gpu_mem_mb=` admits) (goal ≥ 4×); their losses must agree.

On CUDA: models in bf16 (decoding fp32), report in reports/benchmarks-gpu.{md,json}. Elsewhere a quick mode (tiny
shapes, seconds; CI runs it, tests/test_benchmarks_gpu.py) writes .benchmarks/gpu-quick.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# the shapes of config.json of SmolLM2-135M (converted from its package's GGUF) and Qwen2.5-0.5B
SHAPES = {
    "smollm2-135m": {
        "model_type": "llama",
        "hidden_size": 576,
        "intermediate_size": 1536,
        "num_hidden_layers": 30,
        "num_attention_heads": 9,
        "num_key_value_heads": 3,
        "head_dim": 64,
        "vocab_size": 49152,
        "tie_word_embeddings": True,
        "rope_theta": 100000.0,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
    },
    "qwen2.5-0.5b": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "intermediate_size": 4864,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "vocab_size": 151936,
        "tie_word_embeddings": True,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6,
    },
}
QUICK_SHAPE = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 8,
    "vocab_size": 512,
}
# dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s, without sparsity), by device-name substring
BF16_PEAKS = (
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989.4e12),
    ("H200", 989.4e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
)
NEVER = 2**31 - 1  # an end token no model emits: decoding's rows end by their given lengths only
PARTS = {  # per mode: train steps per round, rounds, decode (prompts, batch, new tokens), rank examples, cells, steps
    "gpu": {"steps": 10, "rounds": 3, "decode": (64, 64, 60), "rank": 256, "cells": 8, "cell_steps": 30},
    "quick": {"steps": 2, "rounds": 2, "decode": (12, 6, 10), "rank": 16, "cells": 2, "cell_steps": 2},
}


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def bf16_peak(name: str | None) -> float | None:
    for key, peak in BF16_PEAKS:
        if name and key in name:
            return peak
    return None


def tokenizer():
    from bench.harness.models import load_model

    return load_model("tiny-llama")[1]


def random_model(shape: str, quick: bool, dtype=None, seed: int = 0):
    """A randomly initialised causal LM of `shape`'s configuration (quick: the same family, tiny), on the device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = {**SHAPES[shape], **(QUICK_SHAPE if quick else {})}
    config = AutoConfig.for_model(values.pop("model_type"), **values, pad_token_id=0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    device = _device()
    return model.to(device, dtype=dtype or (torch.bfloat16 if device == "cuda" else torch.float32)).eval()


WORDS = (
    "the",
    "film",
    "is",
    "a",
    "quiet",
    ",",
    "moving",
    "portrait",
    "of",
    "grief",
    ";",
    "dull",
    "and",
    "overlong",
    "it",
    "never",
    "finds",
    "its",
    "voice",
    "but",
    "cast",
    "keeps",
    "alive",
    "with",
    "warmth",
    "wit",
)
FOODS, AREAS = ("Italian", "French", "Chinese", "English", "Indian", "Japanese"), ("riverside", "city centre")


def sst2_examples(n: int):
    import random

    from bench.harness.tasks import Example

    rng = random.Random(0)
    return [
        Example(fields={"sentence": " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 28)))}, label=i % 2)
        for i in range(n)
    ]


def e2e_prompts(n: int) -> list[str]:
    import random

    rng = random.Random(1)
    return [
        f"name[The {rng.choice(WORDS).title()}], eatType[restaurant], food[{rng.choice(FOODS)}], "
        f"priceRange[{rng.choice(('cheap', 'moderate', 'high'))}], area[{rng.choice(AREAS)}]"
        + ", familyFriendly[yes]" * rng.randint(0, 1)
        + "\nDescription:"
        for _ in range(n)
    ]


def paired(base, ours, rounds: int) -> dict:
    """Interleaved rounds (B O, O B, ...) after one untimed warm-up of each; per-round base / ours time."""

    def timed(fn):
        _sync()
        start = time.perf_counter()
        out = fn()
        _sync()
        return time.perf_counter() - start, out

    base(), ours()
    base_s, ours_s, outs = [], [], {}
    for r in range(rounds):
        order = ((base_s, base, "base"), (ours_s, ours, "ours"))
        for times, fn, name in order if r % 2 == 0 else order[::-1]:
            seconds, outs[name] = timed(fn)
            times.append(seconds)
    per_round = [b / o for b, o in zip(base_s, ours_s)]
    return {
        "base_s": [round(t, 4) for t in base_s],
        "ours_s": [round(t, 4) for t in ours_s],
        "per_round": [round(x, 4) for x in per_round],
        "base_over_ours": statistics.median(per_round),
        "outs": outs,
    }


def part_train(shape: str, quick: bool, plan: dict, tok, peak: float | None, measured_peak: float) -> dict:
    import itertools

    import torch

    from bench.harness.batches import training_batches
    from bench.harness.cell import seed_everything
    from bench.harness.flops import flops_per_step, lm_head_parameters, token_path_parameters
    from bench.harness.kinds.causal_lm import target_positions
    from bench.harness.method import CellContext, get_method, resolve_hparams
    from bench.harness.tasks import get_task
    from bench.harness.train import train
    from bench.tools.benchmarks import SST2_HP, bare_peft_lora, bare_train

    task, method = get_task("sst2"), get_method("lora")
    hp = resolve_hparams(method, {**SST2_HP, "lr": 1e-3, "r": 8, "alpha": 16, "steps": plan["steps"]})
    examples = sst2_examples(200)
    seed_everything(0)
    ours_model = method.apply(
        random_model(shape, quick),
        hp,
        CellContext(task=task, model_kind="causal_lm", tokenizer=tok, train_examples=examples),
    )
    seed_everything(0)
    bare_model = bare_peft_lora(random_model(shape, quick), hp)
    device = _device()

    def batches():
        return training_batches(tok, task, "causal_lm", examples, hp["batch_size"], hp["max_len"], 0)

    prebuilt = [{k: v.to(device) for k, v in b.items()} for b in itertools.islice(batches(), hp["steps"])]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else torch.autocast("cpu", enabled=False)
    )
    with autocast:
        result = paired(
            lambda: bare_train(bare_model, prebuilt, hp["lr"], hp["grad_clip"]),
            lambda: train(ours_model, method, hp, batches(), "causal_lm", progress="bench").losses,
            plan["rounds"],
        )
    tokens = sum(int(b["attention_mask"].sum()) for b in prebuilt)
    n_params, trainable = token_path_parameters(ours_model)
    heads = sum(int(target_positions(b["labels"])[0].sum()) for b in prebuilt)
    flops = flops_per_step(
        n_params,
        False,
        tokens,
        trainable_params=trainable,
        head_params=lm_head_parameters(ours_model),
        head_positions=heads,
    )
    ours_round = statistics.median(result["ours_s"])
    diff = max(abs(a - b) for a, b in zip(result["outs"]["ours"], result["outs"]["base"]))
    achieved = flops / ours_round
    return {
        "shape": shape,
        "harness_over_bare": 1 / result["base_over_ours"],
        "goal": "<= 0.85",
        "per_round": [round(1 / r, 4) for r in result["per_round"]],
        "bare_s": result["base_s"],
        "harness_s": result["ours_s"],
        "steps": hp["steps"],
        "batch_size": hp["batch_size"],
        "tokens_per_step": tokens / hp["steps"],
        "flops_per_step": flops / hp["steps"],
        "achieved_flops_per_s": achieved,
        "mfu_datasheet": achieved / peak if peak else None,
        "mfu_measured_peak": achieved / measured_peak,
        "max_loss_diff": diff,
        "losses_agree": diff < (5e-2 if device == "cuda" else 1e-4),
    }


def part_decode(shape: str, quick: bool, plan: dict, tok) -> dict:
    import random

    import torch

    from bench.harness.generation import decode
    from bench.harness.tokens import pad, prompt_ids

    n, batch, new = plan["decode"]
    model = random_model(shape, quick, dtype=torch.float32)
    rng = random.Random(2)
    lengths = [rng.randint(max(1, new // 8), new - new // 8) for _ in range(n)]  # mean: half the maximum
    encoded = sorted((prompt_ids(tok, p)[-128:] for p in e2e_prompts(n)), key=len)
    chunks = [list(range(s, min(s + batch, n))) for s in range(0, n, batch)]
    device = _device()
    inputs = [pad([encoded[i] for i in chunk], tok.pad_token_id, side="left") for chunk in chunks]
    inputs = [(ids.to(device), mask.to(device)) for ids, mask in inputs]

    def run(drop: bool):
        out = []
        for chunk, (ids, mask) in zip(chunks, inputs):
            if drop:
                generated = decode(
                    model, ids, mask, new, tok.pad_token_id, NEVER, stop=Lengths([lengths[i] for i in chunk], device)
                )
            else:
                generated = decode(model, ids, mask, new, tok.pad_token_id, NEVER, drop_finished=False)
            out += [row[ids.shape[1] : ids.shape[1] + lengths[i]].tolist() for i, row in zip(chunk, generated)]
        return out

    result = paired(lambda: run(False), lambda: run(True), plan["rounds"])
    equal = result["outs"]["ours"] == result["outs"]["base"]
    return {
        "shape": shape,
        "speedup": result["base_over_ours"],
        "per_round": result["per_round"],
        "generate_s": result["base_s"],
        "dropped_s": result["ours_s"],
        "prompts": n,
        "batch_size": batch,
        "max_new_tokens": new,
        "slot_share": sum(lengths) / (n * new),
        "dtype": "float32",
        "outputs_equal": equal,
    }


class Lengths:
    """`decode`'s `stop` ending batch row r after `ends[r]` tokens; it follows which rows are live (`decode` drops
    exactly the rows it reports done, since no row emits the end token NEVER)."""

    def __init__(self, ends, device):
        import torch

        self.ends = torch.tensor(ends, device=device)
        self.live = torch.arange(len(ends), device=device)

    def __call__(self, new_tokens, tokens):
        done = self.ends[self.live] <= new_tokens.shape[1]
        self.live = self.live[~done]
        return done


def part_rank(shape: str, quick: bool, plan: dict, tok) -> dict:
    from bench.harness.evaluation import rank_scores
    from bench.harness.tasks import get_task
    from bench.tools.benchmarks import per_label_scores

    task = get_task("sst2")
    model = random_model(shape, quick)
    examples = sst2_examples(plan["rank"])
    result = paired(
        lambda: per_label_scores(model, tok, task, examples, 32, 64, only_scored_logits=False),
        lambda: rank_scores(model, tok, task, examples, 32, 64),
        plan["rounds"],
    )
    diff = float((result["outs"]["ours"] - result["outs"]["base"]).abs().max())
    agree = float((result["outs"]["ours"].argmax(-1) == result["outs"]["base"].argmax(-1)).float().mean())
    return {
        "shape": shape,
        "speedup": result["base_over_ours"],
        "per_round": result["per_round"],
        "per_label_s": result["base_s"],
        "rank_scores_s": result["ours_s"],
        "examples": len(examples),
        "max_score_diff": diff,
        "prediction_agreement": agree,
        "dtype": str(next(model.parameters()).dtype),
        "scores_agree": diff < (0.25 if _device() == "cuda" else 1e-4),
    }


def run_cell(shape: str, quick: bool, steps: int, seed: int) -> dict:
    """One training cell, as `python -m bench benchmarks-gpu-cell` runs it in its own process."""
    import torch

    from bench.harness.batches import training_batches
    from bench.harness.cell import seed_everything
    from bench.harness.evaluation import rank_scores
    from bench.harness.method import CellContext, get_method, resolve_hparams
    from bench.harness.tasks import get_task
    from bench.harness.train import train

    start = time.perf_counter()
    tok, task, method = tokenizer(), get_task("sst2"), get_method("lora")
    hp = resolve_hparams(method, {"max_len": 64, "batch_size": 8, "lr": 1e-3, "r": 8, "alpha": 16, "steps": steps})
    examples = sst2_examples(200)
    seed_everything(seed)
    model = method.apply(
        random_model(shape, quick, seed=seed),
        hp,
        CellContext(task=task, model_kind="causal_lm", tokenizer=tok, train_examples=examples, seed=seed),
    )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if _device() == "cuda" else torch.autocast("cpu", enabled=False)
    )
    with autocast:
        losses = train(
            model,
            method,
            hp,
            training_batches(tok, task, "causal_lm", examples, 8, 64, seed),
            "causal_lm",
            progress="bench",
        ).losses
        scores = rank_scores(model.eval(), tok, task, sst2_examples(64), 32, 64)
    peak = torch.cuda.max_memory_allocated() if _device() == "cuda" else 0
    return {
        "losses": losses,
        "accuracy": float((scores.argmax(-1) == torch.arange(64) % 2).float().mean()),
        "peak_mem_bytes": peak,
        "seconds": time.perf_counter() - start,
    }


def part_packing(shape: str, quick: bool, plan: dict, out: Path) -> dict:
    import torch

    cells, steps = plan["cells"], plan["cell_steps"]

    def launch(seeds, folder):
        folder.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        return [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.tools.benchmarks_gpu",
                    "cell",
                    "--shape",
                    shape,
                    "--steps",
                    str(steps),
                    "--seed",
                    str(s),
                    "--out",
                    str(folder / f"cell{s}.json"),
                ]
                + (["--quick"] if quick else []),
                cwd=PROJECT_ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=open(folder / f"cell{s}.log", "w"),
            )
            for s in seeds
        ]

    def wait(processes, folder):
        for p in processes:
            if p.wait() != 0:
                raise RuntimeError(
                    f"a packing cell failed:\n{''.join(f.read_text()[-2000:] for f in folder.glob('*.log'))}"
                )

    start = time.perf_counter()
    for seed in range(cells):
        wait(launch([seed], out / "one"), out / "one")
    alone_s = time.perf_counter() - start
    alone = [json.loads((out / "one" / f"cell{s}.json").read_text()) for s in range(cells)]
    if _device() == "cuda":
        per_cell = max(r["peak_mem_bytes"] for r in alone) + 600 * 2**20  # + the CUDA context of a process
        at_once = max(1, min(cells, int(0.9 * torch.cuda.get_device_properties(0).total_memory // per_cell)))
    else:
        per_cell, at_once = 0, max(1, min(cells, os.cpu_count() or 1))
    start = time.perf_counter()
    for first in range(0, cells, at_once):
        wait(launch(range(first, min(cells, first + at_once)), out / "packed"), out / "packed")
    packed_s = time.perf_counter() - start
    packed = [json.loads((out / "packed" / f"cell{s}.json").read_text()) for s in range(cells)]
    tolerance = 1e-3 if _device() == "cuda" else 0.0
    agree = all(
        abs(a - b) <= tolerance * max(1.0, abs(a))
        for x, y in zip(alone, packed)
        for a, b in zip(x["losses"], y["losses"])
    )
    return {
        "shape": shape,
        "cells": cells,
        "steps": steps,
        "at_once": at_once,
        "gpu_mem_mb_per_cell": per_cell // 2**20,
        "one_at_a_time_s": round(alone_s, 2),
        "packed_s": round(packed_s, 2),
        "cells_per_hour": {
            "one_at_a_time": round(3600 * cells / alone_s, 1),
            "packed": round(3600 * cells / packed_s, 1),
        },
        "speedup": alone_s / packed_s,
        "goal": ">= 4",
        "losses_agree": agree,
    }


def measure(out_json: Path, quick: bool) -> dict:
    import datetime as dt
    import tempfile

    import torch

    from bench.harness.flops import measure_matmul_peak
    from bench.tools.benchmarks import machine

    plan = PARTS["quick" if quick else "gpu"]
    device, started = _device(), time.perf_counter()
    torch.set_num_threads(1) if device == "cpu" else None
    name = torch.cuda.get_device_name(0) if device == "cuda" else None
    measured_peak = measure_matmul_peak(1, device, size=8192 if device == "cuda" else 256)
    tok, shapes = tokenizer(), list(SHAPES)
    data = {
        "mode": "quick" if quick else "gpu",
        "device": device,
        "device_name": name,
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "bf16_peak_datasheet": bf16_peak(name),
        "matmul_peak_measured": measured_peak,
        "train": [part_train(s, quick, plan, tok, bf16_peak(name), measured_peak) for s in shapes],
        "decode": [part_decode(s, quick, plan, tok) for s in shapes],
        "rank": [part_rank(shapes[0], quick, plan, tok)],
    }
    with tempfile.TemporaryDirectory() as tmp:
        data["packing"] = part_packing(shapes[0], quick, plan, Path(tmp))
    data["wall_s"] = time.perf_counter() - started
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(data, indent=2) + "\n")
    out_json.with_suffix(".md").write_text(render(data))
    return data


def _rounds(values) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


QUICK_NOTE = (
    "**Quick mode: tiny shapes on CPU. It shows the check runs end to end; its ratios say nothing about a GPU.**"
)


def render(data: dict) -> str:
    m = data["machine"]
    quick = data["mode"] == "quick"
    load = ", ".join(f"{x:.2f}" for x in m["load_avg"]) if m["load_avg"] else "n/a"
    intro = (
        f"`python -m bench benchmarks --gpu` on {data['date']}, {data['wall_s']:.0f} s. Device: "
        f"{data['device_name'] or 'CPU (no CUDA device)'}; {m['cpu']}, {m['cores']} cores, torch {m['torch']}; "
        f"load average at start {load}. Random-initialised models of the real shapes (bench/tools/benchmarks_gpu.py), "
        "synthetic inputs; every ratio against a baseline in the same process, interleaved rounds, median of "
        "per-round ratios."
    )
    lines = [f"# GPU check ({data['mode']} mode)", "", intro, ""]
    if quick:
        lines += [QUICK_NOTE, ""]
    peak = data["bf16_peak_datasheet"]
    lines += [
        (
            f"Peaks: datasheet bf16 dense {peak / 1e12:.0f} TFLOP/s"
            if peak
            else "Peaks: no datasheet entry for this device"
        )
        + f"; measured matmul peak in this run {data['matmul_peak_measured'] / 1e12:.3f} "
        "TFLOP/s.",
        "",
    ]
    lines += ["| part | shape | measured | goal | rounds | check |", "|---|---|---|---|---|---|"]
    for r in data["train"]:
        lines.append(
            f"| harness / bare loop, training steps (LoRA, SST-2 batch {r['batch_size']}) | {r['shape']} | "
            f"{r['harness_over_bare']:.3f}× | ≤ 0.85× | {_rounds(r['per_round'])} | losses within "
            f"{r['max_loss_diff']:.1e}: {'yes' if r['losses_agree'] else '**no**'} |"
        )
    for r in data["train"]:
        mfu = f"{r['mfu_datasheet']:.1%} of datasheet bf16" if r["mfu_datasheet"] is not None else "–"
        lines.append(
            f"| MFU of those steps | {r['shape']} | {mfu}; {r['mfu_measured_peak']:.1%} of measured peak "
            f"({r['achieved_flops_per_s'] / 1e12:.3f} TFLOP/s) | reported | – | – |"
        )
    for r in data["decode"]:
        lines.append(
            f"| decoding, finished rows dropped vs `generate` ({r['prompts']} prompts, batch "
            f"{r['batch_size']}, {r['max_new_tokens']} new, {r['slot_share']:.0%} of slots used) | "
            f"{r['shape']} | {r['speedup']:.2f}× | ≥ 1.6× | {_rounds(r['per_round'])} | tokens equal: "
            f"{'yes' if r['outputs_equal'] else '**no**'} |"
        )
    for r in data["rank"]:
        lines.append(
            f"| `rank_scores` vs one pass per label ({r['examples']} sentences, {r['dtype']}) | "
            f"{r['shape']} | {r['speedup']:.2f}× | ≥ 2× | {_rounds(r['per_round'])} | max |Δ| "
            f"{r['max_score_diff']:.1e}, {r['prediction_agreement']:.0%} same label: "
            f"{'yes' if r['scores_agree'] else '**no**'} |"
        )
    p = data["packing"]
    lines.append(
        f"| cells per hour, {p['at_once']} side by side vs one at a time ({p['cells']} cells of "
        f"{p['steps']} steps, {p['gpu_mem_mb_per_cell']} MB each) | {p['shape']} | {p['speedup']:.2f}× "
        f"({p['cells_per_hour']['packed']:.0f} vs {p['cells_per_hour']['one_at_a_time']:.0f} cells/h) | "
        f"≥ 4× | – | losses agree: {'yes' if p['losses_agree'] else '**no**'} |"
    )
    lines += ["", "Raw numbers (every round's seconds): the JSON beside this file."]
    return "\n".join(lines) + "\n"


def checks_pass(data: dict) -> bool:
    return (
        all(r["losses_agree"] for r in data["train"])
        and all(r["outputs_equal"] for r in data["decode"])
        and all(r["scores_agree"] for r in data["rank"])
        and data["packing"]["losses_agree"]
    )


def default_output() -> Path:
    return PROJECT_ROOT / ("reports/benchmarks-gpu.json" if _device() == "cuda" else ".benchmarks/gpu-quick.json")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.benchmarks_gpu")
    sub = parser.add_subparsers(dest="command", required=True)
    cell = sub.add_parser("cell", help="internal: one packing cell, in its own process")
    cell.add_argument("--shape", required=True, choices=sorted(SHAPES))
    cell.add_argument("--steps", type=int, required=True)
    cell.add_argument("--seed", type=int, default=0)
    cell.add_argument("--quick", action="store_true")
    cell.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    Path(args.out).write_text(json.dumps(run_cell(args.shape, args.quick, args.steps, args.seed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
