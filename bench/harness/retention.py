"""Retention: what adapting a model did to its general ability (hp `retention: true`; off by default).

Two measurements, each of the base model (the loaded model before the method touches it) and of the adapted
model (after training, as evaluated: a soft prompt stays prepended), on the same inputs:

- language-modelling loss per token (and perplexity) on held-out general text: the first TOKENS tokens of
  PASSAGES news articles of the XSum sample (a fixed seeded subset), text no task here trains on (the `xsum` task
  is evaluation-only; a cell whose training split is that text is refused). Per-passage summed losses and token
  counts are kept, so the report can draw passages in its intervals. As PEFT's method comparison
  (method_comparison/MetaMathQA/run.py) its loss is pooled over tokens; it measures the base there with
  `disable_adapter`, which the tests show gives the base back bit for bit.
- zero-shot accuracy on another task (hp `retention_task`), rank-scored with that task's own template on
  ZERO_SHOT_EXAMPLES of its in-domain eval set (the first of the fixed seeded subset every cell uses).
"""

from __future__ import annotations

import math
import random
import time

from bench.api.errors import BenchError

TEXT_TASK = "xsum"  # its in-domain eval set's `document` field is the held-out text
PASSAGES = 32
TOKENS = 128
ZERO_SHOT_EXAMPLES = 64
PASSAGE_SEED = 4321
BATCH = 4


def check(hp: dict, task, model_kind: str) -> None:
    """Plan-time refusal of retention settings that cannot work."""
    from bench.harness.kinds import get_kind
    from bench.harness.tasks import get_task

    if not hp["retention"]:
        if hp["retention_task"]:
            raise BenchError(
                f"retention_task={hp['retention_task']} is set but retention is off: "
                "add retention=true or drop retention_task"
            )
        return
    if not get_kind(model_kind).language_model:
        raise BenchError(
            "retention measures language-modelling loss and rank-scored zero-shot accuracy, which need "
            "a causal LM: drop retention for encoder models"
        )
    text_split = get_text_split()
    if task.train_split == text_split:
        raise BenchError(
            f"task {task.name} trains on {text_split}, the held-out text retention reads: drop retention for this task"
        )
    if hp["retention_task"]:
        other = get_task(hp["retention_task"])
        if other.name == task.name or other.kind != "classification":
            raise BenchError(
                f"retention_task={other.name} must be a classification task other than the cell's "
                f"({task.name}): choose another task"
            )


def datasets(hp: dict) -> list[str]:
    """The dataset ids retention reads (their files' sha256 go into the record's inputs)."""
    from bench.harness.tasks import get_task

    return [get_text_split()] + ([get_task(hp["retention_task"]).eval_split] if hp["retention_task"] else [])


def passages(root=None) -> list[str]:
    from bench.harness.tasks import get_task, load_split

    documents = [ex.fields["document"] for ex in load_split(get_task(TEXT_TASK).eval_split, root)]
    order = list(range(len(documents)))
    random.Random(PASSAGE_SEED).shuffle(order)
    return [documents[i] for i in order[:PASSAGES]]


def passage_losses(model, tokenizer, texts: list[str], extra_positions: int = 0) -> tuple[list[float], list[int]]:
    """(summed next-token cross-entropy, scored tokens) per text, over its first TOKENS tokens; logits of a
    method's virtual tokens (soft prompts) are dropped, so the same tokens are scored with and without them."""
    import torch
    import torch.nn.functional as F

    from bench.harness.tokens import pad, prompt_ids

    sums, counts = [], []
    ids = [prompt_ids(tokenizer, text)[:TOKENS] for text in texts]
    with torch.no_grad():
        for start in range(0, len(ids), BATCH):
            input_ids, mask = pad(ids[start : start + BATCH], tokenizer.pad_token_id)
            device = next(model.parameters()).device
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
            logits = logits[:, extra_positions:-1].float().cpu()
            nll = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none") * mask[:, 1:]
            sums += [round(float(v), 4) for v in nll.sum(dim=1)]
            counts += [int(v) for v in mask[:, 1:].sum(dim=1)]
    return sums, counts


class Retention:
    """Loads the inputs once; `measure(model, extra_positions)` is one model's side; `record(base, adapted)`."""

    def __init__(self, tokenizer, hp: dict, root=None):
        from bench.harness.tasks import eval_examples, get_task

        self.tokenizer, self.hp = tokenizer, hp
        self.texts = passages(root)
        self.other = get_task(hp["retention_task"]) if hp["retention_task"] else None
        self.examples = eval_examples(self.other, self.other.name, ZERO_SHOT_EXAMPLES, root) if self.other else []
        self.seconds = 0.0

    def measure(self, model, extra_positions: int = 0) -> dict:
        from bench.harness.evaluation import rank_scores

        start = time.perf_counter()
        model.eval()
        nll, tokens = passage_losses(model, self.tokenizer, self.texts, extra_positions)
        side = {"nll": nll, "tokens": tokens}
        if self.other:
            scores = rank_scores(
                model,
                self.tokenizer,
                self.other,
                self.examples,
                self.hp["eval_batch_size"],
                self.hp["max_len"],
                extra_positions,
            )
            side["correct"] = "".join(str(int(int(s.argmax()) == ex.label)) for s, ex in zip(scores, self.examples))
        self.seconds += time.perf_counter() - start
        return side

    def record(self, base: dict, adapted: dict) -> dict:
        from bench.harness.evaluation import example_ids

        def lm(side):
            loss = sum(side["nll"]) / sum(side["tokens"])
            return {"loss": round(loss, 5), "perplexity": round(math.exp(loss), 3)}

        out = {
            "text": {"dataset": get_text_split(), "passages": len(self.texts), "tokens_per_passage": TOKENS},
            "lm": {
                "base": lm(base),
                "adapted": lm(adapted),
                "loss_increase": round(lm(adapted)["loss"] - lm(base)["loss"], 5),
                "tokens": base["tokens"],
                "base_nll": base["nll"],
                "adapted_nll": adapted["nll"],
            },
            "seconds": round(self.seconds, 3),
        }
        if self.other:
            accuracy = lambda s: round(100.0 * s.count("1") / len(s), 2)  # noqa: E731
            out["zero_shot"] = {
                "task": self.other.name,
                "n": len(self.examples),
                "ids": example_ids(self.examples),
                "base_accuracy": accuracy(base["correct"]),
                "adapted_accuracy": accuracy(adapted["correct"]),
                "accuracy_change": round(accuracy(adapted["correct"]) - accuracy(base["correct"]), 2),
                "base_correct": base["correct"],
                "adapted_correct": adapted["correct"],
            }
        return out


def get_text_split() -> str:
    from bench.harness.tasks import get_task

    return get_task(TEXT_TASK).eval_split
