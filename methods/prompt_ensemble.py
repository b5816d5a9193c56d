"""Prompt ensembling (Lester et al. 2021, Table 3): k soft prompts on one frozen model, scored in one pass, majority
vote.

Own code: peft holds one prompt per PeftModel, so k prompts scored in ONE forward pass need a small
module of our own (`PromptEnsembleModel`, below): it prepends prompt i to every input row for each i
(batch = k × examples, prompt-major), exactly as peft's prompt tuning prepends one (same embeddings,
attention mask of ones before the text, right padding). The prompts and their initialisations are
prompt tuning's (methods/prompt_tuning.py: Lester's defaults, hp `num_virtual_tokens`, `init`); prompt i
is initialised with seed + i. Trainable parameters = k · p · d.

Training: the k prompts train jointly in the harness's one loop, each on every row of each batch (the
same batches, in the same order, as one prompt-tuning run of this cell), which equals k independent runs
that differ only in their init seed: the prompts are separate parameters, the loss reported is the mean
of the k prompts' losses while its gradient is that of their sum (so each prompt gets exactly its own
gradient), and Adafactor's and AdamW's states and weight decay are per parameter. A gradient-norm clip
would couple them (the loop clips the joint norm), so `grad_clip` must stay 0 (Lester's setting).

Evaluation (the `evaluate` hook): one batched rank-scoring pass gives every prompt's label log-probs; each
example's output row keeps the vote (`pred`), every prompt's prediction (`preds`) and the mean log-probs over
prompts (`logprobs`), and `score_outputs` turns rows into metrics: `accuracy` (and `f1`) is the ensemble's
majority vote over the k prompts' predictions, ties broken by the mean log-prob over prompts; the record also holds
`<metric>_avg_single` (mean over the k prompts), `<metric>_best_single` (best prompt on that eval set, an oracle choice
as in Lester's table), `<metric>_mean_logprob` (argmax of the mean log-prob) and `<metric>_singles` (each prompt's).
Classification only: a generation task is refused when the cell is planned. Encoder-decoder models (Lester's T5
setting): the prompts go before the encoder's input, every copy decodes the same label sequences, and the scores
come from the decoder's rank scoring (bench/harness/kinds/seq2seq.py), still one batched pass.

Delta: k peft prompt-tuning adapters, `prompt_<i>/` (adapter_config.json + adapter_model.safetensors with
`prompt_embeddings`), each of which loads on its own with `peft.PeftModel.from_pretrained`.
"""

from __future__ import annotations

import torch

from bench.api.errors import BenchError
from bench.harness.method import Method
from methods.prompt_tuning import check_prompt_hparams, initial_prompt, input_embeddings


class PromptEnsembleModel(torch.nn.Module):
    """A frozen causal LM and k soft prompts (k, p, d): each input row is answered once per prompt.

    forward(input_ids (B, L), attention_mask, logits_to_keep) runs the base on k·B rows; row i·B + b is input
    row b behind prompt i; logits are p positions longer than the input. A 2-D `logits_to_keep` (one row per
    input row, as bench.harness.train passes it) applies to each of the input row's k copies.
    """

    def __init__(self, base, prompts: list):
        super().__init__()
        self.base = base
        self.prompts = torch.nn.ParameterList([torch.nn.Parameter(p.clone()) for p in prompts])

    @property
    def device(self):
        return self.prompts[0].device

    @property
    def num_prompts(self) -> int:
        return len(self.prompts)

    @property
    def config(self):
        return self.base.config

    def get_input_embeddings(self):
        return self.base.get_input_embeddings()

    def get_output_embeddings(self):
        return self.base.get_output_embeddings()

    def get_encoder(self):
        return self.base.get_encoder()

    def forward(
        self,
        input_ids,
        attention_mask=None,
        logits_to_keep=0,
        decoder_input_ids=None,
        decoder_attention_mask=None,
        **kwargs,
    ):
        k, (batch, length) = len(self.prompts), input_ids.shape
        text = self.base.get_input_embeddings()(input_ids)
        prompts = torch.stack(list(self.prompts)).to(text.dtype)
        virtual = prompts.shape[1]
        embeds = torch.cat(
            [prompts.unsqueeze(1).expand(-1, batch, -1, -1), text.unsqueeze(0).expand(k, -1, -1, -1)], dim=2
        ).reshape(k * batch, virtual + length, -1)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        mask = torch.cat([attention_mask.new_ones(batch, virtual), attention_mask], dim=1).repeat(k, 1)
        if self.base.config.is_encoder_decoder:  # the prompts go before the encoder's input; each copy decodes alike
            return self.base(
                inputs_embeds=embeds,
                attention_mask=mask,
                decoder_input_ids=decoder_input_ids.repeat(k, 1),
                decoder_attention_mask=None if decoder_attention_mask is None else decoder_attention_mask.repeat(k, 1),
                **kwargs,
            )
        if isinstance(logits_to_keep, torch.Tensor) and logits_to_keep.dim() == 2:  # per input row: per copy
            logits_to_keep = logits_to_keep.repeat(k, 1)
        return self.base(inputs_embeds=embeds, attention_mask=mask, logits_to_keep=logits_to_keep, **kwargs)


def vote(scores) -> list[int]:
    """Majority vote over prompts of scores (k, examples, labels); ties go to the higher mean log-prob."""
    k, _, labels = scores.shape
    counts = torch.nn.functional.one_hot(scores.argmax(dim=-1), labels).sum(dim=0)
    tied = counts == counts.max(dim=-1, keepdim=True).values
    return scores.mean(dim=0).masked_fill(~tied, float("-inf")).argmax(dim=-1).tolist()


class PromptEnsemble(Method):
    description = __doc__
    defaults = {
        "optimizer": "adafactor",
        "lr": 0.3,
        "weight_decay": 1e-5,
        "grad_clip": 0.0,
        "num_virtual_tokens": 100,
        "init": "class_label",
        "k": 5,
    }
    model_kinds = ("causal_lm", "seq2seq")

    def check_hparams(self, hp, task, model_kind):
        name = self.name or "prompt_ensemble"
        check_prompt_hparams(hp, name)
        if hp["k"] < 1:
            raise BenchError(f"{name} k={hp['k']} must be a positive number of prompts (default {self.defaults['k']})")
        if hp["grad_clip"] != 0:
            raise BenchError(
                f"{name} needs grad_clip=0 (got {hp['grad_clip']}): the loop clips the joint gradient "
                "norm, which would couple the k prompts"
            )
        if task.kind != "classification":
            raise BenchError(
                f"{name} supports classification tasks only (majority vote): {task.name} is "
                f"{task.kind}; use prompt_tuning"
            )

    def apply(self, model, hp, ctx):
        self.check_hparams(hp, ctx.task, ctx.model_kind)
        model.requires_grad_(False)
        embeddings = input_embeddings(model)
        prompts = [
            initial_prompt(embeddings, ctx.tokenizer, ctx.task, hp["init"], hp["num_virtual_tokens"], ctx.seed + i).to(
                embeddings.dtype
            )
            for i in range(hp["k"])
        ]
        return PromptEnsembleModel(model, prompts)

    def extra_positions(self, hp):
        return hp["num_virtual_tokens"]

    def target_loss(self, logits, targets):
        """Logits hold the k prompts' rows (prompt-major, the same targets each): a loss with the value of the
        mean over prompts of each prompt's loss and the gradient of their sum."""
        k = logits.shape[0] // targets.shape[0]
        loss = super().target_loss(logits, targets.repeat(k))  # equal target counts: the mean over prompts
        return k * loss - ((k - 1) * loss).detach()

    def evaluate(self, model, tokenizer, task, examples, hp, timer=None):
        from bench.harness.evaluation import classification_outputs, rank_scores
        from bench.harness.kinds import seq2seq

        if model.config.is_encoder_decoder:
            scores = seq2seq.rank_scores(
                model, tokenizer, task, examples, hp["eval_batch_size"], hp["max_len"], timer, copies=model.num_prompts
            )
        else:
            scores = rank_scores(
                model,
                tokenizer,
                task,
                examples,
                hp["eval_batch_size"],
                hp["max_len"],
                self.extra_positions(hp),
                timer,
                copies=model.num_prompts,
            )
        scores = scores.reshape(model.num_prompts, len(examples), len(task.verbalizer))
        rows = classification_outputs(scores.mean(dim=0), examples)  # logprobs: the mean over prompts
        for row, voted, singles in zip(rows, vote(scores), scores.argmax(dim=-1).T.tolist()):
            row.update(pred=voted, preds=singles)
        return rows

    def score_outputs(self, rows, names, scorer=None):  # classification only: no scorer
        from bench.harness.evaluation import classification_metrics

        labels = [r["gold"] for r in rows]
        singles = [classification_metrics(list(preds), labels, names) for preds in zip(*(r["preds"] for r in rows))]
        metrics = classification_metrics([r["pred"] for r in rows], labels, names)
        by_mean = classification_metrics(
            [max(range(len(r["logprobs"])), key=r["logprobs"].__getitem__) for r in rows], labels, names
        )
        for name in list(metrics):
            values = [m[name] for m in singles]
            metrics[f"{name}_avg_single"] = sum(values) / len(values)
            metrics[f"{name}_best_single"] = max(values)
            metrics[f"{name}_mean_logprob"] = by_mean[name]
            metrics[f"{name}_singles"] = values
        return metrics

    def save_delta(self, model, path):
        from peft import PromptTuningConfig
        from safetensors.torch import save_file

        for i, prompt in enumerate(model.prompts):
            folder = path / f"prompt_{i}"
            folder.mkdir(parents=True, exist_ok=True)
            task_type = "SEQ_2_SEQ_LM" if model.config.is_encoder_decoder else "CAUSAL_LM"
            PromptTuningConfig(
                task_type=task_type,
                num_virtual_tokens=prompt.shape[0],
                token_dim=prompt.shape[1],
                num_transformer_submodules=1,
            ).save_pretrained(str(folder))
            save_file(
                {"prompt_embeddings": prompt.detach().cpu().contiguous()}, str(folder / "adapter_model.safetensors")
            )

    def load_delta(self, base, hp, ctx, path):
        from safetensors.torch import load_file

        model = self.apply(base, hp, ctx)
        with torch.no_grad():
            for i, prompt in enumerate(model.prompts):
                file = path / f"prompt_{i}" / "adapter_model.safetensors"
                saved = load_file(str(file)) if file.is_file() else {}
                if saved.get("prompt_embeddings", torch.empty(0)).shape != prompt.shape:
                    raise BenchError(
                        f"delta at {path} does not fit {self.name}: prompt_{i} missing or not of "
                        f"shape {tuple(prompt.shape)} (k={hp['k']}, num_virtual_tokens="
                        f"{hp['num_virtual_tokens']})"
                    )
                prompt.copy_(saved["prompt_embeddings"])
        return model


METHOD = PromptEnsemble()
