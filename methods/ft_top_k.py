"""Fine-tuning of only the top k transformer blocks (Li & Liang 2021's FT-Top2 baseline); own code.

Library: our own code (freeze everything, unfreeze the top blocks); nothing to borrow from peft.

Trained: every parameter of the top k blocks, plus what sits above them on the way to the output:
the final norm of decoder models (`model.norm`), and for encoders BERT's pooler and the classification
head. The LM head stays frozen: in SmolLM2, Qwen2.5 and Gemma 3 (and GPT-2, the paper's model) it is
tied to the input embedding, so training it would train the bottom of the model; for consistency an
untied LM head is frozen too. Defaults: k = 2 (FT-Top2), lr 5e-5 (the paper's fine-tuning lr).
Encoder-decoder models (T5, BART): the top k blocks of the decoder, the stack nearest the output (Li & Liang
define FT-Top2 on GPT-2 only), plus the decoder's final norm where it has one (T5 `decoder.final_layer_norm`;
BART's post-LN decoder has none: its `layernorm_embedding`, registered after the blocks, normalises the
embeddings at the bottom), named in config/models.yaml (`decoder_final_norm`); the encoder stays frozen.
The delta is a safetensors file of the trained tensors (the base `Method.save_delta`).
"""

from __future__ import annotations

from bench.api.errors import BenchError
from bench.harness.method import Method
from methods._common import block_stacks, freeze, model_label, train_head


def modules_above(model, path: str) -> list:
    """Modules registered after the one at `path` in each of its ancestors (the layers above it)."""
    above, parts = [], path.split(".")
    for depth in range(len(parts)):
        parent = model.get_submodule(".".join(parts[:depth]))
        children = list(parent.named_children())
        position = [name for name, _ in children].index(parts[depth])
        above += [module for _, module in children[position + 1 :]]
    return above


class FineTuneTopK(Method):
    description = __doc__
    defaults = {"lr": 5e-5, "k": 2}
    tunes_base = True

    def check_hparams(self, hp: dict, task=None, model_kind=None) -> None:
        if hp["k"] < 1:
            raise BenchError(f"ft_top_k k={hp['k']} must be at least 1 (and at most the model's number of blocks)")

    def apply(self, model, hp, ctx):
        self.check_hparams(hp, ctx.task, ctx.model_kind)
        path, blocks, arch = block_stacks(model)[-1]  # the top stack: an encoder-decoder's decoder
        k = hp["k"]
        if not 1 <= k <= len(blocks):
            raise BenchError(
                f"ft_top_k k={k} invalid for {model_label(model)} with {len(blocks)} blocks: choose 1..{len(blocks)}"
            )
        freeze(model)
        output_embedding = model.get_output_embeddings()
        frozen = set() if output_embedding is None else {id(p) for p in output_embedding.parameters()}
        if arch.encoder_decoder:  # what lies above the decoder's blocks is named, not found by registration order
            above = [model.get_submodule(arch.decoder_final_norm)] if arch.decoder_final_norm else []
        else:
            above = modules_above(model, path)
        for module in list(blocks)[-k:] + above:
            for parameter in module.parameters():
                if id(parameter) not in frozen:
                    parameter.requires_grad_(True)
        train_head(model, ctx)
        return model


METHOD = FineTuneTopK()
