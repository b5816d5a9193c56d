"""P-tuning (Liu et al. 2021): a soft prompt produced by a trained prompt encoder (LSTM or MLP), model frozen (peft).

Library: peft (`PromptEncoderConfig`). Training updates the encoder's input embedding and the encoder
(hp `encoder`: `LSTM` = the paper's bidirectional LSTM + 2-layer ReLU MLP; `MLP` = peft's 3-layer MLP,
peft's own default), all counted in the trainable parameters. peft's saved delta holds only what the
encoder outputs at save time (`prompt_embeddings`, num_virtual_tokens × d): the encoder is a training
device, so the delta parameters are counted from what peft saves (plus the head of an encoder model),
and `peft.PeftModel.from_pretrained` loads the delta as a fixed prompt. The delta is saved under
`torch.no_grad()`, as evaluation runs: the LSTM's inference kernel differs from its training kernel by
~1e-5, and so the reloaded delta gives exactly the logits the cell was evaluated with.

Defaults: 20 virtual tokens, encoder hidden size 128, lr 1e-3 and weight decay 0.01 from peft's p-tuning
guide (RoBERTa on MRPC); AdamW. The paper inserts a few prompt tokens around anchor tokens of a template
(e.g. 3 per slot) and uses an LSTM encoder; here the prompt is prepended to the input, like prompt tuning,
so 20 tokens (peft's example) stand in for the paper's slots. The encoder's input embedding starts as
peft initialises it (N(0, 1), drawn after the cell's seed is set). Encoder-decoder models: the prompt goes before
the encoder's input only (peft SEQ_2_SEQ_LM with `num_transformer_submodules=1`, as in prompt tuning).
"""

from __future__ import annotations

from bench.api.errors import BenchError
from bench.harness.method import PeftMethod, peft_generation_compat
from methods._common import peft_task_type

ENCODERS = ("LSTM", "MLP")


class PTuning(PeftMethod):
    description = __doc__
    defaults = {
        "lr": 1e-3,
        "weight_decay": 0.01,
        "num_virtual_tokens": 20,
        "encoder": "LSTM",
        "encoder_hidden_size": 128,
    }

    def check_hparams(self, hp, task, model_kind):
        name = self.name or "p_tuning"
        if hp["num_virtual_tokens"] < 1:
            raise BenchError(
                f"{name} num_virtual_tokens={hp['num_virtual_tokens']} must be a positive integer "
                f"(prompt length; default {self.defaults['num_virtual_tokens']})"
            )
        if hp["encoder"].upper() not in ENCODERS:
            raise BenchError(f"{name} encoder '{hp['encoder']}' unknown: choose one of {', '.join(ENCODERS)}")
        if hp["encoder_hidden_size"] < 1:
            raise BenchError(
                f"{name} encoder_hidden_size={hp['encoder_hidden_size']} must be a positive integer "
                f"(default {self.defaults['encoder_hidden_size']})"
            )

    def apply(self, model, hp, ctx):
        from peft import PromptEncoderConfig, get_peft_model

        self.check_hparams(hp, ctx.task, ctx.model_kind)
        config = PromptEncoderConfig(
            num_virtual_tokens=hp["num_virtual_tokens"],
            encoder_reparameterization_type=hp["encoder"].upper(),
            encoder_hidden_size=hp["encoder_hidden_size"],
            task_type=peft_task_type(ctx),
            num_transformer_submodules=1,
        )
        return peft_generation_compat(get_peft_model(model, config))

    def delta_parameters(self, model) -> int:
        """Exactly the tensors peft's save_pretrained writes (the encoder's output, plus any head)."""
        from peft import get_peft_model_state_dict

        return sum(t.numel() for t in get_peft_model_state_dict(model).values())

    def extra_positions(self, hp):
        return hp["num_virtual_tokens"]


METHOD = PTuning()
