"""Prompt tuning (Lester et al. 2021): a trained soft prompt of p embeddings before the input, model frozen (peft).

Library: peft (`PromptTuningConfig`): its PeftModel prepends the prompt to the input embeddings, extends
the attention mask (and the labels with -100), and saves/loads the prompt as `prompt_embeddings`, so a
delta loads with `peft.PeftModel.from_pretrained`. The initialisations are our own code, written into
the prompt's weight after `get_peft_model`, because peft's differ from the paper's: peft RANDOM is
N(0, 1), SAMPLE_VOCAB samples the whole vocabulary, TEXT needs a tokenizer path and there is no
class-label init.

Defaults are the paper's (T5 setting): Adafactor (parameter scaling off, β2 decay 0.8 = the harness's
Adafactor default decay_rate -0.8), lr 0.3, weight decay 1e-5, 100 prompt tokens, class-label init,
no gradient-norm clipping (Adafactor clips its own updates). hp `init`:

- `random`: uniform in [-0.5, 0.5] (Lester's range).
- `vocab`: embeddings of tokens drawn without replacement from the 5,000 most frequent tokens. Frequency
  proxy: the 5,000 lowest token ids after dropping added/special tokens and SentencePiece byte-fallback
  tokens (`<0xNN>`): BPE vocabularies list merges in the order they were learnt (most frequent first),
  SentencePiece ones by piece score. A model-level prior like Lester's (T5's vocabulary is ordered by
  likelihood); counting tokens of the cell's training sample instead would make the init depend on the
  train size.
- `class_label`: prompt row i = embedding of the task's verbalizer word i, averaged over its tokens when it
  has several (as Lester does for multi-token labels); remaining rows as `vocab`. Generation tasks have no
  label words: all rows as `vocab`.

Analysis (Lester §7, kept in the record for the report's interpretability table): each trained prompt row's
5 nearest vocabulary tokens by cosine similarity to the input embeddings, and how many rows have a label
word (the task's verbalizer) or a task word (a word of the task's prompt template, e.g. "review",
"sentiment") among them; tokens compare as decoded text, stripped and lowercased, whole tokens only.

Draws use a generator seeded with the cell's seed. Causal LMs classify by rank scoring; peft returns
logits `num_virtual_tokens` positions longer, hence `extra_positions`. Encoders (BERT) use peft's SEQ_CLS
prompt tuning: the prompt goes before [CLS], so the pooler reads the first virtual token, and the
classification head trains too (peft's modules_to_save), so it counts in trainable and delta parameters.
Encoder-decoder models (T5, BART: Lester's own setting) use peft's SEQ_2_SEQ_LM prompt tuning: the prompt goes
before the encoder's input only (`num_transformer_submodules=1`; peft's seq2seq default, 2, would allocate and
save a second p × d table that its forward never reads), so decoder positions do not move.
"""

from __future__ import annotations

import re

from bench.api.errors import BenchError
from bench.harness.method import PeftMethod, peft_generation_compat
from methods._common import peft_task_type

INITS = ("random", "vocab", "class_label")
NEIGHBOURS = 5
FREQUENT_TOKENS = 5000
RANDOM_RANGE = 0.5


def check_prompt_hparams(hp: dict, name: str) -> None:
    if hp["num_virtual_tokens"] < 1:
        raise BenchError(
            f"{name} num_virtual_tokens={hp['num_virtual_tokens']} must be a positive integer "
            f"(prompt length; default {PromptTuning.defaults['num_virtual_tokens']})"
        )
    if hp["init"] not in INITS:
        raise BenchError(f"{name} init '{hp['init']}' unknown: choose one of {', '.join(INITS)}")


def frequent_token_ids(tokenizer, count: int = FREQUENT_TOKENS) -> list[int]:
    """The `count` lowest ids that are ordinary vocabulary (not added/special, not byte fallback)."""
    added = set(tokenizer.added_tokens_decoder)
    out = []
    for i in range(len(tokenizer)):
        if i in added:
            continue
        token = tokenizer.convert_ids_to_tokens(i)
        if token is None or re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", token):
            continue
        out.append(i)
        if len(out) == count:
            break
    return out


def vocab_rows(embeddings, tokenizer, rows: int, generator):
    """Embeddings of `rows` tokens drawn from the frequent tokens (without replacement where possible)."""
    import torch

    candidates = torch.tensor(frequent_token_ids(tokenizer))
    if rows <= len(candidates):
        picks = candidates[torch.randperm(len(candidates), generator=generator)[:rows]]
    else:
        picks = candidates[torch.randint(len(candidates), (rows,), generator=generator)]
    return embeddings[picks].clone()


def label_rows(embeddings, tokenizer, verbalizer) -> list:
    """One row per label word: the mean embedding of its tokens."""
    from bench.harness.tokens import continuation_ids

    return [embeddings[continuation_ids(tokenizer, word)].mean(dim=0) for word in verbalizer]


def input_embeddings(model):
    """The input embedding matrix as the model's first layer receives it. Gemma (and BART with `scale_embedding`)
    multiply by `embed_scale` (sqrt(d)) inside the embedding module, and the prompt is prepended after that module:
    token inits read from the bare matrix would start sqrt(d) times smaller than the text beside them (25x on
    Gemma-3-270M)."""
    module = model.get_input_embeddings()
    return module.weight.detach() * float(getattr(module, "embed_scale", 1.0))


def initial_prompt(embeddings, tokenizer, task, init: str, length: int, seed: int):
    """A (length, d) float32 prompt initialised as `init` says, from the model's `input_embeddings`."""
    import torch

    embeddings = embeddings.detach().float().cpu()
    generator = torch.Generator().manual_seed(seed)
    if init == "random":
        return (torch.rand(length, embeddings.shape[1], generator=generator) * 2 - 1) * RANDOM_RANGE
    prompt = vocab_rows(embeddings, tokenizer, length, generator)
    if init == "class_label" and task.verbalizer:
        labels = label_rows(embeddings, tokenizer, task.verbalizer)[:length]
        prompt[: len(labels)] = torch.stack(labels)
    return prompt


def prompt_neighbours(prompt, embeddings, tokenizer, task, k: int = NEIGHBOURS) -> dict:
    """Each prompt row's k nearest vocabulary tokens by cosine similarity (Lester et al. 2021, §7) and how many
    rows have a label word or a task word among them (module docstring)."""
    import torch

    def unit(matrix):
        return torch.nn.functional.normalize(matrix.detach().float().cpu(), dim=-1)

    vocabulary = unit(embeddings)[: len(tokenizer)]  # rows past the tokenizer's vocabulary are padding
    cosine, ids = (unit(prompt) @ vocabulary.T).topk(k, dim=-1)
    tokens = [[tokenizer.decode([i]) for i in row] for row in ids.tolist()]
    label_words = sorted({word.strip().lower() for word in task.verbalizer})
    template_words = re.findall(r"[a-z]+", re.sub(r"\{[^}]*\}", " ", task.template).lower())
    task_words = sorted(set(template_words) - set(label_words))

    def rows_with(words) -> int:
        return sum(any(token.strip().lower() in words for token in row) for row in tokens)

    return {
        "k": k,
        "tokens": tokens,
        "cosine": [[round(c, 4) for c in row] for row in cosine.tolist()],
        "label_words": label_words,
        "task_words": task_words,
        "rows_with_label_word": rows_with(set(label_words)),
        "rows_with_task_word": rows_with(set(task_words)),
    }


class PromptTuning(PeftMethod):
    description = __doc__
    defaults = {
        "optimizer": "adafactor",
        "lr": 0.3,
        "weight_decay": 1e-5,
        "grad_clip": 0.0,
        "num_virtual_tokens": 100,
        "init": "class_label",
    }

    def check_hparams(self, hp, task, model_kind):
        check_prompt_hparams(hp, self.name or "prompt_tuning")

    def apply(self, model, hp, ctx):
        import torch
        from peft import PromptTuningConfig, get_peft_model

        self.check_hparams(hp, ctx.task, ctx.model_kind)
        prompt = initial_prompt(
            input_embeddings(model), ctx.tokenizer, ctx.task, hp["init"], hp["num_virtual_tokens"], ctx.seed
        )
        config = PromptTuningConfig(
            num_virtual_tokens=hp["num_virtual_tokens"], task_type=peft_task_type(ctx), num_transformer_submodules=1
        )
        adapted = peft_generation_compat(get_peft_model(model, config))
        weight = adapted.prompt_encoder["default"].embedding.weight
        with torch.no_grad():
            weight.copy_(prompt.to(weight.dtype))
        return adapted

    def extra_positions(self, hp):
        return hp["num_virtual_tokens"]

    def analyse(self, model, hp, ctx):
        prompt = model.prompt_encoder["default"].embedding.weight
        return {
            "prompt_neighbours": prompt_neighbours(prompt, model.get_input_embeddings().weight, ctx.tokenizer, ctx.task)
        }


METHOD = PromptTuning()
