"""Prefix tuning (Li & Liang 2021): trained key/value prefixes at every layer, via an MLP reparameterisation (peft).

Library: peft (`PrefixTuningConfig(prefix_projection=True, encoder_hidden_size=mlp_hidden)`); the
real-token initialisation below is our own code (peft has no such option).

The prefix is p virtual positions whose key and value vectors at every layer are free parameters;
the frozen model attends to them as if they were earlier tokens (peft passes them as
`past_key_values`, so logits are not lengthened: `extra_positions` stays 0). Following the paper,
training goes through a reparameterisation P = MLP(E) (E: p x d_kv embedding, Linear(d_kv, h), tanh,
Linear(h, L*2*d_kv)); `mlp_hidden=0` trains the prefix directly. Only the prefix itself is kept:
peft's `save_pretrained` evaluates the MLP and stores `prompt_embeddings`, exactly p*L*2*d_kv values
(d_kv = key/value heads x head dim), without the MLP; `PeftModel.from_pretrained` loads that as a
plain table. So `delta_parameters` = p*L*2*d_kv (+ the head for encoders) while the trainable count
recorded during training is the larger MLP count.

Initialisation (`init`):
- `real_tokens` (default; Li & Liang initialise prefixes with the activations of real words): run
  the frozen model on p real task tokens and take each layer's keys and values (for RoPE models the
  keys as cached, i.e. rotated for positions 0..p-1, and peft places the input at positions p.. after
  the prefix). At step 0 the adapted model therefore computes exactly what the base model computes on
  `real tokens + input`. The tokens are `init_text` when given, else the task prompts of the training
  examples in training order, concatenated and cut to p tokens;
  without training examples, the template's literal text and the label words, repeated. With the MLP,
  E and the first layer keep peft's random init and the last layer is solved in closed form
  (minimum-norm least squares on [tanh(W1 E + b1), 1]) so that MLP(E) equals those key/values to
  float precision; this needs mlp_hidden >= p.
- `random`: peft's default init (FEASIBILITY.md pitfall 4: collapsed to chance on SmolLM2-135M).

Encoder-decoder models (T5, BART): Li & Liang's BART setting, own code (methods/_seq2seq_prefix.py): three
prefix sets, in the encoder's self-attention, the decoder's self-attention and the decoder's cross-attention, each
with its own MLP while training (mlp_hidden > 0) and init=random (E ~ N(0, 1), torch's Linear init; without the
MLP the table ~ N(0, 0.02^2)). peft 0.21.2's SEQ_2_SEQ_LM prefix reaches the decoder's self-attention only, so
the delta is not a peft checkpoint: it is a safetensors file of the three tables (MLPs evaluated and dropped),
p*2*d_kv*(L_enc + 2*L_dec) values, and `load_delta` rebuilds plain tables from it. init=real_tokens is refused
there (not implemented for three prefix sets).

Encoders (BERT, RoBERTa, MPNet) are refused when the cell is planned (`past_key_values: false` in
config/models.yaml): under transformers 5 they take no past key/values, the only way peft passes prefixes.

Defaults: prefix length 10 (the paper's table-to-text setting), MLP hidden 512, lr 5e-5 (the paper's,
for the reparameterised prefix). FEASIBILITY.md's working CPU runs used lr 1e-2 on a prefix trained
directly (no MLP). Do not combine lr 1e-2 with the MLP: Adam moves every MLP weight by ~lr, so the
prefix moves ~h times further per step. Measured on SmolLM2-135M, SST-2, 200 examples, 40 steps,
real-token init (100 dev / 100 IMDB): mlp_hidden=512, lr 1e-2: loss 1.65 -> 16.2 after one step,
49% / 43% (chance); mlp_hidden=0, lr 1e-2: 85% / 83%.
"""

from __future__ import annotations

from string import Formatter

from bench.api.errors import BenchError
from bench.harness.method import PeftMethod, peft_generation_compat
from methods._common import model_architecture, model_label, peft_task_type

INITS = ("real_tokens", "random")
SEQ2SEQ_FAMILIES = ("t5", "bart")  # whose attention modules methods/_seq2seq_prefix.py knows


class PrefixTuning(PeftMethod):
    description = __doc__
    defaults = {"lr": 5e-5, "prefix_length": 10, "mlp_hidden": 512, "init": "real_tokens", "init_text": ""}

    def check_hparams(self, hp: dict, task=None, model_kind=None) -> None:
        p, h = hp["prefix_length"], hp["mlp_hidden"]
        if p <= 0:
            raise BenchError(
                f"prefix_tuning prefix_length={p} must be a positive integer (e.g. 10, the paper's "
                "table-to-text length)"
            )
        if hp["init"] not in INITS:
            raise BenchError(f"prefix_tuning init={hp['init']!r} unknown: choose one of {', '.join(INITS)}")
        if h < 0:
            raise BenchError(f"prefix_tuning mlp_hidden={h} invalid: use 0 (no MLP) or a positive width (paper: 512)")
        if hp["init"] == "real_tokens" and model_kind == "seq2seq":
            raise BenchError(
                "prefix_tuning init=real_tokens needs a causal LM: the encoder-decoder prefixes (encoder, "
                "decoder and cross-attention) have no real-token init here; use init=random"
            )
        if hp["init"] == "real_tokens" and 0 < h < p:
            raise BenchError(
                f"prefix_tuning mlp_hidden={h} cannot reproduce {p} real-token prefixes: use "
                f"mlp_hidden >= {p}, mlp_hidden=0 (no MLP), or init=random"
            )

    def check_architecture(self, hp: dict, arch) -> None:
        if arch.encoder_decoder and arch.model_type not in SEQ2SEQ_FAMILIES:
            raise BenchError(
                f"prefix_tuning on encoder-decoder models knows {' and '.join(SEQ2SEQ_FAMILIES)} "
                f"attention, not {arch.model_type}: use lora or prompt_tuning"
            )
        if not arch.past_key_values:
            raise BenchError(
                f"prefix_tuning passes its prefixes as past key/values, which {arch.model_type} models "
                "do not take (transformers 5): use p_tuning or prompt_tuning (a soft prompt on the "
                "input) on this encoder, or prefix_tuning on a causal LM"
            )

    def apply(self, model, hp, ctx):
        from peft import PrefixTuningConfig, get_peft_model

        self.check_hparams(hp, ctx.task, ctx.model_kind)
        self.check_architecture(hp, model_architecture(model))
        p, h = hp["prefix_length"], hp["mlp_hidden"]
        if ctx.model_kind == "seq2seq":
            import methods._seq2seq_prefix as seq2seq_prefix  # torch/transformers: not at planning time

            return seq2seq_prefix.attach(model, p, h)
        target = real_token_prefix(model, init_token_ids(hp, ctx, p)) if hp["init"] == "real_tokens" else None
        config = PrefixTuningConfig(
            task_type=peft_task_type(ctx), num_virtual_tokens=p, prefix_projection=h > 0, encoder_hidden_size=h or None
        )
        adapted = peft_generation_compat(get_peft_model(model, config))
        if target is not None:
            set_prefix(adapted.prompt_encoder["default"], target, model_label(model))
        return adapted

    def delta_parameters(self, model) -> int:
        if model.config.is_encoder_decoder:  # own prefixes (methods/_seq2seq_prefix.py), no peft model
            return sum(table.numel() for table in model.prompt_encoder.tables().values())
        config = model.peft_config["default"]
        prefix = config.num_virtual_tokens * config.num_layers * 2 * config.token_dim
        head = sum(p.numel() for n, p in model.named_parameters() if ".modules_to_save.default." in n)
        return prefix + head

    def save_delta(self, model, path) -> None:
        if model.config.is_encoder_decoder:
            import methods._seq2seq_prefix as seq2seq_prefix

            return seq2seq_prefix.save_tables(model, path)
        return super().save_delta(model, path)

    def load_delta(self, base, hp, ctx, path):
        if ctx.model_kind == "seq2seq":
            import methods._seq2seq_prefix as seq2seq_prefix

            return seq2seq_prefix.load_tables(base, hp["prefix_length"], path)
        return super().load_delta(base, hp, ctx, path)


def init_token_ids(hp: dict, ctx, length: int) -> list[int]:
    """`length` real token ids to initialise the prefix from (see the module docstring)."""
    from bench.harness.tokens import prompt_ids

    tokenizer, task = ctx.tokenizer, ctx.task  # causal LMs only: encoders are refused (check_architecture)
    ids: list[int] = prompt_ids(tokenizer, hp["init_text"]) if hp["init_text"] else []
    for example in ctx.train_examples if not ids else []:
        ids += prompt_ids(tokenizer, task.prompt(example))
        if len(ids) >= length:
            break
    if not ids:  # no training examples: the template's own words and the label words
        literal = "".join(text for text, *_ in Formatter().parse(task.template))
        ids = prompt_ids(tokenizer, literal + "".join(task.verbalizer) or task.name)
    while len(ids) < length:
        ids = ids + ids
    return ids[:length]


def real_token_prefix(model, token_ids: list[int]):
    """The frozen model's keys/values on `token_ids`, laid out as peft's prefix table (p, L*2*d_kv)."""
    import torch
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids = torch.tensor([token_ids], device=model.device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True)
    model.train(was_training)
    # peft reads row t as (layer, key|value, head, head_dim) flattened; see PeftModel.get_prompt
    kv = torch.stack([torch.stack([layer.keys[0], layer.values[0]]) for layer in cache.layers])  # L,2,H,p,hd
    return kv.permute(3, 0, 1, 2, 4).reshape(len(token_ids), -1).float()


def set_prefix(encoder, target, label: str) -> None:
    """Make peft's prefix encoder output `target`: directly, or by solving the MLP's last layer."""
    import torch

    width = encoder.embedding.weight.shape[1] if not encoder.prefix_projection else encoder.transform[2].out_features
    if target.shape[1] != width:
        raise BenchError(
            f"prefix_tuning real-token init: {label} gives key/values of width {target.shape[1]} per "
            f"position but peft expects {width}: use init=random for this architecture"
        )
    with torch.no_grad():
        if not encoder.prefix_projection:
            encoder.embedding.weight.copy_(target)
            return
        first, last = encoder.transform[0], encoder.transform[2]
        hidden = torch.tanh(first(encoder.embedding.weight)).double()
        design = torch.cat([hidden, torch.ones(hidden.shape[0], 1, dtype=hidden.dtype, device=hidden.device)], dim=1)
        solution = torch.linalg.pinv(design) @ target.double()  # minimum-norm exact fit (rows <= columns)
        last.weight.copy_(solution[:-1].T.to(last.weight.dtype))
        last.bias.copy_(solution[-1].to(last.bias.dtype))
        error = (encoder.transform(encoder.embedding.weight) - target).abs().max().item()
    if error > 1e-3 * (1.0 + target.abs().max().item()):
        raise BenchError(
            f"prefix_tuning real-token init: the MLP fit is off by {error:.2e}: use mlp_hidden=0 or init=random"
        )


METHOD = PrefixTuning()
