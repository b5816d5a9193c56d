"""Li & Liang's prefixes for encoder-decoder models (T5, BART): keys/values prepended in all three attention kinds.

Li & Liang (arXiv 2101.00190, §4; their PrefixTuning/seq2seq code) give BART three prefix sets: one for the
encoder's self-attention, one for the decoder's self-attention and one for the decoder's cross-attention, each
p positions x layers x (key, value), trained through its own MLP (embedding p x d, Linear(d, h), tanh,
Linear(h, layers*2*d_kv)) and kept as plain tables after training. peft 0.21.2 cannot do this (its SEQ_2_SEQ_LM
prefix reaches the decoder's self-attention only), so this is own code on transformers' public
`AttentionInterface`: the model's attention implementation becomes `prefix_sdpa`, which concatenates the
calling module's prefix keys/values in front of the keys/values it was given (after any KV cache, so cached
decoding re-reads the prefix at every step and the cache never holds it), lets every query see the prefix
(mask extended by p allowed columns) and hands the rest to transformers' own SDPA function. Attention modules
without a prefix pass through unchanged. T5's relative position bias gets p zero columns: the prefix sits at no
position, as a causal LM's peft prefix has no position either. Modules of the model are not copied or replaced.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from bench.api.errors import BenchError
from methods._common import freeze, model_label

ATTENTION = "prefix_sdpa"
KINDS = ("encoder", "decoder", "cross")


def prefix_attention(module, query, key, value, attention_mask, position_bias=None, **kwargs):
    source = getattr(module, "_prefix_source", None)
    if source is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, position_bias=position_bias, **kwargs)
    owner, kind, layer = source
    prefix_key, prefix_value = owner.key_values(kind, layer)  # heads x p x head_dim each
    batch, p = query.shape[0], prefix_key.shape[1]
    key = torch.cat([prefix_key.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
    value = torch.cat([prefix_value.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2)
    kwargs.pop("is_causal", None)
    q_length, kv_length = query.shape[2], key.shape[2] - p
    if attention_mask is None and q_length > 1 and getattr(module, "is_causal", False):
        # sdpa's mask skip left causality to is_causal, which a prefix-lengthened key no longer fits
        positions = torch.arange(kv_length, device=query.device)
        attention_mask = positions[None, :] <= positions[kv_length - q_length :, None]
        attention_mask = attention_mask[None, None].expand(batch, 1, -1, -1)
    if attention_mask is not None:
        allowed = True if attention_mask.dtype == torch.bool else 0.0
        attention_mask = torch.nn.functional.pad(attention_mask, (p, 0), value=allowed)
    if position_bias is not None:
        position_bias = torch.nn.functional.pad(position_bias, (p, 0), value=0.0)
    return sdpa_attention_forward(
        module, query, key, value, attention_mask, position_bias=position_bias, is_causal=False, **kwargs
    )


AttentionInterface.register(ATTENTION, prefix_attention)
AttentionMaskInterface.register(ATTENTION, sdpa_mask)


def attention_modules(model) -> dict[str, list]:
    """The attention modules of each kind, bottom layer first (T5: layer.0 / layer.1 of each block, BART:
    self_attn / encoder_attn)."""
    if model.config.model_type == "t5":
        encoder, decoder = model.encoder.block, model.decoder.block
        return {
            "encoder": [b.layer[0].SelfAttention for b in encoder],
            "decoder": [b.layer[0].SelfAttention for b in decoder],
            "cross": [b.layer[1].EncDecAttention for b in decoder],
        }
    if model.config.model_type == "bart":
        encoder, decoder = model.model.encoder.layers, model.model.decoder.layers
        return {
            "encoder": [b.self_attn for b in encoder],
            "decoder": [b.self_attn for b in decoder],
            "cross": [b.encoder_attn for b in decoder],
        }
    raise BenchError(
        f"prefix_tuning on encoder-decoder models knows T5 and BART attention, not "
        f"{model.config.model_type} ({model_label(model)}): use lora or prompt_tuning"
    )


class PrefixSet(torch.nn.Module):
    """One kind's prefix: a (layers, 2, heads, p, head_dim) table, direct or as MLP(E)."""

    def __init__(self, layers: int, heads: int, head_dim: int, p: int, d_model: int, hidden: int):
        super().__init__()
        self.shape = (p, layers, 2, heads, head_dim)
        width = layers * 2 * heads * head_dim
        if hidden:
            self.embedding = torch.nn.Embedding(p, d_model)
            self.mlp = torch.nn.Sequential(
                torch.nn.Linear(d_model, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, width)
            )
        else:
            self.table = torch.nn.Parameter(torch.randn(p, width) * 0.02)

    def forward(self):
        rows = self.mlp(self.embedding.weight) if hasattr(self, "mlp") else self.table
        return rows.view(self.shape).permute(1, 2, 3, 0, 4)  # layers, key|value, heads, p, head_dim


class Seq2SeqPrefix(torch.nn.Module):
    """The three prefix sets, attached to the model as its child `prompt_encoder`."""

    def __init__(self, model, p: int, hidden: int):
        super().__init__()
        config = model.config
        heads = config.num_attention_heads if config.model_type == "bart" else config.num_heads
        head_dim = config.d_kv if config.model_type == "t5" else config.d_model // heads
        modules = attention_modules(model)
        self.sets = torch.nn.ModuleDict(
            {kind: PrefixSet(len(modules[kind]), heads, head_dim, p, config.d_model, hidden) for kind in KINDS}
        )
        self._tables, self._stamp = None, None

    def tables(self) -> dict[str, torch.Tensor]:
        return {kind: prefix() for kind, prefix in self.sets.items()}

    def key_values(self, kind: str, layer: int):
        # one MLP evaluation per forward; recomputed after any in-place change (an optimizer step, a load)
        stamp = (torch.is_grad_enabled(), tuple(parameter._version for parameter in self.parameters()))
        if self._tables is None or stamp != self._stamp:
            self._tables, self._stamp = self.tables(), stamp
        table = self._tables[kind][layer]
        return table[0], table[1]


def _new_forward(module, args, kwargs):
    module.prompt_encoder._tables = None  # a graph is backpropagated once: each forward builds its own


def attach(model, p: int, hidden: int):
    """Freeze `model`, give it trainable prefixes in all three attention kinds; returns the model."""
    if hasattr(model, "prompt_encoder"):
        raise BenchError(f"prefix_tuning: {model_label(model)} already has prefixes: apply it to a fresh base model")
    modules = attention_modules(model)
    freeze(model)
    weight = model.get_input_embeddings().weight
    # named as peft's prefix encoder, so bench/harness/flops.py leaves it out of the per-position weights as it does
    # peft's
    model.add_module("prompt_encoder", Seq2SeqPrefix(model, p, hidden).to(weight.device))
    for kind, layers in modules.items():
        for layer, module in enumerate(layers):
            # a plain attribute, not a child module: the prefix parameters stay registered once
            object.__setattr__(module, "_prefix_source", (model.prompt_encoder, kind, layer))
    model.register_forward_pre_hook(_new_forward, with_kwargs=True)
    model.set_attn_implementation(ATTENTION)
    return model


def save_tables(model, path) -> None:
    """The delta: the three tables as the model attends to them (MLPs evaluated and dropped, as Li & Liang), each
    `prefix.<kind>` of shape (layers, key|value, heads, p, head_dim)."""
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        tables = {f"prefix.{kind}": table.contiguous() for kind, table in model.prompt_encoder.tables().items()}
    save_file(tables, str(path / "delta.safetensors"))


def load_tables(base, p: int, path):
    """A fresh base model with the saved tables as plain (no-MLP) prefixes."""
    from safetensors.torch import load_file

    tables = load_file(str(path / "delta.safetensors"))
    model = attach(base, p, 0)
    with torch.no_grad():
        for kind, prefix in model.prompt_encoder.sets.items():
            saved = tables.get(f"prefix.{kind}")
            if saved is None or saved.shape != prefix().shape:
                raise BenchError(
                    f"delta at {path} does not fit prefix_tuning on {model_label(base)}: its "
                    f"prefix.{kind} is {None if saved is None else tuple(saved.shape)}, expected "
                    f"{tuple(prefix().shape)}: rerun the cell"
                )
            prefix.table.copy_(saved.permute(3, 0, 1, 2, 4).reshape(prefix.table.shape))
    return model
