"""Bottleneck adapters (Houlsby et al. 2019; Lin et al. 2020 with `placement: lin`) in every block; own code.

Library: our own small module (torch only). The `adapters` library implements Houlsby adapters but
requires transformers 4.x, and peft has no bottleneck adapter; the method is ~40 lines.

Each adapter maps h -> h + W_up act(W_down h + b_down) + b_up with m = d / reduction_factor hidden
units (Houlsby: the adapter's own skip connection). Placement follows the paper: on the output of
each sublayer's final projection, before the block's residual add: the attention output projection
and the feed-forward output projection, named per architecture in config/models.yaml
(`attention_output`, `feed_forward_output`: Llama `self_attn.o_proj`, `mlp.down_proj`; BERT
`attention.output.dense`, `output.dense`; GPT-2 `attn.c_proj`, `mlp.c_proj`). For Llama-style and GPT-2
blocks these outputs are what is added to the residual stream (after GPT-2's residual dropout and Gemma 3's
post-sublayer norms, which follow the adapter); in BERT the adapter sits after the dense projection, before
dropout and the add & LayerNorm (the paper's Figure 2: after the projection, before the skip connection is
added).
Encoder-decoder models (T5, BART): two adapters in every block of both stacks, after self-attention and after
the feed-forward sublayer; none after the decoder's cross-attention (as the `adapters` library's Houlsby
configuration for encoder-decoders, `cross_adapter=False`: Houlsby et al. placed adapters per sublayer of an
encoder, so the two-per-block form is what carries over), so the closed form below holds with blocks = encoder +
decoder blocks. T5's feed-forward output is `layer.1.DenseReluDense.wo` in the encoder and `layer.2...` in the
decoder (config/models.yaml `decoder`).
The adapter is attached as a child `adapter` of the wrapped projection and applied by a forward
hook, so base parameter names do not change.

Init: W_down gets torch's default Linear init; W_up and both biases are zero, so the adapted model
is exactly the base model at step 0. (Houlsby et al.'s released code, google-research/adapter-bert,
draws both matrices from a truncated normal with std 1e-3: near the identity; we make it exactly the
identity, as LoRA does with B = 0.) Activation: GELU, as in that code; hp `activation` in
{gelu, relu, swish, tanh}.

Trained: the adapters only, 2 x (2*d*m + d + m) parameters per block (the closed form of the issue;
Houlsby et al. also train the layer norms, which this follows the issue in leaving frozen), plus the
classification head for encoders. Defaults: reduction_factor 16 (m = d/16), lr 3e-4 (the middle of
Houlsby et al.'s grid {3e-5, 3e-4, 3e-3}). `bottleneck: m` sets m directly (0: d / reduction_factor), for
the papers' parameter budgets that no divisor of d gives (Hu et al.'s AdapterL 0.37M on GPT-2 M: m 6).
The delta is a safetensors file of the adapter (and head) weights (the base `Method.save_delta`).

Placement (`placement`), the two designs Hu et al. compare (LoRA arXiv v2 §5.1, Baselines; Table 3):
- `houlsby` (AdapterH, default): after the attention and after the feed-forward sublayer, as above.
- `lin` (AdapterL, Lin et al. 2020, also Li & Liang's adapter baseline): one adapter per block, after the
  feed-forward sublayer only, with its own trained LayerNorm on its input:
  h -> h + W_up act(W_down LN(h) + b_down) + b_up, 2*d*m + d + m + 2*d parameters per block (use
  `activation: relu`, Lin et al.'s). Lin et al. apply it to the block's output after the residual add; here it
  sits on the feed-forward projection's output before the add (the hook of Houlsby's second adapter); the
  parameter count is the same.
"""

from __future__ import annotations

import torch

from bench.api.errors import BenchError
from bench.harness.method import Method
from methods._common import block_stacks, freeze, model_label, train_head

ACTIVATIONS = {"gelu": torch.nn.GELU, "relu": torch.nn.ReLU, "swish": torch.nn.SiLU, "tanh": torch.nn.Tanh}


PLACEMENTS = ("houlsby", "lin")


class BottleneckAdapter(torch.nn.Module):
    def __init__(self, d: int, m: int, activation: str, layer_norm: bool = False):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d) if layer_norm else torch.nn.Identity()
        self.down = torch.nn.Linear(d, m)
        self.act = ACTIVATIONS[activation]()
        self.up = torch.nn.Linear(m, d)
        torch.nn.init.zeros_(self.down.bias)
        torch.nn.init.zeros_(self.up.weight)
        torch.nn.init.zeros_(self.up.bias)

    def forward(self, hidden):
        return hidden + self.up(self.act(self.down(self.norm(hidden))))


def _apply_adapter(module, args, output):
    """Forward hook on a wrapped projection (module-level, so deep copies stay correct)."""
    return module.adapter(output)


class Adapter(Method):
    description = __doc__
    defaults = {"lr": 3e-4, "reduction_factor": 16, "bottleneck": 0, "activation": "gelu", "placement": "houlsby"}

    def check_hparams(self, hp: dict, task=None, model_kind=None) -> None:
        if hp["reduction_factor"] <= 0:
            raise BenchError(
                f"adapter reduction_factor={hp['reduction_factor']} must be a positive divisor of the "
                "hidden size (m = d / reduction_factor; e.g. 16)"
            )
        if hp["bottleneck"] < 0:
            raise BenchError(
                f"adapter bottleneck={hp['bottleneck']} invalid: use a positive width m, or 0 for d / reduction_factor"
            )
        if hp["placement"] not in PLACEMENTS:
            raise BenchError(
                f"adapter placement={hp['placement']!r} unknown: choose one of {', '.join(PLACEMENTS)} "
                "(houlsby: after attention and feed-forward; lin: after feed-forward, with a LayerNorm)"
            )
        if hp["activation"] not in ACTIVATIONS:
            raise BenchError(f"adapter activation={hp['activation']!r} unknown: choose one of {', '.join(ACTIVATIONS)}")

    def bottleneck(self, hp: dict, d: int, label: str) -> int:
        if hp["bottleneck"]:
            return hp["bottleneck"]
        factor = hp["reduction_factor"]
        if d % factor:
            valid = [f for f in range(1, d + 1) if d % f == 0]
            shown = ", ".join(map(str, valid[:12])) + (", ..." if len(valid) > 12 else "")
            raise BenchError(
                f"adapter reduction_factor={factor} does not divide the hidden size {d} of {label}: valid: {shown}"
            )
        return d // factor

    def apply(self, model, hp, ctx):
        self.check_hparams(hp, ctx.task, ctx.model_kind)
        d, label = model.config.hidden_size, model_label(model)
        m = self.bottleneck(hp, d, label)
        lin = hp["placement"] == "lin"
        sublayers = ("feed_forward_output",) if lin else ("attention_output", "feed_forward_output")
        projections = [
            block.get_submodule(getattr(arch, name))
            for _, blocks, arch in block_stacks(model)
            for block in blocks
            for name in sublayers
        ]
        if any(hasattr(projection, "adapter") for projection in projections):
            raise BenchError(f"adapter: {label} already has adapters: apply the method to a fresh base model")
        freeze(model)
        for projection in projections:
            weight = projection.weight
            adapter = BottleneckAdapter(d, m, hp["activation"], layer_norm=lin)
            projection.add_module("adapter", adapter.to(weight.device, weight.dtype))
            projection.register_forward_hook(_apply_adapter)
        train_head(model, ctx)
        return model


METHOD = Adapter()
