"""BitFit (Ben Zaken et al. 2021): only the bias terms of the model train; own code.

Library: our own code (a few lines: freeze everything, unfreeze every parameter named `bias`); peft
has no BitFit (LoRA's `bias="all"` trains biases only beside LoRA matrices).

Every bias of the model trains: attention q/k/v and output, feed-forward, layer norms (the paper
lists the LayerNorm biases among them), embeddings' LayerNorm and BERT's pooler, plus the whole
classification head for encoders (the paper trains the task head too). The delta is a safetensors file
of those tensors (the base `Method.save_delta`).

Models without bias terms (Llama, SmolLM2, Gemma: no biases in any linear layer or norm; `bias: false` of
their architecture in config/models.yaml) are refused when the cell is planned rather than given new zero
biases: adding biases would be a different method, not BitFit. Qwen2 keeps its q/k/v biases, so BitFit there trains only
those. lr 1e-3 (the top of the paper's grid {1e-4, 4e-4, 7e-4, 1e-3}).
"""

from __future__ import annotations

from bench.api.errors import BenchError
from bench.harness.method import Method
from methods._common import freeze, model_architecture, train_head


def bias_parameters(model) -> list:
    return [(n, p) for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] == "bias"]


class BitFit(Method):
    description = __doc__
    defaults = {"lr": 1e-3}

    def check_architecture(self, hp, arch):
        from bench.harness.models import architectures

        if not arch.bias:
            with_bias = ", ".join(name for name, other in architectures().items() if other.bias)
            raise BenchError(
                f"bitfit needs bias terms: {arch.model_type} models have none; use ia3 or lora, or a "
                f"model with biases ({with_bias})"
            )

    def apply(self, model, hp, ctx):
        self.check_architecture(hp, model_architecture(model))
        freeze(model)
        for _, parameter in bias_parameters(model):
            parameter.requires_grad_(True)
        train_head(model, ctx)
        return model


METHOD = BitFit()
