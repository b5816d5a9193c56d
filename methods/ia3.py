"""(IA)^3 (Liu et al. 2022): learned vectors rescale keys, values and the feed-forward inner activations, via peft.

Library: peft (`IA3Config`). The vectors start at 1 (the base model at step 0) and are merged or
saved as a tiny delta (`save_pretrained`, loadable with `PeftModel.from_pretrained`).

Targets (`target_modules`):
- `auto` (default): what the paper rescales, found by role: the key and value projections (`k_proj`,
  `v_proj`; BERT `attention.self.key/value`; MPNet `attn.k/v`; output-side vectors of size d_kv) and
  the feed-forward output projection (`down_proj`; BERT `output.dense`), rescaled on its input, i.e.
  the inner activation (size d_ff); a feed-forward target must take d_ff inputs. This departs from
  peft's built-in defaults where those differ from the paper: for Qwen2 and Gemma peft rescales
  q_proj instead of k_proj, and for BERT/RoBERTa its suffix `output.dense` also catches the attention
  output projection (`attention.output.dense`).
- `peft`: peft's own per-architecture defaults (needed for fused-qkv models such as GPT-2).
So per block 2*d_kv + d_ff trainable values (+ the classification head for encoders).
lr 3e-3 (the paper's T-Few recipe uses 3e-3 with Adafactor; `--hp optimizer=adafactor` gives that).
"""
from __future__ import annotations

from bench.errors import BenchError
from bench.method import PeftMethod
from methods._common import model_label, peft_task_type, transformer_blocks

KEY_VALUE = ("self_attn.k_proj", "self_attn.v_proj", "attention.self.key", "attention.self.value",
             "attention.attn.k", "attention.attn.v")
FEED_FORWARD = ("mlp.down_proj", "output.dense")
TARGETS = ("auto", "peft")


def paper_targets(model) -> tuple[list[str], list[str]]:
    """Full names of the key/value projections and feed-forward output projections of every block."""
    prefix, blocks = transformer_blocks(model)
    d_ff = getattr(model.config, "intermediate_size", None)
    targets, feed_forward = [], []
    for index, block in enumerate(blocks):
        names = dict(block.named_modules())
        kv = [n for n in KEY_VALUE if n in names]
        ff = [n for n in FEED_FORWARD if n in names and getattr(names[n], "in_features", None) == d_ff]
        if len(kv) != 2 or len(ff) != 1:
            raise BenchError(f"ia3 target_modules=auto does not know the key/value/feed-forward modules of "
                             f"{model_label(model)} ({type(block).__name__}): use --hp target_modules=peft")
        targets += [f"{prefix}.{index}.{n}" for n in kv + ff]
        feed_forward.append(f"{prefix}.{index}.{ff[0]}")
    return targets, feed_forward


class IA3(PeftMethod):
    description = __doc__
    defaults = {"lr": 3e-3, "target_modules": "auto"}

    def check_hparams(self, hp: dict, task=None, model_kind=None) -> None:
        if hp["target_modules"] not in TARGETS:
            raise BenchError(f"ia3 target_modules={hp['target_modules']!r} unknown: choose one of {', '.join(TARGETS)}")

    def apply(self, model, hp, ctx):
        from peft import IA3Config, get_peft_model

        self.check_hparams(hp, ctx.task, ctx.model_kind)
        targets, feed_forward = paper_targets(model) if hp["target_modules"] == "auto" else (None, None)
        config = IA3Config(task_type=peft_task_type(ctx), target_modules=targets, feedforward_modules=feed_forward)
        return get_peft_model(model, config)


METHOD = IA3()
