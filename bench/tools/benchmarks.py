"""`python -m bench benchmarks [--quick]`: measure our own machinery against baselines, as ratios.

Every number here is a ratio against a baseline measured in the same process (or, for memory, the same
fresh subprocess), interleaved round by round, because the machine is shared and noisy: an absolute
time says more about the neighbours than about the code. Benchmarks report; they never fail on speed.
They do fail where a correctness claim breaks (greedy outputs differ, scores differ, the bare training
loop computes other losses).

What is measured (tests/benchmarks/, one file per item):

1. harness training step: bench.harness.train.train + bench.harness.batches.training_batches + methods/lora.py against a
   bare PyTorch + peft loop over the same pre-built batches (same model, data, optimizer and clipping), on SST-2- and
   on E2E-shaped batches. The harness should be faster: it computes logits only where the loss reads them.
2. decoding: bench.harness.evaluation.generate (batched, left-padded, KV-cached, greedy) against one example at a
   time without a KV cache (`use_cache=False`, batch 1); also batch 1 with the cache, to split the gain.
3. rank scoring: bench.harness.evaluation.rank_scores (all label words in one pass) against one forward per label
   word over the batch (with and without computing logits only where scored).
4. memory: peak memory of a training run per method in a fresh subprocess (peak RSS reset after the model
   is loaded) against an analytic estimate (gradients + optimizer states + activations; weights are in
   the baseline).
5. FLOPs and MFU: bench.harness.flops on the runs of items 1 and 4, against this machine's measured matmul peak.
6. planning: `snakemake -n` on generated grids of 100 / 1,000 / 10,000 cells; on the largest, against bare
   Snakemake planning as many jobs from a static Snakefile of the same shape (its per-job cost is the floor).
8. packing: cells per hour on one device, K cells (`python -m bench run-cell`, one process each) all side by side
   (on a GPU: all on device 0, as `--resources gpu_mem_mb=...` lets Snakemake run them; on CPU: as many at once
   as there are cores) against the same cells one at a time; the side-by-side records must hold the same metrics.
11. decoding without the wait: bench.harness.evaluation.generate through bench.harness.generation.decode
   (finished rows leave the batch and its KV cache) against the same call with `drop_finished=False`
   (`model.generate`), on study-webnlg's and study-e2e's settings, with a LoRA delta trained a few steps first;
   equal outputs.
The GPU check (`--gpu`) is bench/tools/benchmarks_gpu.py: no pytest, its own report.

Modes: `full` (default; SmolLM2-135M, the settings of the default grid) and `--quick` (tiny random
models, fewer rounds; the CI mode). Threads: one torch thread unless `--threads`.
Outputs: full -> reports/benchmarks.json + reports/benchmarks.md; quick -> .benchmarks/quick.json +
.benchmarks/quick.md (git-ignored, so a quick run never overwrites the committed full report).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODE_ENV, THREADS_ENV, ENABLE_ENV = "PEFT_REPRO_BENCH_MODE", "PEFT_REPRO_BENCH_THREADS", "PEFT_REPRO_BENCHMARKS"

# The default grid's SST-2 / E2E settings (config/grids/smoke.yaml) and each method's own defaults.
SMOKE_HP = {
    "full_ft": {"lr": 2e-5},
    "lora": {"lr": 1e-3, "r": 8, "alpha": 16},
    "prompt_tuning": {},
    "prefix_tuning": {},
}
SST2_HP = {"max_len": 64, "batch_size": 8, "eval_batch_size": 16}
E2E_HP = {"batch_size": 4, "eval_batch_size": 16}


@dataclass(frozen=True)
class Settings:
    mode: str
    model: str
    train_steps: int  # optimizer steps per timed round (item 1)
    train_rounds: int
    decode_examples: int  # E2E test MRs (item 2)
    decode_batch: int
    max_new_tokens: int
    decode_rounds: int
    rank_examples: int  # SST-2 dev sentences (item 3)
    rank_rounds: int
    memory_steps: int  # training steps per memory subprocess (item 4)
    memory_methods: tuple[str, ...]
    planning_cells: tuple[int, ...]  # item 6
    warmup_rounds: int = 1
    packing_cells: int = 2  # item 8: cells run one at a time, then side by side on the device
    packing_steps: int = 3
    serve_steps: int = 2  # item 9: training steps of each cell whose delta joins the mix
    serve_examples: int = 12  # eval examples per cell (task) in the mixed batches; eval_limit of cells it trains
    serve_rounds: int = 2  # item 9: interleaved passes of mixed batches and both separate baselines
    serve_ks: tuple[int, ...] = (2,)  # item 9: numbers of tasks (deltas) mixed, each measured on its own


MODES = {
    "full": Settings(
        "full",
        "smollm2-135m",
        train_steps=3,
        train_rounds=4,
        decode_examples=16,
        decode_batch=16,
        max_new_tokens=40,
        decode_rounds=1,
        rank_examples=16,
        rank_rounds=2,
        memory_steps=3,
        memory_methods=("full_ft", "lora", "prompt_tuning", "prefix_tuning"),
        planning_cells=(100, 1000, 10000),
        packing_cells=8,
        packing_steps=20,
        serve_steps=5,
        serve_examples=16,
        serve_rounds=1,
        serve_ks=(2, 4, 8),
    ),
    "quick": Settings(
        "quick",
        "tiny-llama",
        train_steps=3,
        train_rounds=3,
        decode_examples=6,
        decode_batch=6,
        max_new_tokens=16,
        decode_rounds=2,
        rank_examples=16,
        rank_rounds=3,
        memory_steps=2,
        memory_methods=("full_ft", "lora", "prompt_tuning", "prefix_tuning"),
        planning_cells=(100, 1000),
        serve_ks=(2, 4, 8),
    ),
}

GOALS = {  # item -> (ratio label, comparison, threshold)
    "train_overhead": ("harness / bare loop time", "<=", 0.85),
    "train_overhead_e2e": ("harness / bare loop time", "<=", 0.85),
    "decode_speedup": ("one-at-a-time no-cache / ours time", ">=", 10.0),
    "rank_speedup": ("per-label passes / ours time", ">=", 2.0),
    "memory_truth": ("measured / estimated peak increase", "within", (0.67, 1.5)),
    "planning_growth": ("per-cell planning cost, last decade / previous decade", "<=", 1.5),
    "planning_overhead": ("ours / bare Snakemake `-n` time, as many jobs", None, None),  # attributes time, no goal
    "packing": ("cells per hour, side by side / one at a time", ">=", 4.0),
    **{
        f"serve_mixed_{kind}_k{k}": ("k separate models / mixed batches time", ">=", 1.0)
        for kind in ("lora", "prompt")
        for k in (2, 4, 8)
    },
    "bf16_train": ("fp32 / bf16 time", ">=", 1.3),
    "bf16_rank": ("fp32 / bf16 time", ">=", 1.3),
    "decode_drop_webnlg": ("today's `generate` / finished rows dropped, time", ">=", 1.6),
    "decode_drop_e2e": ("today's `generate` / finished rows dropped, time", ">=", 1.2),
}

# item 11 (tests/benchmarks/test_11_decode_drop.py): per mode and case, (task, eval examples, eval batch size,
# max new tokens, timed rounds, LoRA training steps before decoding); full mode: study-webnlg's and study-e2e's
# decoding settings, on a model trained (as the study's LoRA cells, fewer steps) to write the task's one line
DECODE_DROP = {
    "full": {"webnlg": ("webnlg", 64, 64, 60, 2, 24), "e2e": ("e2e", 48, 16, 40, 2, 24)},
    "quick": {"webnlg": ("webnlg", 8, 8, 12, 2, 2), "e2e": ("e2e", 8, 4, 12, 2, 2)},
}


def settings() -> Settings:
    return MODES[os.environ.get(MODE_ENV, "quick")]


def bench_threads() -> int:
    return int(os.environ.get(THREADS_ENV, "1"))


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load(model_name: str, dtype=None):
    """(model, tokenizer) on the benchmark device: fp32 on CPU, bf16 on CUDA (or `dtype` there)."""
    import torch

    from bench.harness.models import load_model

    model, tokenizer, _ = load_model(model_name)
    if device() == "cuda":
        model = model.to("cuda", dtype=dtype or torch.bfloat16)
    return model, tokenizer


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def met(item: str, value: float) -> bool:
    _, comparison, threshold = GOALS[item]
    if comparison == "<=":
        return value <= threshold
    if comparison == ">=":
        return value >= threshold
    low, high = threshold
    return low <= value <= high


def goal_text(item: str) -> str:
    _, comparison, threshold = GOALS[item]
    if comparison is None:
        return "reported, no goal"
    if comparison == "within":
        return f"{threshold[0]}–{threshold[1]}×"
    return f"{'≤' if comparison == '<=' else '≥'} {threshold:g}×"


# ----------------------------------------------------------------------------- paired timing
class Paired:
    """Interleaved rounds: each round runs every baseline once (in pytest-benchmark's untimed `setup` or
    `teardown`) and ours once (the benchmark's timed target), alternating which goes first (B O, O B, ...)
    so neither side always inherits warm caches. Ratios are taken per round, then the median over rounds,
    so slow phases of a noisy machine hit both sides of a ratio alike."""

    def __init__(self, baselines: dict, ours, warmup_rounds: int):
        self.baselines, self.ours, self.warmup = baselines, ours, warmup_rounds
        self.base_s: dict[str, list[float]] = {name: [] for name in baselines}
        self.ours_s: list[float] = []
        self.base_outs: dict[str, list] = {name: [] for name in baselines}
        self.ours_outs: list = []
        self.round = 0

    def setup(self):
        if self.round % 2 == 0:
            self.run_baselines()

    def teardown(self, *args, **kwargs):
        if self.round % 2 == 1:
            self.run_baselines()
        self.round += 1

    def run_baselines(self):
        for name, fn in self.baselines.items():
            sync()
            start = time.perf_counter()
            out = fn()
            sync()
            self.base_s[name].append(time.perf_counter() - start)
            self.base_outs[name].append(out)

    def target(self):
        sync()
        start = time.perf_counter()
        out = self.ours()
        sync()
        self.ours_s.append(time.perf_counter() - start)
        self.ours_outs.append(out)
        return out

    def run(self, benchmark, rounds: int):
        benchmark.pedantic(
            self.target,
            setup=self.setup,
            teardown=self.teardown,
            rounds=rounds,
            warmup_rounds=self.warmup,
            iterations=1,
        )
        return self

    def timed(self, name: str | None = None) -> list[float]:
        values = self.ours_s if name is None else self.base_s[name]
        return values[self.warmup :] or values  # --benchmark-disable runs one round, no warm-up

    def ratio(self, name: str, ours_over_base: bool) -> dict:
        base, ours = self.timed(name), self.timed()
        per_round = [(o / b if ours_over_base else b / o) for b, o in zip(base, ours)]
        return {
            "ratio": statistics.median(per_round),
            "per_round": [round(r, 4) for r in per_round],
            "ratio_of_mins": (min(ours) / min(base)) if ours_over_base else (min(base) / min(ours)),
            "baseline_s": [round(t, 4) for t in base],
            "ours_s": [round(t, 4) for t in ours],
        }


def record(benchmark, item: str, **info) -> None:
    ratio = info.get("ratio")
    goal, label = (goal_text(item), GOALS[item][0]) if item in GOALS else ("reported, no goal", "")
    benchmark.extra_info.update(
        {
            "item": item,
            "goal": goal,
            "ratio_label": label,
            "mode": settings().mode,
            "threads": bench_threads(),
            "device": device(),
            **info,
        }
    )
    if ratio is not None and item in GOALS and GOALS[item][1] is not None:
        benchmark.extra_info["met"] = met(item, ratio)


# ----------------------------------------------------------------------------- item 1: training
class StepClock:
    """Wraps a batch iterator and notes when each batch is pulled: bench.harness.train.train pulls one batch at the
    start of each step, so consecutive pulls delimit steps (the last step ends at `stop()`)."""

    def __init__(self, batches, extra_positions: int = 0):
        self.batches, self.extra, self.pulls, self.positions, self.padded, self.heads = (
            batches,
            extra_positions,
            [],
            [],
            [],
            [],
        )

    def __iter__(self):
        return self

    def __next__(self):
        from bench.harness.kinds.causal_lm import target_positions

        sync()
        self.pulls.append(time.perf_counter())
        batch = next(self.batches)
        self.positions.append((int(batch["attention_mask"].sum()), int(batch["input_ids"].shape[0])))
        self.padded.append(int(batch["input_ids"].numel()))
        self.heads.append(int(target_positions(batch["labels"], self.extra)[0].sum()))  # where the LM head runs
        return batch

    def stop(self) -> list[float]:
        sync()
        ends = self.pulls[1:] + [time.perf_counter()]
        return [e - s for s, e in zip(self.pulls, ends)]


def bare_peft_lora(model, hp: dict):
    """What a bare peft user writes: LoraConfig + get_peft_model (peft picks q_proj/v_proj for Llama)."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model, LoraConfig(r=hp["r"], lora_alpha=hp["alpha"], lora_dropout=hp["dropout"], task_type="CAUSAL_LM")
    )


def bare_train(model, batches: list[dict], lr: float, grad_clip: float) -> list[float]:
    """A bare PyTorch loop over pre-built batches: forward, backward, clip, AdamW, zero_grad."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    losses = []
    for batch in batches:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()
    return losses


# ----------------------------------------------------------------------------- item 2: decoding
def generate_one_at_a_time_no_cache(model, tokenizer, prompts, max_new_tokens: int, max_len: int) -> list[str]:
    """Greedy decoding, one prompt at a time, recomputing the whole sequence for every new token."""
    import torch

    from bench.harness.tokens import clean_generation, prompt_ids

    outputs = []
    with torch.no_grad():
        for prompt in prompts:
            ids = torch.tensor([prompt_ids(tokenizer, prompt)[-max_len:]], device=model.device)
            generated = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                num_beams=1,
                max_new_tokens=max_new_tokens,
                use_cache=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
            outputs.append(
                clean_generation(tokenizer.decode(generated[0, ids.shape[1] :].cpu(), skip_special_tokens=True))
            )
    return outputs


# ----------------------------------------------------------------------------- item 3: rank scoring
def per_label_scores(model, tokenizer, task, examples, batch_size: int, max_len: int, only_scored_logits: bool):
    """Scores as bench.harness.evaluation.rank_scores, but one forward pass per label word over each batch of
    examples (the label's own sequences prompt + label[:-1]); logits everywhere or only where scored."""
    import torch

    from bench.harness.tokens import continuation_ids, pad, prompt_ids

    label_ids = [continuation_ids(tokenizer, word) for word in task.verbalizer]
    room = max_len - max(len(ids) for ids in label_ids)
    prompts = [prompt_ids(tokenizer, task.prompt(ex))[-room:] for ex in examples]
    scores = torch.zeros(len(examples), len(label_ids))
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            chunk = list(range(start, min(start + batch_size, len(examples))))
            for j, ids in enumerate(label_ids):
                input_ids, mask = pad([prompts[i] + ids[:-1] for i in chunk], tokenizer.pad_token_id)
                kwargs = {}
                if only_scored_logits:
                    wanted = sorted({len(prompts[i]) - 1 + k for i in chunk for k in range(len(ids))})
                    kwargs["logits_to_keep"] = torch.tensor(wanted, device=model.device)
                logits = model(
                    input_ids=input_ids.to(model.device), attention_mask=mask.to(model.device), **kwargs
                ).logits
                logprobs = torch.log_softmax(logits.float(), dim=-1).cpu()
                column = {p: c for c, p in enumerate(wanted)} if only_scored_logits else None
                for b, i in enumerate(chunk):
                    first = len(prompts[i]) - 1
                    positions = [first + k for k in range(len(ids))]
                    cols = [column[p] for p in positions] if column else positions
                    scores[i, j] = sum(logprobs[b, c, t].item() for c, t in zip(cols, ids))
    return scores


# ----------------------------------------------------------------------------- item 4: memory
def analytic_memory(
    config,
    n_params: int,
    trainable: list,
    tunes_base: bool,
    optimizer: str,
    method: str,
    batch_positions: int,
    sequences: int,
    hp: dict,
    value_bytes: int = 4,
    trainable_bytes: list | None = None,
    head_positions: int | None = None,
) -> dict:
    """Bytes a training step adds on top of the loaded weights, itemised (fp32, 4 bytes per value).

    `value_bytes`: bytes per activation value (the model's dtype: 4 on CPU, 2 in bf16 on CUDA; the LM head's
    log-probabilities stay fp32, the loss upcasts the logits); `trainable_bytes`: bytes per value of each
    trainable parameter (its gradient and optimizer states share its dtype), 4 each if not given.
    gradients: one value per trainable parameter. optimizer: AdamW keeps two (exp_avg, exp_avg_sq);
    Adafactor (no momentum) keeps a row and a column vector per matrix, a full vector per 1-D parameter.
    activations: what autograd saves in one Llama-style block per computed position (h = hidden,
    i = MLP width), counted from the ops (transformers' Llama with SDPA; k/v expanded to all heads, as
    with a padding mask):
      - weights train (full FT): each RMSNorm keeps its input, the normalised value and that times the
        weight (3h, twice); SDPA keeps q, k, v and its output (4h); o_proj its input (h); the MLP keeps
        gate, act(gate), up and their product (4i) -> 11h + 4i;
      - frozen weights: linears keep no input (no weight gradient), norms keep their input (2h), SDPA 4h,
        the MLP gate, act and up (3i) -> 6h + 3i; LoRA adds the shared q/v input (h) and its rank-r outputs.
    Prompt tuning computes its virtual positions like real ones; prefix tuning adds p key/value positions
    per sequence at every layer. The LM head computes logits at `head_positions` (bench.harness.train: the positions
    whose next token is a target; None: every computed position) and the loss keeps their log-probabilities;
    when backward starts, the log-probabilities, their gradient and the logits' gradient coexist with every
    block's saved tensors: 3V per head position, plus the final norm at every computed position."""
    from bench.grid.gpu_memory import saved_values_per_position_layer

    h, i = config.hidden_size, config.intermediate_size
    layers, vocab = config.num_hidden_layers, config.vocab_size
    sizes = trainable_bytes or [4] * len(trainable)
    gradients = sum(b * shape_numel(s) for s, b in zip(trainable, sizes))
    if optimizer == "adamw":
        states = 2 * gradients
    else:  # adafactor, factored second moment, beta1 None
        states = sum(b * ((s[0] + s[1]) if len(s) == 2 else shape_numel(s)) for s, b in zip(trainable, sizes))
    per_position_layer = saved_values_per_position_layer(h, i, tunes_base, method, hp)
    extra_kv = 2 * h * hp["prefix_length"] * sequences * layers if method == "prefix_tuning" else 0
    head_positions = batch_positions if head_positions is None else head_positions
    final_norm = 3 * h if tunes_base else h
    activations = (
        value_bytes * (batch_positions * layers * per_position_layer + extra_kv)
        + 4 * batch_positions * final_norm
        + 4 * head_positions * 3 * vocab
    )
    total = gradients + states + activations
    return {
        "weights": 4 * n_params,
        "gradients": gradients,
        "optimizer": states,
        "activations": activations,
        "estimate": total,
        "head_backward_bytes": 4 * 2 * vocab * head_positions,
    }


def shape_numel(shape) -> int:
    return int(math.prod(shape))


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0: clear_refs 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def saved_activation_bytes(model, method, hp: dict, batch, kind: str) -> int:
    """Bytes autograd saves for backward in one training forward (bench.harness.train's), unique storages, weights
    excluded."""
    import torch

    from bench.harness.train import step_loss

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in weights:
            seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = step_loss(model, method, hp, batch, kind)
    del loss
    model.eval()
    return sum(seen.values())


def memory_probe(model_name: str, method_name: str, steps: int, threads: int) -> dict:
    """Run in a fresh process: load, adapt, measure the resident set, train `steps` steps through the
    harness (bench.harness.train.train), report the peak and its analytic estimate."""
    import torch

    from bench.harness.batches import training_batches
    from bench.harness.cell import seed_everything
    from bench.harness.flops import flops_per_step, lm_head_parameters, token_path_parameters
    from bench.harness.kinds.causal_lm import target_positions
    from bench.harness.method import CellContext, get_method, resolve_hparams, total_parameters
    from bench.harness.models import get_model_spec
    from bench.harness.tasks import get_task, train_examples
    from bench.harness.train import train

    torch.set_num_threads(threads)
    dev = device()
    task, method = get_task("sst2"), get_method(method_name)
    hp = resolve_hparams(method, {**SST2_HP, **SMOKE_HP[method_name], "steps": steps})
    examples = train_examples(task, 200, 0)
    seed_everything(0)
    model, tokenizer = load(model_name)
    ctx = CellContext(
        task=task, model_kind=get_model_spec(model_name).kind, tokenizer=tokenizer, train_examples=examples, seed=0
    )
    seed_everything(0)
    model = method.apply(model, hp, ctx).to(dev)
    n_params = total_parameters(model)
    trainable = [tuple(p.shape) for p in model.parameters() if p.requires_grad]
    trainable_bytes = [p.element_size() for p in model.parameters() if p.requires_grad]
    value_bytes = model.get_input_embeddings().weight.element_size()
    with torch.no_grad():  # page in every weight: the model's safetensors are memory-mapped and would
        for parameter in model.parameters():  # otherwise be counted when the first forward touches them
            parameter.sum()
    extra = method.extra_positions(hp)
    clock = StepClock(
        training_batches(tokenizer, task, ctx.model_kind, examples, hp["batch_size"], hp["max_len"], 0), extra
    )
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base, kind, reset = torch.cuda.memory_allocated(), "cuda_max_allocated", True
    else:
        base, kind = _status_kib("VmRSS") * 1024, "process_peak_rss (VmHWM reset after load)"
        reset = reset_peak_rss()
    result = train(model, method, hp, clock, ctx.model_kind, progress=f"memory {method_name}")
    step_s = clock.stop()
    peak = torch.cuda.max_memory_allocated() if dev == "cuda" else _status_kib("VmHWM") * 1024
    # activation memory follows the widest batch: positions computed = rows x (padded width + virtual tokens)
    batches = training_batches(tokenizer, task, ctx.model_kind, examples, hp["batch_size"], hp["max_len"], 0)
    widest = max((next(batches) for _ in range(max(1, result.steps_done))), key=lambda b: b["input_ids"].numel())
    rows, width = widest["input_ids"].shape
    head_positions = int(target_positions(widest["labels"], extra)[0].sum())
    estimate = analytic_memory(
        model.config,
        n_params,
        trainable,
        method.tunes_base,
        hp["optimizer"],
        method_name,
        rows * (width + extra),
        rows,
        hp,
        value_bytes,
        trainable_bytes,
        head_positions,
    )
    saved = saved_activation_bytes(model, method, hp, {k: v.to(dev) for k, v in widest.items()}, ctx.model_kind)
    steady = step_s[1:] if len(step_s) > 1 else step_s
    path_params, path_trainable = token_path_parameters(model)
    head = lm_head_parameters(model)
    flops = [
        flops_per_step(path_params, method.tunes_base, t, extra, s, path_trainable, head, h)
        for (t, s), h in zip(clock.positions, clock.heads)
    ]
    steady_flops = flops[1:] if len(flops) > 1 else flops
    return {
        "method": method_name,
        "model": model_name,
        "steps": result.steps_done,
        "device": dev,
        "threads": threads,
        "memory_kind": kind,
        "peak_reset": reset,
        "baseline_bytes": base,
        "peak_bytes": peak,
        "measured_increase": peak - base,
        **estimate,
        "saved_activation_bytes": saved,
        "trainable_params": sum(shape_numel(s) for s in trainable),
        "total_params": n_params,
        "value_bytes": value_bytes,
        "optimizer_name": hp["optimizer"],
        "tunes_base": method.tunes_base,
        "extra_positions": extra,
        "widest_batch": [rows, width],
        "step_s": [round(s, 4) for s in step_s],
        "tokens_per_step": [t for t, _ in clock.positions],
        "sequences_per_step": [n for _, n in clock.positions],
        "padded_tokens_per_step": clock.padded,
        "flops_per_step": statistics.mean(steady_flops),
        "train_flops_per_s": sum(steady_flops) / sum(steady),
        "losses": result.losses,
    }


def run_memory_probes(model_name: str, methods, steps: int, threads: int, parallel: int = 1) -> dict:
    """One fresh subprocess per method; `parallel` > 1 runs that many at once (peak RSS is per process, so
    memory numbers stay valid; step times and MFU get noisier: quick mode only)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        futures = {m: pool.submit(run_memory_probe, model_name, m, steps, threads) for m in methods}
        return {m: future.result() for m, future in futures.items()}


def run_memory_probe(model_name: str, method_name: str, steps: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.tools.benchmarks",
            "memory-probe",
            "--model",
            model_name,
            "--method",
            method_name,
            "--steps",
            str(steps),
            "--threads",
            str(threads),
        ],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    if out.returncode != 0:
        raise RuntimeError(f"memory probe {method_name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- item 6: planning
def planning_grid(cells: int, path: Path) -> Path:
    """A grid of `cells` tiny-llama SST-2 cells: 2 methods x train sizes x seeds."""
    import yaml

    per_method = cells // 2
    seeds = max(1, min(50, per_method // 10 if per_method >= 10 else 1))
    sizes = per_method // seeds
    if cells == 1:
        methods, sizes, seeds = {"lora": {"lr": 1e-2}}, 1, 1
    else:
        methods = {"full_ft": {"lr": 1e-3}, "lora": {"lr": 1e-2}}
    assert len(methods) * sizes * seeds == cells, (cells, sizes, seeds)
    grid = {
        "description": f"{cells} planning-benchmark cells",
        "models": ["tiny-llama"],
        "methods": methods,
        "tasks": {"sst2": {"shifts": [], "eval_limit": 16, "hp": {"max_len": 48, "batch_size": 4}}},
        "train_sizes": list(range(16, 16 + sizes)),
        "seeds": list(range(seeds)),
        "hp": {"steps": 3},
    }
    path.write_text(yaml.safe_dump(grid))
    return path


BARE_SNAKEFILE = """\
# Planning baseline: as many cell jobs as a generated grid, in the same shape (one model-preparing job
# they all need, one report over every record), from static rules: what Snakemake itself costs per job.
# The cyclic GC is off, as in our Snakefile, so that the ratio compares per-job work only.
import gc

gc.disable()
CELLS = [f"results/bare/sst2/tiny/{{method}}/n{{size}}/s{{seed}}" for method in {methods!r}
         for size in {sizes!r} for seed in {seeds!r}]

rule all:
    input: "report.txt"

rule prepare_model:
    output: "models/{{model}}/manifest.json"
    shell: "touch {{output}}"

rule cell:
    input: "models/tiny/manifest.json", workflow.snakefile
    output: "results/{{grid}}/{{task}}/{{model}}/{{variant}}/n{{size}}/s{{seed}}/record.json"
    log: "results/{{grid}}/logs/{{task}}/{{model}}/{{variant}}/n{{size}}_s{{seed}}.log"
    params: args=lambda w: ["--method", w.variant, "--train-size", w.size, "--seed", w.seed]
    shell: "echo {{params.args}} > {{output}} 2> {{log}}"

rule report:
    input: [f"{{d}}/record.json" for d in CELLS]
    output: "report.txt"
    shell: "touch {{output}}"
"""


def bare_snakefile(grid: Path, path: Path) -> Path:
    """The baseline of item 6: a static Snakefile with the cells of a `planning_grid` file."""
    import yaml

    spec = yaml.safe_load(grid.read_text())
    path.write_text(
        BARE_SNAKEFILE.format(methods=list(spec["methods"]), sizes=spec["train_sizes"], seeds=spec["seeds"])
    )
    return path


def time_dry_run(
    workdir: Path, grid: Path | None = None, snakefile: Path = PROJECT_ROOT / "Snakefile", quiet: bool = False
) -> dict:
    """Wall time of `snakemake -n` (`-n -q`: build the DAG, list nothing) in `workdir` (never the project's
    results/), on our Snakefile with a grid or on another Snakefile."""
    env = {**os.environ, "PEFT_REPRO_MODELS": str(workdir / "models")}
    command = [
        sys.executable,
        "-m",
        "snakemake",
        "-n",
        *(["-q"] if quiet else []),
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        *(["--config", f"grid={grid}"] if grid else []),
    ]
    start = time.perf_counter()
    out = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        raise RuntimeError(f"snakemake -n failed on {grid or snakefile}:\n{(out.stderr or out.stdout)[-3000:]}")
    jobs = None  # -q lists nothing, not even the job counts
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "cell" and parts[1].isdigit():
            jobs = int(parts[1])
    return {"seconds": seconds, "cell_jobs": jobs}


# ----------------------------------------------------------------------------- item 11: decoding, rows dropped
def decoding_model(model_name: str, task_name: str, steps: int):
    """(model, tokenizer) with a LoRA delta trained `steps` steps on 200 of the task's training examples (study-e2e /
    study-webnlg's LoRA settings: r 8, α 16, lr 1e-3, batch 4), in eval mode: a model that writes the task's line
    and ends it, as the study's cells do (a zero-shot SmolLM2 runs on to the token limit)."""
    from bench.harness.batches import training_batches
    from bench.harness.cell import seed_everything
    from bench.harness.method import CellContext, get_method, resolve_hparams
    from bench.harness.tasks import get_task, train_examples
    from bench.harness.train import train

    task, method = get_task(task_name), get_method("lora")
    hp = resolve_hparams(method, {"lr": 1e-3, "r": 8, "alpha": 16, "batch_size": 4, "steps": steps})
    examples = train_examples(task, 200, 0)
    model, tokenizer = load(model_name)
    seed_everything(0)
    model = method.apply(
        model, hp, CellContext(task=task, model_kind="causal_lm", tokenizer=tokenizer, train_examples=examples, seed=0)
    )
    train(
        model,
        method,
        hp,
        training_batches(tokenizer, task, "causal_lm", examples, 4, hp["max_len"], 0),
        "causal_lm",
        progress="bench",
    )
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------- item 8: packing
def packing_cells(settings: Settings) -> list[list[str]]:
    """`run-cell` arguments (without --out) of the item's cells: SST-2 as in the default grid, LoRA and full FT,
    seeds 0, 1, ... until there are `packing_cells` of them."""
    tiny = settings.mode == "quick"
    shape = ["--hp", "max_len=48", "--hp", "batch_size=4"] if tiny else ["--hp", "max_len=64", "--hp", "batch_size=8"]
    methods = [
        ("lora", ["--hp", "lr=1e-2" if tiny else "lr=1e-3"]),
        ("full_ft", ["--hp", "lr=1e-3" if tiny else "lr=2e-5"]),
    ]
    cells = []
    for i in range(settings.packing_cells):
        method, hp = methods[i % 2]
        cells.append(
            [
                "--task",
                "sst2",
                "--model",
                settings.model,
                "--method",
                method,
                "--train-size",
                "200",
                "--seed",
                str(i // 2),
                "--hp",
                f"steps={settings.packing_steps}",
                *hp,
                *shape,
                "--eval-limit",
                "16" if tiny else "64",
                "--shifts",
                "",
                "--threads",
                "1",
            ]
        )
    return cells


def run_cells(cells: list[list[str]], out: Path, at_once: int) -> float:
    """Run every cell as its own `python -m bench run-cell` process, `at_once` at a time (each on device 0 when
    there is a GPU); the wall seconds until the last one finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    pending = [(i, args) for i, args in enumerate(cells)]
    running: list[tuple[int, subprocess.Popen]] = []
    start = time.perf_counter()
    while pending or running:
        while pending and len(running) < at_once:
            i, args = pending.pop(0)
            log = open(out / f"cell{i}.log", "w")
            running.append(
                (
                    i,
                    subprocess.Popen(
                        [sys.executable, "-m", "bench", "run-cell", *args, "--out", str(out / f"cell{i}")],
                        cwd=PROJECT_ROOT,
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    ),
                )
            )
        time.sleep(0.05)
        for i, process in list(running):
            if process.poll() is not None:
                running.remove((i, process))
                if process.returncode != 0:
                    raise RuntimeError(f"cell {i} failed:\n{(out / f'cell{i}.log').read_text()[-3000:]}")
    return time.perf_counter() - start


def packed_parallelism(cells: int) -> int:
    """Cells side by side: all of them on a GPU (they share device 0); on CPU one per core (one thread each)."""
    return cells if device() == "cuda" else max(1, min(cells, os.cpu_count() or 1))


# ----------------------------------------------------------------------------- report
def machine() -> dict:
    import torch

    from bench.harness.flops import device_name

    cpu = device_name("cpu")
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        have = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
        flags = ", ".join(f for f in ("avx2", "fma", "avx512f", "amx_tile") if f in have)
    except (OSError, StopIteration):
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu,
        "cpu_flags": flags,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "load_avg": load,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _fmt_bytes(n: float) -> str:
    return f"{n / 2**20:,.0f} MiB" if abs(n) >= 2**20 else f"{n / 1024:,.1f} KiB"


def _junit_outcomes(path: Path) -> dict[str, str]:
    outcomes = {}
    if not path.exists():
        return outcomes
    for case in ET.parse(path).getroot().iter("testcase"):
        status = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                status = f"FAILED: {(child.get('message') or '').splitlines()[0][:200]}"
            elif child.tag == "skipped":
                status = "skipped"
        outcomes[case.get("name")] = status
    return outcomes


def write_report(json_path: Path, md_path: Path) -> None:
    """reports/benchmarks.md from the pytest-benchmark JSON (and the run's facts stored in it, key `peft_repro`)."""
    data = json.loads(json_path.read_text()) if json_path.exists() else {"benchmarks": []}
    run = data.get("peft_repro") or {}
    outcomes, command, wall_s = run.get("outcomes", {}), run.get("command", "?"), run.get("wall_s", float("nan"))
    machine_info, mode, threads = run.get("machine") or machine(), run.get("mode", "?"), run.get("threads", "?")
    by_item = {b["extra_info"].get("item"): b["extra_info"] for b in data["benchmarks"] if b.get("extra_info")}
    m = machine_info
    lines = [
        f"# Benchmarks of our own machinery ({mode} mode)",
        "",
        f"Generated by `{command}` in {wall_s:.0f} s on {m['date']}. Raw data: `{json_path.name}` "
        "(pytest-benchmark JSON; every ratio's inputs are in each benchmark's `extra_info`).",
        "",
        f"Machine: {m['cpu']} ({m['cpu_flags']}), {m['cores']} cores, torch {m['torch']} "
        f"({'CUDA ' + m['cuda'] if m['cuda'] else 'CPU'}), {threads} torch thread(s), Python {m['python']}; "
        f"load average at start {', '.join(f'{x:.2f}' for x in m['load_avg']) if m['load_avg'] else 'n/a'} "
        "(a shared machine: other jobs ran during the measurement).",
        "",
        "Every ratio compares our code with a baseline measured in the same process, interleaved round by "
        "round (baseline and ours once per round, alternating which runs first), median of the per-round "
        "ratios. Benchmarks report, they never fail on speed; they fail only where a correctness check breaks "
        "(equal outputs, equal scores, equal losses).",
        "",
    ]
    if mode == "quick":
        lines += [
            "**Quick mode: tiny random models. The ratios show that the machinery runs, not how fast it is on "
            "a real model; the goals are judged on the full run (`python -m bench benchmarks`).**",
            "",
        ]
    lines += ["| # | what | ratio | measured | goal | met | check |", "|---|---|---|---|---|---|---|"]
    rows = [
        (
            "1",
            "train_overhead",
            "test_train_overhead[sst2]",
            "harness training steps vs bare PyTorch + peft loop, SST-2 batches",
        ),
        (
            "1",
            "train_overhead_e2e",
            "test_train_overhead[e2e]",
            "harness training steps vs bare PyTorch + peft loop, E2E batches",
        ),
        ("2", "decode_speedup", "test_decode_speedup", "batched KV-cached `generate` vs one-at-a-time, no cache"),
        ("3", "rank_speedup", "test_rank_speedup", "`rank_scores` (labels in one pass) vs one pass per label"),
        ("4", "memory_truth", "test_memory_truth", "peak memory increase vs analytic estimate (per method)"),
        ("6", "planning_growth", "test_planning_growth", "`snakemake -n` time vs grid size"),
        ("6", "planning_overhead", "test_planning_overhead", "`snakemake -n`, largest grid, vs bare Snakemake"),
        ("8", "packing", "test_packing", "cells per hour on one device: side by side vs one at a time"),
        *[
            (
                "9",
                f"serve_mixed_{kind}_k{k}",
                f"test_serve_mixed[{method}-{k}]",
                f"one base + {k} {deltas}, mixed-task batches, vs {k} adapted models (examples/s)",
            )
            for kind, method, deltas in (("lora", "lora", "LoRA adapters"), ("prompt", "prompt_tuning", "soft prompts"))
            for k in (2, 4, 8)
        ],
        ("10", "bf16_train", "test_bf16_training_steps", "prompt-tuning training steps, bf16 autocast vs fp32"),
        ("10", "bf16_rank", "test_bf16_rank_scoring", "`rank_scores` under bf16 autocast vs fp32"),
        *[
            (
                "11",
                f"decode_drop_{case}",
                f"test_decode_drop[{case}]",
                f"greedy decoding, finished rows dropped vs today's `generate`, {what}",
            )
            for case, what in (("webnlg", "study-webnlg's settings"), ("e2e", "study-e2e's settings"))
        ],
    ]
    for number, item, test, what in rows:
        info = by_item.get(item)
        outcome = outcomes.get(test, "not run")
        if info is None:
            lines.append(f"| {number} | {what} | {GOALS[item][0]} | – | {goal_text(item)} | – | {outcome} |")
            continue
        value = info.get("ratio")
        if item == "memory_truth":
            shown = ", ".join(f"{k} {v:.2f}×" for k, v in info["ratios"].items())
        elif value is None:
            shown = "–"
        else:
            shown = f"{value:.3f}×" if item.startswith("train_overhead") else f"{value:.2f}×"
        verdict = (
            "–"
            if "met" not in info
            else "not judged (quick)"
            if mode == "quick"
            else "yes"
            if info["met"]
            else "**no**"
        )
        lines.append(
            f"| {number} | {what} | {info['ratio_label']} | {shown} | {info['goal']} | {verdict} | {outcome} |"
        )
    flops = by_item.get("flops")
    lines.append(
        f"| 5 | training FLOPs and MFU | achieved / matmul peak | "
        f"{', '.join(f'{k} {_pct(v)}' for k, v in flops['mfu'].items()) if flops else '–'} | "
        f"reported, no goal | – | {outcomes.get('test_flops_utilisation', 'not run')} |"
    )
    if m["cuda"]:
        lines.append(f"| 7 | GPU | – | items above ran on {m['cuda']} (bf16) | – | – | see section 7 |")
    else:
        lines.append("| 7 | GPU | – | not measured | – | – | no GPU was available to this run |")
    lines += [""] + _details(by_item, mode, m["cuda"])
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text("\n".join(lines).rstrip() + "\n")


def _pct(value: float) -> str:
    """A share as a percentage; small ones (GPU MFU of a 135M model) with three decimals instead of 0.0%."""
    return f"{value:.1%}" if abs(value) >= 0.01 else f"{value:.3%}"


def _details(by_item: dict, mode: str, gpu: str | None = None) -> list[str]:
    out = []
    shapes = [
        (by_item[item], name)
        for item, name in (("train_overhead", "SST-2"), ("train_overhead_e2e", "E2E"))
        if item in by_item
    ]
    if shapes:
        out += [
            "## 1. Harness training steps vs a bare loop",
            "",
            "Ours: `bench.harness.train.train` with `bench.harness.batches.training_batches` and `methods/lora.py` "
            "(logits "
            "only at the target positions; each example tokenised once per stream, batches padded from the "
            "cached ids). Baseline: `get_peft_model(LoraConfig(...))` and a bare loop (`model(**batch).loss`, "
            "backward, clip, AdamW, zero_grad) over the same batches built beforehand.",
            "",
        ]
    for info, name in shapes:
        out += [
            f"### {name}-shaped batches",
            "",
            f"{info['model']}, LoRA r={info['r']} α={info['alpha']} on q/v, {name} (200 examples, batch "
            f"{info['batch_size']}, max_len {info['max_len']}), {info['steps']} steps per round, "
            f"{len(info['ours_s'])} timed rounds after {info['warmup_rounds']} warm-up. Same losses: "
            f"{info['losses_equal']} (max |Δ| {info['max_loss_diff']:.2e})."
            + (
                f" Per step: {info['tokens_per_step']:.0f} tokens ({info['padded_per_step']:.0f} padded "
                f"positions), logits at {info['head_positions_per_step']:.0f} of them."
                if "head_positions_per_step" in info
                else ""
            ),
            "",
            "| | per round (s) |",
            "|---|---|",
            f"| bare loop | {', '.join(f'{t:.2f}' for t in info['baseline_s'])} |",
            f"| harness | {', '.join(f'{t:.2f}' for t in info['ours_s'])} |",
            f"| ratio | {', '.join(f'{t:.3f}' for t in info['per_round'])} (median {info['ratio']:.3f}; "
            f"ratio of fastest rounds {info['ratio_of_mins']:.3f}) |",
            "",
        ]
        spread = (min(info["per_round"]), max(info["per_round"]))
        out += [f"Per-round ratios range {spread[0]:.2f}–{spread[1]:.2f} (round-to-round noise of the shared machine)."]
        if info.get("batch_build_s") is not None:
            out[-1] += (
                f" Building the batches (tokenising, padding, label masks) costs "
                f"{1000 * info['batch_build_s']:.1f} ms per step, "
                f"{100 * info['batch_build_s'] / info['step_s']:.2f}% of a {info['step_s']:.2f} s step."
            )
        out.append("")
        if not info.get("met") and mode == "full":
            out += [_overhead_miss(info), ""]
    info = by_item.get("decode_speedup")
    if info:
        out += [
            "## 2. Decoding",
            "",
            f"{info['model']}, {info['examples']} E2E test MRs, greedy, max {info['max_new_tokens']} new tokens, "
            f"ours at batch {info['batch_size']} (left-padded, KV cache). Baseline: `model.generate(use_cache="
            f"False)` one MR at a time. Outputs identical: {info['outputs_equal']} "
            f"({info['equal_count']}/{info['examples']}).",
            "",
            "| | seconds | speedup vs baseline |",
            "|---|---|---|",
            f"| one at a time, no cache (baseline) | {statistics.median(info['baseline_s']):.1f} | 1.00× |",
            f"| one at a time, KV cache (`generate`, batch 1) | {statistics.median(info['batch1_cache_s']):.1f} | "
            f"{info['cache_only_speedup']:.2f}× |",
            f"| batched + KV cache (ours) | {statistics.median(info['ours_s']):.1f} | {info['ratio']:.2f}× |",
            "",
            f"Prompt lengths {info['prompt_tokens_min']}–{info['prompt_tokens_max']} tokens; "
            f"{info['new_tokens_mean']:.1f} new tokens per MR on average.",
            "",
        ]
        out += [_decode_text(info), ""]
    info = by_item.get("rank_speedup")
    if info:
        out += [
            "## 3. Rank scoring",
            "",
            f"{info['model']}, {info['examples']} SST-2 dev sentences, verbalizer {info['verbalizer']} "
            f"(one token each), batch {info['batch_size']}, max_len {info['max_len']}. Scores equal "
            f"(allclose, atol 1e-4): {info['scores_equal']} (max |Δ| {info['max_score_diff']:.1e}).",
            "",
            "| baseline | baseline s (median) | ours s (median) | speedup |",
            "|---|---|---|---|",
            "| one pass per label, logits at every position | "
            f"{statistics.median(info['full_logits_baseline_s']):.2f}"
            f" | {statistics.median(info['ours_s']):.2f} | {info['ratio']:.2f}× (the goal's ratio) |",
            f"| one pass per label, logits only where scored | {statistics.median(info['baseline_s']):.2f} | "
            f"{statistics.median(info['ours_s']):.2f} | {info['labels_only_ratio']:.2f}× (label batching alone) |",
            "",
            "Two labels of one token share one input sequence, so `rank_scores` runs one pass where the "
            "per-label baseline runs two; the rest of the speedup is computing logits (a 49152 × 576 "
            "projection) only at the scored position.",
            "",
        ]
        if not info.get("met") and mode == "full":
            out += [
                "Missed: with two labels the pass count gives at most 2×; what is left is per-pass overhead "
                "(tokenising, padding, the Python loop that reads the scores).",
                "",
            ]
    info = by_item.get("memory_truth")
    if info:
        cuda = _measured_on_cuda(info)
        measured = (
            "Measured: `torch.cuda.max_memory_allocated` during training minus `torch.cuda.memory_allocated` "
            "just before it (after loading and adapting the model; the peak statistics are reset at that "
            "point), "
            "so the load itself does not count. "
            if cuda
            else "Measured: the peak "
            "resident set during training minus the resident set just before it (after loading and adapting "
            "the model); the kernel's peak mark is reset at that point (`/proc/self/clear_refs` = 5), so the "
            "load itself does not count. "
        )
        out += [
            "## 4. Memory: measured vs analytic",
            "",
            f"{info['model']}, SST-2 batch {info['batch_size']}, max_len {info['max_len']}, {info['steps']} "
            "training steps through the harness per method, each in a fresh subprocess. "
            + measured
            + "Estimate: gradients + optimizer states + saved activations "
            "(see `bench.tools.benchmarks.analytic_memory`); the weights are in the baseline for both. "
            "`autograd saved` is measured, not estimated: the unique storages autograd keeps for backward "
            "in one forward (weights excluded).",
            "",
            "| method | trainable | optimizer | grads | optimizer states | activations (est.) | autograd saved "
            f"(meas.) | estimate | measured Δ peak | measured / estimate | "
            f"{'baseline allocated' if cuda else 'baseline RSS'} |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for probe in info["probes"]:
            out.append(
                f"| {probe['method']} | {probe['trainable_params']:,} | {probe['optimizer_name']} | "
                f"{_fmt_bytes(probe['gradients'])} | {_fmt_bytes(probe['optimizer'])} | "
                f"{_fmt_bytes(probe['activations'])} | {_fmt_bytes(probe['saved_activation_bytes'])} | "
                f"{_fmt_bytes(probe['estimate'])} | {_fmt_bytes(probe['measured_increase'])} | "
                f"{probe['measured_increase'] / probe['estimate']:.2f}× | "
                f"{_fmt_bytes(probe['baseline_bytes'])} |"
            )
        out += [""] + [_memory_explanation(info, mode), ""]
    info = by_item.get("flops")
    if info:
        out += [
            "## 5. FLOPs per step and MFU",
            "",
            f"Matmul peak of this machine: {info['peak_flops'] / 1e9:.1f} GFLOP/s ({info['peak_dtype']} "
            f"{info['peak_size']}×{info['peak_size']} matmul, {info['threads']} thread(s), best of 5, measured in "
            "this run). FLOPs per step from `bench.harness.flops.flops_per_step`: 6·N per real token when the base "
            "trains, 4·N + 2·trainable with a frozen base, virtual tokens of prompt tuning counted as tokens, "
            "the LM head only at the target positions, where it runs. Steady state: steps after the first.",
            "",
            "| run | real tokens/step | positions/step (+ virtual) | padded positions/step | FLOPs/step | s/step | "
            "achieved GFLOP/s | MFU |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, row in info["rows"].items():
            out.append(
                f"| {name} | {row['tokens']:.0f} | {row['positions']:.0f} | {row['padded_tokens']:.0f} | "
                f"{row['flops_per_step']:.3g} | "
                f"{row['step_s']:.2f} | "
                f"{row['flops_per_s'] / 1e9:.1f} | {_pct(row['mfu'])} |"
            )
        out += ["", _flops_explanation(info), ""]
    info = by_item.get("packing")
    if info:
        where = info["devices"]
        out += [
            "## 8. Several cells per device",
            "",
            f"{info['cells']} cells ({info['model']}, SST-2, LoRA and full FT, {info['steps']} steps; each a "
            f"`python -m bench run-cell` process) one at a time, then {info['at_once']} at once on "
            f"{', '.join(where)} "
            "(as `snakemake --resources gpu_mem_mb=...` runs them on one GPU). The side-by-side records hold "
            "the same metrics and losses (checked).",
            "",
            "| run | seconds | cells per hour |",
            "|---|---|---|",
        ]
        for name in ("one_at_a_time", "packed"):
            out.append(
                f"| {name.replace('_', ' ')} | {info['seconds'][name]:.1f} | {info['cells_per_hour'][name]:.0f} |"
            )
        out += [
            "",
            f"Ratio {info['ratio']:.2f}× (goal ≥ 4× on a GPU; on CPU the cores bound it)."
            + ("" if "cuda" in where else " GPU: not measured in this run."),
            "",
        ]
    info = by_item.get("planning_growth")
    if info:
        out += [
            "## 6. Planning: `snakemake -n`",
            "",
            "Generated grids (tiny-llama × SST-2 × {full_ft, lora} × train sizes × seeds), "
            "`python -m snakemake -n --snakefile Snakefile --directory <tmp> --config grid=<yaml>` as a "
            "subprocess (its own Python start, imports, grid expansion and validation, DAG, dry-run listing).",
            "",
            "| cells | seconds |",
            "|---|---|",
        ]
        for n, t in sorted(info["seconds"].items(), key=lambda kv: int(kv[0])):
            out.append(f"| {int(n):,} | {t:.1f} |")
        out += [
            "",
            "Marginal cost per added cell, by decade: "
            f"{', '.join(f'{k}: {v:.1f} ms' for k, v in info['marginal_ms_per_cell'].items())}. Linear growth "
            f"keeps it constant; the reported ratio is the last decade's over the previous one's "
            f"({info['ratio']:.2f}×). {info['note']}",
            "",
        ]
    info = by_item.get("planning_overhead")
    if info:
        out += [
            "Against bare Snakemake: `bench.tools.benchmarks.BARE_SNAKEFILE` plans the same number of cell jobs "
            "from "
            "static rules (a model-preparing job they all need, one report over every record, the same output "
            "and log paths, a params function): Snakemake's own work for jobs of this shape, with nothing of ours. "
            f"Ratio ours / bare: {info['ratio']:.2f}×. {info['note']}",
            "",
        ]
    if gpu:
        out += [
            "## 7. GPU",
            "",
            f"This run used {gpu}: models in bf16 (`bench.tools.benchmarks.load`), every timing "
            "bracketed by `torch.cuda.synchronize`, memory from `torch.cuda.max_memory_allocated` (item 4), the "
            "matmul peak in bf16 (item 5). Training steps of a 135M model on about a hundred tokens use a tiny "
            "fraction of the GPU's large-matmul peak: read the MFU column accordingly.",
            "",
        ]
    else:
        out += [
            "## 7. GPU",
            "",
            "Not measured: no GPU was available to this run. The benchmark code is "
            "device-agnostic (CUDA when available, the models in bf16 there, memory from "
            "`torch.cuda.max_memory_allocated`, the matmul peak in bf16); run `python -m bench benchmarks` on a "
            "GPU machine to fill this in.",
            "",
        ]
    return out + serve_mixed_details(by_item) + precision_details(by_item) + decode_drop_details(by_item)


def serve_mixed_details(by_item: dict) -> list[str]:
    """Section 9 (item 9, tests/benchmarks/test_9_serve_mixed.py), also pasted alone where a run measured only it."""
    found = [
        (by_item[f"serve_mixed_{kind}_k{k}"], name)
        for kind, name in (
            ("lora", "LoRA adapters (batched B·A per row)"),
            ("prompt", "soft prompts (cached prompt states)"),
        )
        for k in (2, 4, 8)
        if f"serve_mixed_{kind}_k{k}" in by_item
    ]
    if not found:
        return []
    out = [
        "## 9. One base, many tasks: mixed-task batches",
        "",
        "`bench/tools/serve.py`: one frozen base with k trained deltas (the first k cells given) rank-scores all "
        "the "
        "tasks' rows in batches of 16 sorted by length (a batch holds whichever tasks' rows are of its lengths), "
        "each row under its own delta (LoRA: the base layers once per batch, every row's own B·A·x as two "
        "batched matmuls; soft prompts: each task's prompt run through the base once, every row attending to its "
        "own task's cached prompt states), the LM head only at the scored positions. Baselines: k separately "
        "adapted models (each its own copy of the base plus its delta), each scoring only its own task's "
        "examples in batches of 16 sorted by length, (a) on the cells' own path, "
        "`bench.harness.evaluation.rank_scores` "
        "(the goal's ratio) and (b) on the serving module's own path with one delta per model (the same cached "
        "prompt states and scored-position LM head: what mixing itself gives). The three run batch by batch, "
        "interleaved so that each has done the same share of its work at any moment (a load change on the "
        "machine meets all three alike); a round is one pass of all three, the ratio the median of rounds. "
        "Weights held: bytes of the distinct tensors of each setup; k full fine-tuned copies: k × the base's. "
        "Goal: mixed examples/s ≥ the separate models' at every k on wall time, scores equal (each example's "
        "label scores within the tolerance of its own cell's outputs and of both separate paths'); CPU time: "
        "the process's CPU seconds on each side (single-threaded on CPU, so it holds where other jobs share the "
        'machine). Where the time went: docs/grids.md, "One base, many tasks".',
        "",
        "| deltas | k | examples | batches mixing tasks | mixed ex/s | separate ex/s | time: separate / mixed "
        "| CPU time: separate / mixed | (b) serving path: time / CPU | weights: separate / mixed "
        "| weights: k full-FT copies / mixed | max score diff vs own cells / vs separate | equal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for info, name in found:
        mixing = f"{info['batches_mixing_cells']} of {info['batches']}" if "batches" in info else "–"
        cpu = (
            f"{info['cpu_ratio']:.2f}× (rounds {', '.join(f'{r:.2f}' for r in info['cpu_per_round'])})"
            if "cpu_ratio" in info
            else "–"
        )
        path = (
            f"{info['serving_path_ratio']:.2f}× / {info['serving_path_cpu_ratio']:.2f}×"
            if "serving_path_ratio" in info
            else "–"
        )
        separate_diff = max(
            info.get("max_diff_vs_separate", float("nan")), info.get("max_diff_vs_serving_path", float("-inf"))
        )
        out.append(
            f"| {name} | {len(info['cells'])} | {info['examples']} | {mixing} | "
            f"{info['mixed_examples_per_s']:.1f} | {info['separate_examples_per_s']:.1f} | "
            f"{info['ratio']:.2f}× (rounds {', '.join(f'{r:.2f}' for r in info['per_round'])}) | {cpu} | "
            f"{path} | {info['separate_over_mixed_bytes']:.2f}× | {info['full_ft_over_mixed_bytes']:.2f}× | "
            f"{info['max_diff_vs_own_cells']:.1e} / {separate_diff:.1e} | "
            f"{'yes' if info['scores_equal'] else '**no**'} |"
        )
    return out + [""]


def precision_details(by_item: dict) -> list[str]:
    """Section 10 (item 10, tests/benchmarks/test_10_precision.py), also pasted alone where a run measured only it."""
    train, rank = by_item.get("bf16_train"), by_item.get("bf16_rank")
    if not (train or rank):
        return []
    out = [
        "## 10. bf16 autocast vs fp32",
        "",
        "hp `precision: bf16` (bench/harness/train.py) runs training steps and classification scoring under "
        "bfloat16 "
        "`torch.autocast`; the baseline is the same code with `precision: fp32`, on a model in the same state. "
        "bf16 is fast only where the CPU has AVX512-BF16 or AMX (or on a GPU).",
        "",
        "| what | model | fp32 (s, per round) | bf16 (s, per round) | fp32 / bf16 | check |",
        "|---|---|---|---|---|---|",
    ]

    def rounds(times):
        return ", ".join(f"{t:.2f}" for t in times)

    if train:
        out.append(
            f"| {train['steps']} prompt-tuning steps, batch {train['batch_size']} × {train['max_len']} + "
            f"{train['num_virtual_tokens']} virtual tokens | {train['model']} | {rounds(train['baseline_s'])} | "
            f"{rounds(train['ours_s'])} | {train['ratio']:.2f}× | first-step loss differs by "
            f"{train['first_loss_rel_diff']:.2%} |"
        )
    if rank:
        out.append(
            f"| rank scoring of {rank['examples']} SST-2 sentences, batch {rank['batch_size']} | "
            f"{rank['model']} | {rounds(rank['baseline_s'])} | {rounds(rank['ours_s'])} | {rank['ratio']:.2f}× "
            f"| label log-probs within {rank['max_score_diff']:.3f} nats; {rank['prediction_agreement']:.0%} of "
            "predictions agree |"
        )
    return out + [""]


def decode_drop_details(by_item: dict) -> list[str]:
    """Section 11 (item 11, tests/benchmarks/test_11_decode_drop.py)."""
    found = [by_item[f"decode_drop_{case}"] for case in ("webnlg", "e2e") if f"decode_drop_{case}" in by_item]
    if not found:
        return []
    first = found[0]
    out = [
        "## 11. Decoding without waiting for the batch's longest output",
        "",
        f"{first['model']} with a LoRA delta (r 8, α 16, lr 1e-3, batch 4) trained {first['lora_steps']} steps on "
        "200 of the task's training examples just before, so that it writes the task's line and stops as the "
        "study's cells do. "
        "`bench.harness.evaluation.generate` (the harness's generation: prompts sorted by length, left-padded, KV "
        "cache) through `bench.harness.generation.decode`, which drops a row from the batch, its KV cache, mask and "
        "position as "
        "soon as it emits the end token or its first line is complete (the harness keeps the first line); "
        "baseline: the same function with `drop_finished=False`, i.e. "
        "`model.generate`, which keeps finished rows in the batch, fed padding, until the longest output ends. "
        "Same prompts, same batches; outputs must be equal text for text.",
        "",
        "| task | model | examples | batch | max new tokens "
        "| new tokens to each row's end / every row to the maximum | "
        "today (s, per round) | dropped (s, per round) | today / dropped | equal |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for info in found:
        out.append(
            f"| {info['task']} | {info['model']} ({info['dtype'].replace('torch.', '')}) | {info['examples']} | "
            f"{info['batch_size']} | {info['max_new_tokens']} | {info['new_tokens']} / {info['slots_at_most']} "
            f"({info['new_tokens'] / info['slots_at_most']:.0%}) | "
            f"{', '.join(f'{t:.2f}' for t in info['baseline_s'])} | "
            f"{', '.join(f'{t:.2f}' for t in info['ours_s'])} | {info['ratio']:.2f}× (rounds "
            f"{', '.join(f'{r:.2f}' for r in info['per_round'])}) | "
            f"{'yes' if info['outputs_equal'] else '**no**'} ({info['equal_count']}/{info['examples']}) |"
        )
    out += [
        "",
        "The share of new tokens made bounds the gain: today every row of a batch runs as many steps as the "
        "batch's longest output. Two things keep the measured gain below that bound: the prompts' forward pass "
        "(prefill, up to `max_len` tokens per row) is the same on both sides and, for long prompts at batch 64, "
        "a large part of the time; and a decoding step of a few dozen rows costs less than proportionally to "
        "its rows (the weights are read once per step whatever the rows). Beam search "
        "(`num_beams` > 1, the paper grid) keeps `generate`; so do soft prompts on encoder-decoder models "
        "(bench/harness/generation.py says why).",
        "",
    ]
    return out


def _overhead_miss(info: dict) -> str:
    return (
        "Missed. The harness skips the LM head where the loss does not read it; what is left of the step is "
        "the model's body, backward and the optimizer, which the bare loop runs alike. The fewer of a batch's "
        "positions are targets, the larger the saving: E2E targets are a sentence of a short prompt, SST-2's "
        "one label token of a phrase."
    )


def _decode_text(info: dict) -> str:
    batching = info["ratio"] / info["cache_only_speedup"]
    text = (
        f"Where the speedup comes from: the KV cache alone (batch 1) gives {info['cache_only_speedup']:.1f}×, "
        f"batching {info['batch_size']} prompts then {batching:.1f}× more. Without a cache every new token "
        "recomputes the whole sequence, so that part grows with prompt length × new tokens; E2E prompts are "
        f"short ({info['prompt_tokens_min']}–{info['prompt_tokens_max']} tokens) and at most "
        f"{info['max_new_tokens']} tokens are generated, which caps it."
    )
    if not info.get("met"):
        text += (
            " Missed: the product falls short of 10× at these lengths. What would close it: a larger batch "
            "(the grid's `eval_batch_size` is 16; batching is the bigger lever), stopping rows that have "
            "emitted the end token or a newline (the output is cut at the first newline, yet every row decodes "
            f"all {info['max_new_tokens']} tokens)"
            + (", or a GPU, where batch 1 leaves the device mostly idle." if info.get("device") != "cuda" else ".")
        )
    return text


def _measured_on_cuda(memory_info: dict) -> bool:
    return str(memory_info["probes"][0].get("memory_kind", "")).startswith("cuda")


def _memory_explanation(info: dict, mode: str) -> str:
    probes = {p["method"]: p for p in info["probes"]}
    text = []
    if "full_ft" in probes and "lora" in probes:
        full, lora = probes["full_ft"], probes["lora"]
        text.append(
            f"Full fine-tuning's peak rises by {_fmt_bytes(full['measured_increase'])} against LoRA's "
            f"{_fmt_bytes(lora['measured_increase'])}: the difference is the gradients "
            f"({_fmt_bytes(full['gradients'])}) and AdamW's two states ({_fmt_bytes(full['optimizer'])}) "
            "of every weight, which a frozen backbone does not keep (its gradients and states cover "
            f"{lora['trainable_params']:,} parameters)."
        )
    gaps = ", ".join(
        f"{p['method']} {_fmt_bytes(p['activations'] - p['saved_activation_bytes'])} vs "
        f"{_fmt_bytes(p['head_backward_bytes'])}"
        for p in info["probes"]
    )
    text.append(
        "The per-layer activation count is right: the estimate exceeds what autograd saves by about the two "
        f"vocabulary-sized buffers that backward adds at the LM head, which the estimate includes ({gaps})."
    )
    if _measured_on_cuda(info):
        text.append(
            "On CUDA the weights, gradients and AdamW states of full fine-tuning are bf16 (2 bytes), adapter "
            "parameters fp32, activations bf16 and the LM head's log-probabilities fp32; the estimate uses "
            "these sizes. Why measured and estimated differ: the allocator's peak also counts transient "
            "buffers (the logits' gradient, optimizer temporaries) and misses what the estimate counts but "
            "never coexists (activations are freed during backward as gradients appear)."
        )
    else:
        text.append(
            "Why measured and estimated differ: the resident set also holds what the estimate leaves out — "
            "gradient buffers while backward runs (e.g. the gradient of the logits, "
            "target positions × vocabulary floats), temporaries of the optimizer step (torch's AdamW on CPU "
            "updates parameter by parameter, with temporaries the size of the largest parameter, the embedding "
            "matrix), and memory the allocator keeps after freeing; and it misses what the estimate "
            "counts but never coexists (activations are freed during backward as gradients appear). "
            "The `autograd saved` column checks the activation part of the estimate directly."
        )
    if mode == "quick":
        text.append(
            "In quick mode the model has a few thousand parameters: every number is below the resident "
            "set's noise and the ratios mean nothing."
        )
    return " ".join(text)


def _flops_explanation(info: dict) -> str:
    rows = info["rows"]
    text = [
        "MFU counts useful model FLOPs (real tokens and virtual tokens; padding excluded) per second over the "
        "measured dense matmul peak."
    ]
    padded = {m: r["padded_tokens"] / r["positions"] for m, r in rows.items() if r.get("padded_tokens")}
    if padded:
        worst = max(padded.values())
        mostly = (
            ("SST-2 training batches are mostly padding: short GLUE phrases padded to the longest in the batch; ")
            if worst >= 1.5
            else ""
        )
        text.append(
            f"Padding: the padded rectangle is up to {worst:.1f}× the counted positions ({mostly}"
            "computed but not counted); counting it (hardware FLOPs utilisation) would multiply each MFU by "
            "that factor."
        )
    ranked = sorted(rows.items(), key=lambda kv: kv[1]["mfu"])
    low, high = ranked[0], ranked[-1]
    text.append(
        f"Highest: {high[0]} ({high[1]['mfu']:.1%}, {high[1]['positions']:.0f} positions per step); lowest: "
        f"{low[0]} ({low[1]['mfu']:.1%})."
    )
    if high[0] == "prompt_tuning":
        text.append(
            "Prompt tuning's virtual tokens make every matmul several times taller, and tall matmuls come "
            "closer to the large-matmul peak; short batches leave the 576-wide matmuls of a 135M model "
            "far from it, and element-wise work (norms, SiLU, softmax, the optimizer) counts no FLOPs."
        )
    if "full_ft" in rows:
        weights = 4 * info.get("full_ft_params", 0)
        text.append(
            "Full FT adds weight-gradient matmuls whose inner dimension is the step's token count (thin "
            "and slow) and an AdamW update that reads gradients, two states and the weights of every "
            f"parameter and writes three of them back ({_fmt_bytes(7 * weights)} of memory traffic per step, "
            "memory-bound, no FLOPs counted)."
        )
    return " ".join(text)


# ----------------------------------------------------------------------------- the command
def default_output(quick: bool) -> Path:
    return PROJECT_ROOT / (".benchmarks/quick.json" if quick else "reports/benchmarks.json")


def run_benchmarks(
    quick: bool,
    threads: int = 1,
    out: Path | None = None,
    pytest_args: list[str] | None = None,
    report_only: bool = False,
) -> int:
    """Run tests/benchmarks through pytest (pytest-benchmark JSON), then write the Markdown report beside it.
    `report_only`: only re-render the report from an existing JSON. Returns pytest's exit status."""
    mode = "quick" if quick else "full"
    out = (out or default_output(quick)).resolve()
    md = out.with_suffix(".md")
    if report_only:
        if not out.exists():
            from bench.api.errors import BenchError

            raise BenchError(
                f"no benchmark data at {out}: run `python -m bench benchmarks{' --quick' if quick else ''}` first"
            )
        write_report(out, md)
        print(md)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        MODE_ENV: mode,
        THREADS_ENV: str(threads),
        ENABLE_ENV: "1",
        "OMP_NUM_THREADS": str(threads),
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }
    info = machine()
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "junit.xml"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "tests/benchmarks",
            "--run-benchmarks",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--benchmark-json={out}",
            f"--junitxml={junit}",
            "--benchmark-columns=min,median,max,rounds",
            *(pytest_args or []),
        ]
        start = time.perf_counter()
        if out.exists():
            out.unlink()
        rc = subprocess.run(command, cwd=PROJECT_ROOT, env=env).returncode
        wall = time.perf_counter() - start
        outcomes = _junit_outcomes(junit)
    shown = "python -m bench benchmarks" + (" --quick" if quick else "")
    shown += f" --threads {threads}" if threads != 1 else ""
    data = json.loads(out.read_text()) if out.exists() else {"benchmarks": []}
    data["peft_repro"] = {
        "mode": mode,
        "threads": threads,
        "command": shown,
        "wall_s": wall,
        "machine": info,
        "outcomes": outcomes,
        "pytest_status": rc,
    }
    out.write_text(json.dumps(data, indent=4) + "\n")
    write_report(out, md)
    print(f"{md}\n{out}")
    return rc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.benchmarks")
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("memory-probe", help="internal: one method's peak memory, in a fresh process")
    probe.add_argument("--model", required=True)
    probe.add_argument("--method", required=True)
    probe.add_argument("--steps", type=int, default=3)
    probe.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.command == "memory-probe":
        print(json.dumps(memory_probe(args.model, args.method, args.steps, args.threads)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
