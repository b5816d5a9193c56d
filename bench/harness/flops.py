"""Training FLOPs per step and this machine's dense matmul peak (for MFU).

FLOPs follow the usual transformer approximation (Kaplan et al. 2020; Chinchilla appendix F): one
multiply-add per parameter per token position in the forward pass (2N FLOPs), twice that in the
backward pass: 2N for the gradient with respect to the activations and 2N for the gradient with
respect to the weights. So

- full fine-tuning (the base trains): 6·N per position;
- a frozen backbone (LoRA, prompt/prefix tuning, adapters, ...): the backward pass still runs through
  every layer to reach the trained parameters (2N for activation gradients) but computes no weight
  gradients of the frozen matrices: 4·N per position, plus 2·T for the weight gradients of the T
  trainable parameters that sit in the token path (LoRA, adapters; for prompt tuning the trainable
  rows are a lookup and 2·T is a slight overcount, for a tiny T).

Positions are the real (non-padding) tokens plus virtual tokens that run through the whole network
(prompt tuning, P-tuning: `extra_positions` per sequence). A causal LM's head (the vocabulary × d output
projection) runs only at the positions whose logits the loss reads (bench/harness/train.py: one per target token),
so it counts at those `head_positions`, not at every position. Prefix tuning's prefix appears only as
attention keys/values: it adds attention-score FLOPs, which this approximation leaves out like the
attention term of every sequence (at 64-128 tokens and d_model 576 it is a few percent of 2N).

Encoder-decoder models: each position runs through one stack, so the encoder's parameters
(`encoder_parameters`) count at the encoder's positions (text + virtual tokens) and the rest (decoder, LM head at
its positions) at the decoder's (`train_flops`). The decoder's cross-attention key/value projections run over
the encoder's positions but are counted at the decoder's, like the attention scores this approximation leaves out.

N is the number of parameters used as matmul weights per position (`token_path_parameters`): with tied
input/output embeddings (SmolLM2, GPT-2) the shared matrix counts once (looked up, no FLOPs; multiplied
once as the LM head); an untied input embedding is only looked up and is left out, as are peft's
virtual-token encoders, which run once per step. Padding positions are computed but not counted: this is
model FLOPs utilisation of useful work, as in the PaLM paper's MFU.

`matmul_peak_flops` measures the peak this machine reaches on a large dense matmul (fp32 on CPU,
bf16 on CUDA) with the given number of threads, best of several repeats, cached on disk per
(device, dtype, threads, CPU/GPU model, torch version) because a shared machine's background load
should not make every cell measure a different peak.
"""

from __future__ import annotations

import json
import os
import platform
import time
from functools import lru_cache
from pathlib import Path

PEAK_CACHE_ENV = "PEFT_REPRO_PEAK_CACHE"  # file holding measured peaks (default results/models/matmul_peak.json)


def flops_per_step(
    n_params_total: int,
    tunes_base: bool,
    tokens: int,
    extra_positions: int = 0,
    sequences: int = 0,
    trainable_params: int = 0,
    head_params: int = 0,
    head_positions: int = 0,
) -> float:
    """≈ training FLOPs of one optimizer step.

    n_params_total: parameters used as matmul weights per position (`token_path_parameters(model)[0]`).
    tunes_base: True when the base weights train (full FT: 6N per position); False for a frozen
        backbone (4N per position + 2·trainable_params).
    tokens: real (non-padding) token positions in the step's batch.
    extra_positions: virtual tokens prepended to every sequence that run through the network (prompt
        tuning's `num_virtual_tokens`; 0 for prefix tuning, whose prefix is only keys/values).
    sequences: sequences in the batch (the batch size), to count the virtual tokens.
    trainable_params: trainable parameters in the token path (`token_path_parameters(model)[1]`), whose
        weight gradients a frozen-backbone step computes (LoRA, adapters; 0 for prompt/prefix tuning).
    head_params: the LM head's parameters (`lm_head_parameters(model)`, part of n_params_total), which run only
        at head_positions (bench.harness.train.TrainResult.head_positions); 0 counts the head at every position.
    Linear in tokens, sequences and head positions: a whole run's counts give the run's FLOPs.
    """
    if min(n_params_total, tokens, extra_positions, sequences, head_params, head_positions) < 0:
        raise ValueError("flops_per_step: counts must be non-negative")
    positions = tokens + extra_positions * sequences
    per_weight = 6.0 if tunes_base else 4.0
    weight_gradients = 0.0 if tunes_base else 2.0 * trainable_params * positions
    return per_weight * ((n_params_total - head_params) * positions + head_params * head_positions) + weight_gradients


def lm_head_parameters(model) -> int:
    """Parameters of a causal LM's output projection (0 for a model without one, e.g. an encoder's classifier)."""
    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return 0
    return sum(p.numel() for p in head.parameters()) if head is not None else 0


def token_path_parameters(model) -> tuple[int, int]:
    """(parameters, trainable parameters) used as matmul weights at every token position.

    Left out: peft's `prompt_encoder` (prompt tuning's table, prefix tuning's prefix and MLP, P-tuning's
    encoder: run once per step on the virtual tokens, not per position) and an input embedding matrix that
    is not also the output projection (a lookup, no FLOPs; tied embeddings, as in SmolLM2 and GPT-2, stay
    in: the same matrix is the LM head)."""
    lookup = None
    try:
        embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
        if embedding is not None and (head is None or head.weight is not embedding.weight):
            lookup = embedding.weight
    except (AttributeError, NotImplementedError):
        pass
    total = trainable = 0
    for name, parameter in model.named_parameters():
        if "prompt_encoder" in name.split(".") or parameter is lookup:
            continue
        total += parameter.numel()
        trainable += parameter.numel() if parameter.requires_grad else 0
    return total, trainable


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cache_file() -> Path:
    if os.environ.get(PEAK_CACHE_ENV):
        return Path(os.environ[PEAK_CACHE_ENV])
    from bench.harness.models import cache_dir

    return cache_dir() / "matmul_peak.json"  # machine-local and git-ignored, like the converted models


def measure_matmul_peak(
    threads: int = 1, device: str = "cpu", size: int | None = None, repeats: int = 5, precision: str = "fp32"
) -> float:
    """Best achieved FLOP/s of an n×n @ n×n matmul (2n³ FLOPs) over `repeats` timed runs: in bf16 on CUDA or where
    `precision` is bf16 (cells that train under bf16 autocast), else fp32."""
    import torch

    dtype = torch.bfloat16 if device.startswith("cuda") or precision == "bf16" else torch.float32
    size = size or (8192 if device.startswith("cuda") else 2048)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        out = torch.empty(size, size, device=device, dtype=dtype)
        sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        torch.matmul(a, b, out=out)  # warm-up (thread pool, kernels)
        sync()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            torch.matmul(a, b, out=out)
            sync()
            best = min(best, time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * size**3 / best


@lru_cache(maxsize=None)
def matmul_peak_flops(threads: int = 1, device: str = "cpu", precision: str = "fp32") -> float:
    """This machine's dense matmul peak in FLOP/s (fp32 on CPU unless `precision` is bf16; bf16 on CUDA), measured
    once and cached in results/models/matmul_peak.json (the model cache, $PEFT_REPRO_MODELS; or
    $PEFT_REPRO_PEAK_CACHE)."""
    import torch

    cpu_bf16 = "|bf16" if precision == "bf16" and not device.startswith("cuda") else ""
    key = f"{device}|{device_name(device)}|threads={threads}|torch={torch.__version__}{cpu_bf16}"
    path = _cache_file()
    try:
        cached = json.loads(path.read_text())
    except (OSError, ValueError):
        cached = {}
    if isinstance(cached.get(key), (int, float)) and cached[key] > 0:
        return float(cached[key])
    peak = measure_matmul_peak(threads, device, precision=precision)
    try:  # re-read, merge, write atomically: two cells may measure at the same time
        try:
            cached = json.loads(path.read_text())
        except (OSError, ValueError):
            cached = {}
        cached[key] = peak
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(cached, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, path)
    except OSError:
        pass  # a read-only checkout still gets the measured value
    return peak


def mfu(flops_per_s: float, threads: int = 1, device: str = "cpu") -> float:
    """Achieved FLOP/s as a fraction of the measured matmul peak."""
    return flops_per_s / matmul_peak_flops(threads, device)


def encoder_parameters(model) -> tuple[int, int]:
    """(parameters, trainable parameters) of an encoder-decoder model's encoder used as matmul weights at every
    encoder position (its input embedding, a lookup, left out); (0, 0) for other models."""
    if not getattr(model.config, "is_encoder_decoder", False):
        return 0, 0
    lookup = model.get_input_embeddings().weight
    weights = [p for p in model.get_encoder().parameters() if p is not lookup]
    return sum(p.numel() for p in weights), sum(p.numel() for p in weights if p.requires_grad)


def train_flops(
    model, tunes_base: bool, tokens: int, encoder_tokens: int, extra_positions: int, sequences: int, head_positions: int
) -> float:
    """≈ training FLOPs of a run of `flops_per_step`'s counts (bench.harness.train.TrainResult: `tokens` all real
    tokens, `encoder_tokens` those of an encoder-decoder's encoder, 0 for other models)."""
    path_params, path_trainable = token_path_parameters(model)
    encoder, encoder_trainable = encoder_parameters(model)
    flops = flops_per_step(
        path_params - encoder,
        tunes_base,
        tokens - encoder_tokens,
        0 if encoder else extra_positions,
        sequences,
        path_trainable - encoder_trainable,
        lm_head_parameters(model),
        head_positions,
    )
    if encoder:  # virtual tokens (a soft prompt) run through the encoder only
        flops += flops_per_step(encoder, tunes_base, encoder_tokens, extra_positions, sequences, encoder_trainable)
    return flops
