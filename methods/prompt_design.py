"""Prompt design: no training; the task's template and verbalizer zero-shot, or k-shot in-context (GPT-3 style).

Own code (nothing to train, so no library): the model is left as it is with every weight frozen, and the
method only formats the prompt through the `format_prompt` hook, which the harness applies wherever a
task prompt becomes token ids. hp `shots` (default 0 = zero-shot): k demonstrations are drawn without
replacement, with the cell's seed, from the cell's training examples (`train_size` sets that pool),
each written `prompt + target` (the task's template and verbalizer word or first reference) and joined
by a blank line before the test prompt. The same k demonstrations, in the same order, serve every test
example of the cell (a fixed prompt per seed, as in Zhao et al. 2021); other seeds draw other ones.
`max_len` cuts prompts from the left, so with long demonstrations the earliest are cut first: raise
`max_len` to keep all k. Causal LMs and encoder-decoder models (the encoder reads the prompt); not encoders (they
read the text fields, not a prompt). `steps` must stay 0.
"""

from __future__ import annotations

import random

from bench.api.errors import BenchError
from bench.harness.method import Method


class PromptDesign(Method):
    description = __doc__
    defaults = {"steps": 0, "shots": 0}
    model_kinds = ("causal_lm", "seq2seq")

    def check_hparams(self, hp, task, model_kind):
        name = self.name or "prompt_design"
        if hp["steps"] != 0:
            raise BenchError(f"{name} trains nothing: use steps=0 (got steps={hp['steps']})")
        if hp["shots"] < 0:
            raise BenchError(f"{name} shots={hp['shots']} must be 0 (zero-shot) or a positive number of demonstrations")
        if hp["shots"] > 0 and task.train_split is None:
            raise BenchError(
                f"{name} shots={hp['shots']} needs training examples but task {task.name} has "
                "no training split: use shots=0"
            )

    def apply(self, model, hp, ctx):
        self.check_hparams(hp, ctx.task, ctx.model_kind)
        if hp["shots"] > len(ctx.train_examples):
            raise BenchError(
                f"{self.name or 'prompt_design'} shots={hp['shots']} exceeds the "
                f"{len(ctx.train_examples)} training examples: raise train_size or lower shots"
            )
        model.requires_grad_(False)
        return model

    def demonstrations(self, hp, ctx) -> list:
        """The k training examples shown before every test prompt of the cell, in order."""
        if hp["shots"] == 0:
            return []
        return random.Random(ctx.seed).sample(ctx.train_examples, hp["shots"])  # O(k), no copy

    def format_prompt(self, prompt, hp, ctx):
        task = ctx.task
        shown = [task.prompt(ex) + task.target(ex) for ex in self.demonstrations(hp, ctx)]
        return "\n\n".join(shown + [prompt])

    def save_delta(self, model, path):
        path.mkdir(parents=True, exist_ok=True)  # nothing is learnt: the delta is empty

    def load_delta(self, base, hp, ctx, path):
        return self.apply(base, hp, ctx)


METHOD = PromptDesign()
