"""Knowledge distillation (sequence-level, Kim & Rush 2016): a student trained on a fine-tuned teacher cell's outputs.

The teacher is another cell: hp `teacher` is its directory (e.g. results/g/sst2/smollm2-135m/full_ft/n200/s0).
In a grid, the entry `distill: {teacher_model: M, teacher_method: LABEL}` names the cell of the same grid,
task, train size and seed with model M and method label LABEL (teacher_model defaults to the student's
model); bench/grid/plan.py fills in `teacher` and the Snakefile makes the teacher's record an input, so the
teacher runs first. The teacher's record.json gives its model, method and resolved hyperparameters (it
must be of the same task, status ok); its `delta/` the weights, loaded with the teacher method's own
`load_delta` onto a fresh base, and its own `format_prompt` and virtual tokens apply.

Before training (the `prepare_train_examples` hook) the teacher labels the student's training inputs,
batched, as the harness evaluates: classification -> the teacher's predicted label (rank scoring of the
verbalizer words with a causal LM, argmax of the head with an encoder); generation -> the teacher's greedy
output as the one reference. The gold labels are not used. The teacher is then freed, and the student
trains on the teacher's labels with every weight trainable, as in full_ft (same `lr` and defaults).

Hard labels, not soft: the harness's one training loop minimises cross-entropy on the target tokens (or the
head's label), so the teacher's output enters as the target -- sequence-level KD, which Kim & Rush found as
good as or better than word-level KD for sequence models. Word-level (soft-label) KD, the KL divergence to
the teacher's per-token distribution (Hinton et al. 2015), would need a loss hook in bench/harness/train.py and is
left out; greedy decoding stands in for Kim & Rush's beam search. A teacher whose method scores with its
own `evaluate` hook (prompt_ensemble's vote) is refused: its predictions are not the harness's.

Cost: the record's cost is the student's. Labelling runs before the student's model loads and the teacher
is freed before it does, so it is not in train_s, and on CUDA the peak-memory counter restarts after it; on
CPU the process's peak RSS is the larger of the teacher's inference and the student's training. The
teacher's record is checked before any model loads.
"""

from __future__ import annotations

import dataclasses
import gc
import json
from pathlib import Path

from bench.api.errors import BenchError
from bench.harness.method import CellContext, Method, get_method, resolve_hparams
from methods.full_ft import FullFineTuning


def teacher_config(teacher: str, task) -> dict:
    """The teacher cell's recorded config (model, method, resolved hp, ...), checked; BenchError otherwise."""
    folder = Path(teacher)
    record_file = folder / "record.json"
    if not record_file.is_file():
        raise BenchError(
            f"distill teacher {folder} has no record.json: run the teacher cell first (snakemake "
            f"{record_file} --config grid=GRID, or python -m bench run-cell ... --out {folder}) or "
            "add it to the grid (distill: {teacher_model: M, teacher_method: LABEL})"
        )
    try:
        record = json.loads(record_file.read_text())
        config = record["config"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BenchError(
            f"distill teacher record {record_file} is unreadable ({type(error).__name__}): rerun the teacher cell"
        ) from None
    if config.get("task") != task.name:
        raise BenchError(
            f"distill teacher {folder} is a cell of task {config.get('task')!r}, not {task.name}: "
            f"choose a teacher cell of task {task.name}"
        )
    if record.get("status") != "ok":
        raise BenchError(
            f"distill teacher {folder} has status {record.get('status')!r}, not ok: rerun it with "
            "other hyperparameters or choose another teacher"
        )
    if not (folder / "delta").is_dir():
        raise BenchError(f"distill teacher {folder} has no delta/ folder: rerun the teacher cell")
    return config


def teacher_outputs(teacher: str, task, examples: list) -> list:
    """The teacher's predicted label indices (classification) or greedy output texts (generation)."""
    import torch

    from bench.harness.cell import FormattedTask
    from bench.harness.kinds import get_kind
    from bench.harness.models import get_model_spec, load_model
    from bench.harness.tasks import get_task, train_examples

    config = teacher_config(teacher, task)
    method = get_method(config["method"])
    if type(method).evaluate is not Method.evaluate:
        raise BenchError(
            f"distill teacher {teacher} uses method {method.name}, which scores with its own "
            "evaluate hook: its predictions are not rank scores; choose a teacher of another method"
        )
    hp = resolve_hparams(method, config["hp"])
    task = get_task(task.name).with_template(hp["template"])  # the teacher's own prompt, not the student's
    spec = get_model_spec(config["model"])
    model, tokenizer, _ = load_model(config["model"], num_labels=len(task.verbalizer) or None)
    # the teacher's own training examples: a method may read them (prompt_design's demonstrations)
    own = (
        train_examples(task, config["train_size"], config["seed"], config.get("data_root"), config.get("dev_limit"))
        if task.train_split
        else []
    )
    ctx = CellContext(task=task, model_kind=spec.kind, tokenizer=tokenizer, train_examples=own, seed=config["seed"])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = method.load_delta(model, hp, ctx, Path(teacher) / "delta").to(device).eval()
    prompted = FormattedTask(task, method, hp, ctx)
    kind, extra = get_kind(spec.kind), method.extra_positions(hp)
    if task.kind == "generation":  # greedy outputs
        out = kind.generate(
            model,
            tokenizer,
            [prompted.prompt(ex) for ex in examples],
            task.max_new_tokens,
            {**hp, "num_beams": 1},
            extra,
            None,
        )
    else:  # the harness's rank scores (encoders: the head's)
        out = kind.label_scores(model, tokenizer, prompted, examples, hp, extra, None).argmax(dim=-1).tolist()
    del model
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


class Distill(FullFineTuning):
    description = __doc__
    defaults = {**FullFineTuning.defaults, "teacher": ""}

    def check_hparams(self, hp, task, model_kind):
        if not hp["teacher"].strip():
            raise BenchError(
                f"{self.name or 'distill'} needs hp teacher=<the teacher cell's directory> (in a grid: "
                "teacher_model and teacher_method in the method entry)"
            )

    def prepare_train_examples(self, examples, hp, ctx):
        outputs = teacher_outputs(hp["teacher"], ctx.task, examples)
        if ctx.task.kind == "generation":
            return [dataclasses.replace(ex, references=(text,)) for ex, text in zip(examples, outputs)]
        return [dataclasses.replace(ex, label=label) for ex, label in zip(examples, outputs)]


METHOD = Distill()
