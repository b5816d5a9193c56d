"""BitFit (Ben Zaken et al. 2021): only the bias terms of the model train; own code.

Library: our own code (a few lines: freeze everything, unfreeze every parameter named `bias`); peft
has no BitFit (LoRA's `bias="all"` trains biases only beside LoRA matrices).

Every bias of the model trains: attention q/k/v and output, feed-forward, layer norms (the paper
lists the LayerNorm biases among them), embeddings' LayerNorm and BERT's pooler, plus the whole
classification head for encoders (the paper trains the task head too). The delta is a safetensors file
of those tensors (the base `Method.save_delta`).

Models without bias terms (Llama, SmolLM2, Gemma: no biases in any linear layer or norm) are refused
before training rather than given new zero biases: adding biases would be a different method, not
BitFit. Qwen2 keeps its q/k/v biases, so BitFit there trains only those. lr 1e-3 (the top of the
paper's grid {1e-4, 4e-4, 7e-4, 1e-3}).
"""
from __future__ import annotations

from bench.errors import BenchError
from bench.method import Method
from methods._common import freeze, model_label, train_head


def bias_parameters(model) -> list:
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]


class BitFit(Method):
    description = __doc__
    defaults = {"lr": 1e-3}

    def apply(self, model, hp, ctx):
        biases = bias_parameters(model)
        if not biases:
            raise BenchError(f"bitfit needs bias terms: {model_label(model)} has none; use ia3 or lora "
                             "(or an encoder such as tiny-bert)")
        freeze(model)
        for _, parameter in biases:
            parameter.requires_grad_(True)
        train_head(model, ctx)
        return model


METHOD = BitFit()
