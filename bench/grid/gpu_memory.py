"""A cell's GPU memory, estimated from its configuration alone, and what it asks of a GPU cluster.

Planning reads this (bench.grid.plan.cell_resources: the Snakefile's `gpu_mem_mb`, `gres` and `gpu` resources),
so it loads no weights: a model's parameter count comes from config/models.yaml (`params`), its shape (layers,
hidden size, feed-forward size, vocabulary) from that entry's `config` (tiny and ONNX models) or from
config/resources.yaml `gpu_mem.shapes`. Cells run in fp32 on CUDA as on CPU: 4 bytes per value.

- weights: 4 bytes per parameter; a method that tunes the base (full FT, FT-top-k) adds the gradients and AdamW's
  two states, 16 bytes per parameter in all (FT-top-k: for its top k blocks' share of the layers); a frozen
  base keeps only its delta's states, counted as none (deltas of the default grids are under 5% of the base);
- activations: what autograd saves per computed position and layer (`saved_values_per_position_layer`, the count
  that benchmark item 4 checks against measured peaks), at batch_size x (max_len + virtual tokens) positions per
  training row (a prompt ensemble trains its k prompts on k copies of the batch), plus three fp32
  vocabulary-wide values at every position for the LM head (logits, log-probabilities, their gradient; an upper
  bound, since the harness computes the head only at target positions);
- `overhead_mb` per process (CUDA context, allocator slack), which torch's own counters do not see.
"""

from __future__ import annotations

import functools
import math

from bench.api.errors import BenchError

VALUE_BYTES = 4  # fp32


def saved_values_per_position_layer(hidden: int, feed_forward: int, tunes_base: bool, method: str, hp: dict) -> int:
    """Values autograd keeps for backward per computed position in one Llama-style block (transformers' Llama with
    SDPA, k/v expanded to all heads): weights train -> 11h + 4i (norm inputs and outputs 3h twice, SDPA q, k, v and
    output 4h, o_proj's input h, the MLP's gate, act(gate), up and product 4i); frozen weights -> 6h + 3i (linears
    keep no input); LoRA adds the shared q/v input and its rank-r outputs."""
    values = (11 * hidden + 4 * feed_forward) if tunes_base else (6 * hidden + 3 * feed_forward)
    if method == "lora":
        values += hidden + 2 * hp["r"]
    return values


def model_shape(model: str, spec, shapes: dict) -> tuple[int, int, int, int]:
    """(layers, hidden, feed_forward, vocab) of a model, from its models.yaml `config` or resources.yaml's shapes."""
    if model in shapes:
        return tuple(int(v) for v in shapes[model])
    config = spec.config or {}
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    hidden = config.get("hidden_size", config.get("n_embd"))
    if layers is None or hidden is None:
        raise BenchError(
            f"model {model} has no shape for the GPU memory estimate: add `{model}: [layers, hidden, "
            f"feed_forward, vocab]` (from its config.json) under gpu_mem.shapes in config/resources.yaml"
        )
    feed_forward = config.get("intermediate_size", config.get("n_inner")) or 4 * hidden
    return int(layers), int(hidden), int(feed_forward), int(config.get("vocab_size", 256))  # tiny: byte-level


def estimate_bytes(
    params: int,
    shape: tuple[int, int, int, int],
    tunes_base: bool,
    method: str,
    hp: dict,
    extra_positions: int,
    overhead_mb: float,
) -> dict:
    """The estimate, itemised in bytes (`total` includes the per-process overhead). Activations are the larger of
    training's and evaluation's (no autograd: the KV cache, 2h per position and layer, and one vocabulary-wide row
    of logits per sequence; a cell that trains nothing has only these)."""
    layers, hidden, feed_forward, vocab = shape
    trains = hp["steps"] > 0
    rows = hp["batch_size"] * (hp["k"] if method == "prompt_ensemble" else 1)
    positions = rows * (hp["max_len"] + extra_positions)
    # FT-top-k trains its top k blocks: states for their share of the weights, and nothing saved below them
    trained_layers = min(hp["k"], layers) if method == "ft_top_k" else layers
    per_position = trained_layers * saved_values_per_position_layer(hidden, feed_forward, tunes_base, method, hp)
    prefix = 2 * hidden * hp["prefix_length"] * rows * layers if method == "prefix_tuning" else 0
    training = VALUE_BYTES * (positions * per_position + prefix + 3 * vocab * positions) if trains else 0
    eval_rows = hp["eval_batch_size"] * hp["num_beams"] * (hp["k"] if method == "prompt_ensemble" else 1)
    evaluation = VALUE_BYTES * eval_rows * ((hp["max_len"] + extra_positions) * 2 * hidden * layers + vocab)
    trained_share = trained_layers / layers if tunes_base and trains else 0.0
    weights = int(VALUE_BYTES * params * (1 + 3 * trained_share))
    overhead = int(overhead_mb * 2**20)
    activations = max(training, evaluation)
    return {
        "weights_and_states": weights,
        "activations": activations,
        "overhead": overhead,
        "total": weights + activations + overhead,
    }


def gpu_request(gpu_mem_mb: int, rules: dict) -> dict:
    """What a cell asks of SLURM (config/resources.yaml `gpu_mem.share`): a cell that needs at most half a GPU asks
    for that many of the GPU's `shard` GRES (SLURM then runs several such cells on one GPU, each its own job), a
    bigger one for a GPU of its own; none where `gpu_mb` is 0 (a cluster without GPUs)."""
    if not rules["gpu_mb"]:
        return {"gres": "", "gpu": 0}
    if rules["shards_per_gpu"] and 2 * gpu_mem_mb <= rules["gpu_mb"]:
        shard_mb = rules["gpu_mb"] / rules["shards_per_gpu"]
        return {"gres": f"shard:{math.ceil(gpu_mem_mb / shard_mb)}", "gpu": 0}
    return {"gres": "", "gpu": 1}


@functools.lru_cache(maxsize=None)
def _shape_of(model: str, shapes_key: tuple) -> tuple[int, int, int, int]:
    from bench.harness.models import get_model_spec

    return model_shape(model, get_model_spec(model), dict(shapes_key))


def cell_gpu_memory(model: str, method: str, hp: dict, rules: dict) -> dict:
    """`gpu_mem_mb`, `gres` and `gpu` of a cell (model name, method name, resolved hp), from resources.yaml's
    `gpu_mem` rules."""
    from bench.harness.method import get_method
    from bench.harness.models import get_model_spec

    spec = get_method(method)
    shape = _shape_of(model, tuple(sorted((k, tuple(v)) for k, v in (rules.get("shapes") or {}).items())))
    estimate = estimate_bytes(
        get_model_spec(model).params or 0,
        shape,
        spec.tunes_base,
        method,
        hp,
        spec.extra_positions(hp),
        rules["overhead_mb"],
    )
    gpu_mem_mb = -(-estimate["total"] // 2**20)
    return {"gpu_mem_mb": gpu_mem_mb, **gpu_request(gpu_mem_mb, rules["share"])}
