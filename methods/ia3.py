"""(IA)^3 (Liu et al. 2022): learned vectors rescale keys, values and the feed-forward inner activations, via peft.

Library: peft (`IA3Config`). The vectors start at 1 (the base model at step 0) and are merged or
saved as a tiny delta (`save_pretrained`, loadable with `PeftModel.from_pretrained`).

Targets: what the paper rescales, read from the architecture's entry in config/models.yaml: the key and
value projections (`key_value`: Llama `k_proj`, `v_proj`; BERT `attention.self.key/value`; MPNet
`attn.k/v`; output-side vectors of size d_kv) and the feed-forward output projection
(`feed_forward_output`: `down_proj`; BERT `output.dense`; GPT-2 `mlp.c_proj`), rescaled on its input, i.e.
the inner activation (size d_ff). This departs from peft's built-in defaults where those differ from the
paper: for Qwen2 and Gemma peft rescales q_proj instead of k_proj, for BERT/RoBERTa its suffix
`output.dense` also catches the attention output projection (`attention.output.dense`), and for MPNet it
has none. GPT-2 fuses q, k and v into one Conv1D (`c_attn`), whose output vector (3d) rescales the
queries too (as peft's GPT-2 default does): there IA3 trains d more values per block than the paper's.
Encoder-decoder models (T5, BART; the T-Few setting): every block of both stacks, and in the decoder the
cross-attention's keys and values too (config/models.yaml `decoder.key_value`), as peft's T5 default and the
paper's T0 do: per encoder block 2*d_kv + d_ff values, per decoder block 4*d_kv + d_ff.
So per (decoder-only) block 2*d_kv + d_ff trainable values (+ the classification head for encoders).
lr 3e-3 (the paper's T-Few recipe uses 3e-3 with Adafactor; `--hp optimizer=adafactor` gives that).
"""

from __future__ import annotations

from bench.harness.method import PeftMethod
from methods._common import block_stacks, peft_task_type


def paper_targets(model) -> tuple[list[str], list[str]]:
    """Full names of the key/value projections and feed-forward output projections of every block."""
    key_value, feed_forward = [], []
    for prefix, blocks, arch in block_stacks(model):
        feed_forward += [f"{prefix}.{index}.{arch.feed_forward_output}" for index in range(len(blocks))]
        key_value += [f"{prefix}.{index}.{name}" for index in range(len(blocks)) for name in arch.key_value]
    return key_value + feed_forward, feed_forward


class IA3(PeftMethod):
    description = __doc__
    defaults = {"lr": 3e-3}

    def apply(self, model, hp, ctx):
        from peft import IA3Config, get_peft_model

        targets, feed_forward = paper_targets(model)
        config = IA3Config(
            task_type=peft_task_type(ctx),
            target_modules=targets,
            feedforward_modules=feed_forward,
            fan_in_fan_out=type(model.get_submodule(targets[0])).__name__ == "Conv1D",
        )
        return get_peft_model(model, config)


METHOD = IA3()
