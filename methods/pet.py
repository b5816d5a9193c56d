"""PET, pattern-exploiting training (Schick & Schütze 2021a, EACL, arXiv 2001.07676): pattern models, ensemble soft
labels.

Two stages, each a cell of the same grid (the DAG carries the dependency, as distill's teacher):

- `stage: pattern` (default): one model per pattern (hp `template`: one of the task's `templates` in
  config/tasks.yaml, a template and its verbalizer) trained on the labelled sample with PET's cloze loss: the
  cross-entropy of the softmax over the verbalizer's label words only (PET's q_p(y|x), 2001.07676 §3.1), at the
  position whose next word is the label word. The weights that train are those of hp `base` (full_ft by default;
  lora, ia3, ... as an option, with the base method's own defaults for its other hyperparameters; `lr` and the
  training settings are this cell's).
- `stage: final`: hp `patterns` = the pattern cells' directories, comma-separated (in a grid:
  `patterns_method: "LABEL,LABEL,..."`, see bench/grid/plan.py). Before training (`prepare_train_examples`, not in
  train_s) each pattern model labels the unlabelled pool: `pool_size` examples of the task's `unlabelled` split
  (config/tasks.yaml; default its training split) that are not in the labelled sample
  (bench.harness.tasks.unlabelled_pool: seeded, nested across pool sizes, labels removed before any model sees them);
  each gives the distribution softmax(rank scores of its label words) over the labels, and the pool's soft label is
  their mean (hp `weighting: uniform`), or their mean weighted by each pattern model's accuracy on the labelled sample
  (`weighting: train_accuracy`; PET weights by the accuracy *before* training, 2001.07676 §3.1). The final model (the
  task's own template unless `template` says otherwise; the `base` method's weights) then trains on the pool alone with
  the cross-entropy to those soft labels over the label words (`training_loss`; equal to the KL divergence up to the
  labels' constant entropy).

Differences from the paper, said here once: causal LMs predict the *next* word, so PET's patterns with the mask
inside the text are written with the label word at the end (config/tasks.yaml cites each source); the final
classifier is the same language model scored on its label words, not a sequence-classification head; the
ensemble averages distributions (as the issue asks) where PET averages the patterns' logits and applies a
softmax with temperature 2; PET's auxiliary language-modelling loss and iPET are not implemented. Label words
must be one token each (PET's own single-mask setting): checked when the model's tokenizer loads, with one line.
Own code on the harness's loop (no library implements PET on transformers 5); causal LMs only.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path

from bench.api.errors import BenchError
from bench.harness.method import TRAIN_DEFAULTS, CellContext, Method, get_method, resolve_hparams

STAGES = ("pattern", "final")
WEIGHTINGS = ("uniform", "train_accuracy")
NOT_BASES = ("pet", "distill", "prompt_design", "prompt_ensemble")  # no own trainable weights, or stages of their own


class PET(Method):
    description = __doc__
    defaults = {
        "lr": 2e-5,
        "stage": "pattern",
        "base": "full_ft",
        "patterns": "",
        "pool_size": 200,
        "weighting": "uniform",
    }
    model_kinds = ("causal_lm",)
    tunes_base = True  # the default base, full_ft (FLOPs and resources: an upper bound for a LoRA base)

    def __init__(self):
        self._base_name = "full_ft"  # hp base, set in apply / load_delta (save_delta has no hp)
        self._label_ids = None  # the verbalizer's token ids, set in apply (the tokenizer is there)
        self._soft = None  # final stage: the pool's soft labels, one row per training example

    # ------------------------------------------------------------------ checks (plan time)
    def base_method(self, hp) -> tuple[Method, dict]:
        if hp["base"] in NOT_BASES:
            raise BenchError(f"pet base={hp['base']} trains no weights of its own: use full_ft, lora, ia3, ...")
        base = get_method(hp["base"])
        return base, resolve_hparams(base, {k: v for k, v in hp.items() if k in TRAIN_DEFAULTS})

    def check_hparams(self, hp, task, model_kind):
        if hp["stage"] not in STAGES:
            raise BenchError(f"pet stage={hp['stage']!r} unknown: use {' or '.join(STAGES)}")
        if hp["weighting"] not in WEIGHTINGS:
            raise BenchError(f"pet weighting={hp['weighting']!r} unknown: use {' or '.join(WEIGHTINGS)}")
        if task.kind != "classification":
            raise BenchError(f"pet needs a classification task (label words), not {task.kind} task {task.name}")
        if hp["stage"] == "final" and not hp["patterns"].strip():
            raise BenchError(
                "pet stage=final needs hp patterns=<the pattern cells' directories, comma-separated> "
                '(in a grid: patterns_method: "LABEL,LABEL,...")'
            )
        if hp["stage"] == "final" and hp["pool_size"] < 1:
            raise BenchError(f"pet pool_size={hp['pool_size']} must be a positive number of unlabelled examples")
        base, base_hp = self.base_method(hp)
        base.check_hparams(base_hp, task, model_kind)

    def check_architecture(self, hp, arch):
        base, base_hp = self.base_method(hp)
        base.check_architecture(base_hp, arch)

    # ------------------------------------------------------------------ the model: the base method's
    def apply(self, model, hp, ctx):
        self._label_ids = label_token_ids(ctx.tokenizer, ctx.task)
        base, base_hp = self.base_method(hp)
        self._base_name = base.name
        return base.apply(model, base_hp, ctx)

    def delta_parameters(self, model):
        return get_method(self._base_name).delta_parameters(model)

    def save_delta(self, model, path):
        get_method(self._base_name).save_delta(model, path)

    def load_delta(self, base_model, hp, ctx, path):
        self._label_ids = label_token_ids(ctx.tokenizer, ctx.task)
        base, base_hp = self.base_method(hp)
        self._base_name = base.name
        return base.load_delta(base_model, base_hp, ctx, path)

    # ------------------------------------------------------------------ losses
    def target_loss(self, logits, targets):
        """PET's cloze loss: cross-entropy of the softmax over the label words' logits."""
        import torch
        import torch.nn.functional as F

        ids = torch.tensor(self._label_ids, device=logits.device)
        gold = (targets[:, None] == ids[None]).float().argmax(dim=-1)
        return F.cross_entropy(logits.float()[:, ids], gold)

    def training_loss(self, logits, targets, example_index):
        if self._soft is None:  # pattern stage: gold labels
            return self.target_loss(logits, targets)
        import torch

        if logits.shape[0] != len(example_index):
            raise BenchError("pet: one target position per example expected (single-token label words)")
        ids = torch.tensor(self._label_ids, device=logits.device)
        soft = self._soft[example_index.cpu()].to(logits.device)
        return soft_label_loss(logits.float()[:, ids], soft)

    # ------------------------------------------------------------------ the final stage's training set
    def prepare_train_examples(self, examples, hp, ctx):
        if hp["stage"] != "final":
            self._soft = None
            return examples
        import torch

        from bench.harness.tasks import unlabelled_pool

        dirs = [d.strip() for d in hp["patterns"].split(",") if d.strip()]
        first = [pattern_config(d, ctx.task, len(examples), ctx.seed) for d in dirs][0]
        pool = unlabelled_pool(
            ctx.task, examples, hp["pool_size"], ctx.seed, first.get("data_root"), first.get("dev_limit")
        )
        distributions, accuracies = [], []
        for folder in dirs:
            on_pool, on_labelled = pattern_distributions(folder, ctx.task, [pool, examples])
            distributions.append(on_pool)
            gold = torch.tensor([ex.label for ex in examples])
            accuracies.append(float((on_labelled.argmax(dim=-1) == gold).float().mean()))
        weights = accuracies if hp["weighting"] == "train_accuracy" else [1.0] * len(dirs)
        self._soft = ensemble(distributions, weights)
        return [dataclasses.replace(ex, label=int(q.argmax())) for ex, q in zip(pool, self._soft)]


def label_token_ids(tokenizer, task) -> list[int]:
    """The verbalizer's label words as one token id each; BenchError where one is several tokens or two coincide."""
    from bench.harness.tokens import continuation_ids

    ids = [continuation_ids(tokenizer, word) for word in task.verbalizer]
    if any(len(i) != 1 for i in ids) or len({i[0] for i in ids}) != len(ids):
        raise BenchError(
            f"pet needs label words of one distinct token each; task {task.name}'s verbalizer "
            f"{list(task.verbalizer)} tokenises to {ids}: choose a template whose label words are "
            "single tokens (hp template)"
        )
    return [i[0] for i in ids]


def soft_label_loss(label_logits, soft):
    """Mean over examples of the cross-entropy from soft label distributions to softmax(label_logits)."""
    import torch

    return -(soft * torch.log_softmax(label_logits, dim=-1)).sum(dim=-1).mean()


def ensemble(distributions: list, weights: list[float]):
    """The weighted mean of the pattern models' label distributions (examples × labels each)."""

    total = sum(weights)
    if total <= 0:
        raise BenchError(
            "pet weighting=train_accuracy: every pattern model has accuracy 0 on the labelled "
            "sample: use weighting=uniform"
        )
    return sum(w * d for w, d in zip(weights, distributions)) / total


def pattern_config(folder: str, task, train_size: int, seed: int) -> dict:
    """A pattern cell's recorded config, checked (same task, train size and seed, stage pattern, status ok)."""
    record_file = Path(folder) / "record.json"
    try:
        record = json.loads(record_file.read_text())
        config = record["config"]
    except (OSError, ValueError, KeyError, TypeError):
        raise BenchError(
            f"pet pattern cell {folder} has no readable record.json: run it first (in a grid: "
            "patterns_method names its label)"
        ) from None
    wrong = [
        f"{key} {config.get(key)!r}, not {want!r}"
        for key, want in (("task", task.name), ("seed", seed), ("method", "pet"))
        if config.get(key) != want
    ]
    if config.get("train_size") not in (train_size, "full"):  # "full": the split's size, known only to the cell
        wrong.append(f"train_size {config.get('train_size')!r}, not {train_size}")
    if config.get("hp", {}).get("stage") != "pattern":
        wrong.append("stage is not pattern")
    if record.get("status") != "ok" or not (Path(folder) / "delta").is_dir():
        wrong.append(f"status {record.get('status')!r} or no delta/")
    if wrong:
        raise BenchError(
            f"pet pattern cell {folder}: {'; '.join(wrong)}: name pattern cells of this cell's task, "
            "train size and seed, trained with pet stage=pattern"
        )
    return config


def pattern_distributions(folder: str, task, example_sets: list[list]) -> list:
    """The pattern model's label distributions (softmax of its rank scores under its own template) on each set."""
    import torch

    from bench.harness import evaluation
    from bench.harness.cell import FormattedTask
    from bench.harness.models import load_model

    config = json.loads((Path(folder) / "record.json").read_text())["config"]
    method = PET()  # its own instance: loading sets label ids that the final cell's training must not see
    method.name = "pet"
    hp = resolve_hparams(method, config["hp"])
    own = task.with_template(hp["template"])
    model, tokenizer, _ = load_model(config["model"])
    ctx = CellContext(task=own, model_kind="causal_lm", tokenizer=tokenizer, seed=config["seed"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = method.load_delta(model, hp, ctx, Path(folder) / "delta").to(device).eval()
    prompted = FormattedTask(own, method, hp, ctx)
    out = [
        evaluation.rank_scores(model, tokenizer, prompted, examples, hp["eval_batch_size"], hp["max_len"]).softmax(
            dim=-1
        )
        for examples in example_sets
    ]
    del model
    gc.collect()
    return out


METHOD = PET()
