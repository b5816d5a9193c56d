"""Greedy decoding that stops paying for finished sequences: the harness's one generation loop.

`decode` takes a batch as `model.generate` does (left-padded prompts for causal LMs, right-padded encoder inputs
for encoder-decoder models) and returns the same tensor, token for token. The difference: a row that has produced
the end token leaves the batch at once, with its rows of the KV cache (`Cache.batch_select_indices`), its
attention-mask row and its position; the steps after that run on the rows still decoding. `model.generate` keeps
a finished row in the batch, feeding it padding until the batch's longest output ends.

The loop is what `generate` does for greedy search, written out for the inputs this project feeds:
- prefill: the prompt with its attention mask, positions counted over the mask (`cumsum - 1`, 0 on padding, as
  `generate` builds them), logits of the last position only (`logits_to_keep=1` where the model takes it);
- each step: argmax of the last logits (float32), the new token fed with the mask grown by one column and the
  position grown by one; the cache the model returned is passed back;
- stop: a row ends at its end token; all rows end after `max_new_tokens`; where the model's generation config
  forces the end token at the maximum length (BART's `forced_eos_token_id`), the last step emits it, as
  `generate`'s logits processor does;
- output: (prompt, new tokens), finished rows padded with `pad_token_id` to the longest output, as `generate`.

`stop` (optional) ends a row early by another rule; the harness passes `FirstLineDone`: its outputs are the first
line of the continuation (bench.harness.tokens.clean_generation), so a row whose decoded continuation holds a
newline after some text is finished too. With it the tokens are a prefix of `generate`'s (up to that newline) and the
harness's outputs the same texts; without it, the same tokens.

Encoder-decoder models: the encoder runs once; each step runs the decoder on the last token with the encoder's
states, the encoder mask and an `EncoderDecoderCache`; dropping a row drops its encoder states, mask and both
caches (self- and cross-attention). The output starts with the decoder start token, as `generate`'s.

peft prompt-learning models (causal LMs), fed as peft's `prepare_inputs_for_generation` feeds them:
- prefix tuning: the prefix is the initial cache (`get_prompt`), the mask gets its p columns in front, positions
  are shifted by p;
- prompt tuning and P-tuning: the soft prompt's embeddings go in front of the prompt's in the prefill, the mask
  gets p columns in front, and no positions are passed (the model counts them from the cache, as under `generate`,
  where peft drops them; the harness batches such prompts only with prompts of equal length).
Encoder-decoder prefix tuning (methods/_seq2seq_prefix.py) lives in the attention function and needs nothing here.

Where the loop is not used (`unsupported` says why; callers then take `model.generate`): beam search
(`num_beams` > 1: the paper grid's `num_beams: 5` cells keep today's path), peft prompt learning on an
encoder-decoder model (peft builds the encoder's soft-prompted inputs inside its own `generate`), models that are
neither a transformers nor a peft model (e.g. methods/prompt_ensemble.py's wrapper), and generation configs that
ask `generate` for logits processors other than a forced end token (repetition penalties, n-gram blocking,
minimum lengths, suppressed tokens: the loop does not reimplement them).
"""

from __future__ import annotations

import functools
import inspect

import torch

# generation-config fields that change greedy search's choices only through logits processors the loop lacks;
# a model whose config sets any of them to something else decodes with `model.generate`
INERT = {
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "min_length": 0,
    "min_new_tokens": None,
    "forced_bos_token_id": None,
    "suppress_tokens": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "exponential_decay_length_penalty": None,
    "renormalize_logits": False,
    "guidance_scale": None,
    "watermarking_config": None,
    "stop_strings": None,
    "max_time": None,
}


def _peft_config(model):
    config = getattr(model, "active_peft_config", None)
    return config if config is not None and getattr(config, "is_prompt_learning", False) else None


def unsupported(model, num_beams: int = 1) -> str | None:
    """Why `decode` would hand this call to `model.generate`, or None when its own loop runs."""
    if num_beams > 1:
        return f"beam search (num_beams={num_beams})"
    from transformers import PreTrainedModel

    is_peft = hasattr(model, "get_base_model") and hasattr(model, "peft_config")
    if not (isinstance(model, PreTrainedModel) or is_peft):
        return f"{type(model).__name__} is neither a transformers nor a peft model"
    prompt_learning = _peft_config(model)
    if prompt_learning is not None and model.config.is_encoder_decoder:
        return f"peft {prompt_learning.peft_type} on an encoder-decoder model"
    if prompt_learning is not None and str(prompt_learning.peft_type).rsplit(".", 1)[-1] not in (
        "PREFIX_TUNING",
        "PROMPT_TUNING",
        "P_TUNING",
    ):
        return f"peft {prompt_learning.peft_type}"
    config = getattr(model, "generation_config", None)
    for field, inert in INERT.items():
        value = getattr(config, field, inert)
        if value not in (inert, None) and not (field == "min_length" and value == 0):
            return f"generation config sets {field}={value!r}"
    return None


def _accepts(module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


def _cache(outputs):
    for key in ("cache", "past_key_values"):
        if outputs.get(key) is not None:
            return outputs[key]
    raise RuntimeError(f"{type(outputs).__name__} holds no KV cache: the model ran without use_cache")


class _DecoderRows:
    """The live rows of a causal LM's batch: mask, last positions, cache; `step` feeds one token per row."""

    def __init__(self, model, input_ids, attention_mask):
        peft = _peft_config(model)
        # a peft model's `generate` runs its base model's (with any LoRA/IA3 layers inside): so does this loop, which
        # then sees `logits_to_keep` in the signature (PeftModel.forward hides it in **kwargs: logits everywhere)
        self.forward = model.get_base_model() if hasattr(model, "peft_config") else model
        self.extra = {"use_cache": True}
        if _accepts(self.forward, "logits_to_keep"):
            self.extra["logits_to_keep"] = 1
        positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        rows, kind = input_ids.shape[0], str(peft.peft_type).rsplit(".", 1)[-1] if peft is not None else None
        inputs = {"input_ids": input_ids}
        cache = None
        self.positions = positions[:, -1]
        if kind is not None:
            prefix = attention_mask.new_ones(rows, peft.num_virtual_tokens)
            attention_mask = torch.cat([prefix, attention_mask], dim=1)
        if kind == "PREFIX_TUNING":
            cache = model.get_prompt(batch_size=rows)
            positions = positions + peft.num_virtual_tokens
            self.positions = positions[:, -1]
        elif kind in ("PROMPT_TUNING", "P_TUNING"):
            embeds = model.word_embeddings(input_ids)
            prompts = model.get_prompt(batch_size=rows).to(embeds.dtype)
            inputs = {"input_ids": None, "inputs_embeds": torch.cat([prompts, embeds], dim=1)}
            positions = self.positions = None  # the model counts positions from its cache
        self.mask = attention_mask
        if positions is not None and _accepts(self.forward, "position_ids"):
            inputs["position_ids"] = positions
        else:
            self.positions = None
        outputs = self.forward(**inputs, attention_mask=self.mask, cache=cache, **self.extra)
        self.logits, self.cache = outputs.logits[:, -1], _cache(outputs)

    def keep(self, rows):
        self.mask = self.mask[rows]
        if self.positions is not None:
            self.positions = self.positions[rows]
        self.cache.batch_select_indices(rows)

    def step(self, tokens):
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        inputs = {}
        if self.positions is not None:
            self.positions = self.positions + 1
            inputs["position_ids"] = self.positions[:, None]
        outputs = self.forward(
            input_ids=tokens[:, None], attention_mask=self.mask, cache=self.cache, **inputs, **self.extra
        )
        self.logits, self.cache = outputs.logits[:, -1], _cache(outputs)


class _EncoderDecoderRows:
    """The live rows of an encoder-decoder batch: encoder states and mask, decoder cache."""

    def __init__(self, model, input_ids, attention_mask):
        from transformers.modeling_outputs import BaseModelOutput

        self.model, self.mask = model, attention_mask
        encoder = model.get_encoder()
        self.states = BaseModelOutput(
            last_hidden_state=encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        )
        start = model.generation_config.decoder_start_token_id
        if start is None:
            start = model.config.decoder_start_token_id
        self.start = input_ids.new_full((input_ids.shape[0], 1), start)
        self.cache = None
        self._run(self.start)

    def _run(self, decoder_input_ids):
        outputs = self.model(
            encoder_outputs=self.states,
            attention_mask=self.mask,
            decoder_input_ids=decoder_input_ids,
            cache=self.cache,
            use_cache=True,
        )
        self.logits, self.cache = outputs.logits[:, -1], _cache(outputs)

    def keep(self, rows):
        self.mask = self.mask[rows]
        self.states = type(self.states)(last_hidden_state=self.states.last_hidden_state[rows])
        self.cache.batch_select_indices(rows)

    def step(self, tokens):
        self._run(tokens[:, None])


@functools.lru_cache(maxsize=8)
def _newline_ids(tokenizer) -> torch.Tensor:
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))])
    return torch.tensor([i for i, text in enumerate(texts) if "\n" in text], dtype=torch.long)


class FirstLineDone:
    """`stop` for outputs cut to their first line: a row is done once its decoded continuation (special tokens
    skipped, as the harness decodes it), left-stripped, holds a newline. Decodes a row only at a step whose token
    contains a newline."""

    def __init__(self, tokenizer):
        self.tokenizer, self.newline = tokenizer, _newline_ids(tokenizer)

    def __call__(self, new, tokens):
        done = torch.zeros_like(tokens, dtype=torch.bool)
        for row in torch.isin(tokens, self.newline.to(tokens.device)).nonzero().flatten().tolist():
            text = self.tokenizer.decode(new[row].tolist(), skip_special_tokens=True)
            done[row] = "\n" in text.lstrip()
        return done


@torch.no_grad()
def decode(
    model,
    input_ids,
    attention_mask,
    max_new_tokens: int,
    pad_token_id: int,
    eos_token_id: int,
    num_beams: int = 1,
    drop_finished: bool = True,
    stop=None,
):
    """`model.generate(input_ids, attention_mask, do_sample=False, num_beams, max_new_tokens, use_cache=True,
    pad_token_id, eos_token_id)`'s output, with finished rows dropped from the batch (the module docstring);
    `drop_finished=False`, or a case `unsupported` names, runs `model.generate` itself (today's path). `stop`:
    called with (the live rows' new tokens so far, their latest tokens), True where a row is done as well."""
    if not drop_finished or unsupported(model, num_beams) is not None:
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            num_beams=num_beams,
            max_new_tokens=max_new_tokens,
            use_cache=True,
            pad_token_id=pad_token_id,
            eos_token_id=eos_token_id,
        )
    encoder_decoder = model.config.is_encoder_decoder
    live = (_EncoderDecoderRows if encoder_decoder else _DecoderRows)(model, input_ids, attention_mask)
    head = live.start if encoder_decoder else input_ids
    forced_end = getattr(model.generation_config, "forced_eos_token_id", None)
    new = input_ids.new_full((input_ids.shape[0], max_new_tokens), pad_token_id)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)  # batch row of each live row
    width = 0
    for step in range(max_new_tokens):
        tokens = live.logits.float().argmax(dim=-1)
        if forced_end is not None and step == max_new_tokens - 1:
            tokens = torch.full_like(tokens, forced_end)
        new[rows, step] = tokens
        width = step + 1
        going = tokens != eos_token_id
        if stop is not None:
            going &= ~stop(new[rows, :width], tokens)
        if step == max_new_tokens - 1 or not bool(going.any()):
            break
        if not bool(going.all()):
            kept = going.nonzero().squeeze(1)
            rows, tokens = rows[kept], tokens[kept]
            live.keep(kept)
        live.step(tokens)
    return torch.cat([head, new[:, :width]], dim=1)
