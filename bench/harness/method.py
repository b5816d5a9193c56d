"""The method interface and its registry.

A method is one file `methods/<name>.py` that defines `METHOD = <a Method subclass>()`. The training
loop and evaluation only ever call the hooks below, so adding a method never touches the harness.
The registry imports a method module only when it is asked for, so planning a grid stays cheap.
"""

from __future__ import annotations

import ast
import functools
import importlib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.api.errors import BenchError

METHODS_DIR = Path(__file__).resolve().parents[2] / "methods"

# Training hyperparameters every method accepts; a method's `defaults` may override any of them
# (its paper's learning rate, say) and add its own.
TRAIN_DEFAULTS: dict[str, Any] = {
    "lr": 1e-4,
    "steps": 20,
    "batch_size": 8,
    "optimizer": "adamw",  # adamw | adafactor
    "weight_decay": 0.0,
    "warmup_steps": 0,
    "schedule": "constant",  # constant | linear (decay to 0 at the last step)
    "grad_clip": 1.0,
    "max_len": 128,  # tokens of prompt + target (seq2seq: of each); prompts are cut from the left
    "group_by_length": True,  # training batches of similar length (bench/harness/batches.py: training_batches)
    "precision": "fp32",  # fp32 | bf16 (autocast of training and classification scoring; bench/harness/train.py)
    "eval_batch_size": 16,
    "num_beams": 1,
    # one of the task's `templates` in config/tasks.yaml (its template + verbalizer); "" = the task's own
    "template": "",
    "eval_every": 0,  # > 0: score a fixed eval subset every K steps during training (bench/harness/curves.py)
    "curve_limit": 64,  # examples of that subset
    "retention": False,  # measure what training did to general ability (bench/harness/retention.py)
    "retention_task": "",  # the other task scored zero-shot for retention ("" = held-out text only)
}
PRECISIONS = ("fp32", "bf16")
# The training hyperparameters' valid ranges: (lowest, whether the lowest itself is allowed, what to use instead).
# (eval_every and curve_limit: bench/harness/curves.py.) Checked when hyperparameters are resolved, so a grid, the
# CLI and a test all get one line before a model loads.
RANGES: dict[str, tuple[float, bool, str]] = {
    "lr": (0, False, "a positive learning rate, e.g. lr=1e-4"),
    "steps": (0, True, "steps=0 (no training) or a positive number of steps"),
    "batch_size": (1, True, "a batch size of at least 1"),
    "eval_batch_size": (1, True, "an eval batch size of at least 1"),
    "weight_decay": (0, True, "weight_decay=0 or a positive value"),
    "warmup_steps": (0, True, "warmup_steps=0 or a positive number of steps"),
    "grad_clip": (0, True, "grad_clip=0 (no clipping) or a positive norm"),
    "max_len": (1, True, "a positive number of tokens, e.g. max_len=128"),
    "num_beams": (1, True, "num_beams=1 (greedy) or more"),
}


def check_precision(hp: dict) -> None:
    if hp["precision"] not in PRECISIONS:
        raise BenchError(f"precision '{hp['precision']}' unknown: use {' or '.join(PRECISIONS)}")


@dataclass
class CellContext:
    """What a method may look at when it adapts a model (besides the model itself)."""

    task: Any  # bench.harness.tasks.Task
    model_kind: str  # "causal_lm" | "encoder" | "seq2seq"
    tokenizer: Any
    train_examples: list = field(default_factory=list)
    seed: int = 0


class Method:
    """Base class: subclasses set `description`/`defaults` and implement `apply`."""

    name = ""
    description = ""
    defaults: dict[str, Any] = {}
    tunes_base = False  # True where base weights train (then the frozen-base check does not apply)
    model_kinds = ("causal_lm", "encoder", "seq2seq")

    def apply(self, model, hp: dict, ctx: CellContext):
        """Return the model to train, with exactly the method's parameters requiring grad."""
        raise NotImplementedError

    def delta_parameters(self, model) -> int:
        """Parameters the saved delta holds (may differ from those trained, e.g. prefix MLP)."""
        return trainable_parameters(model)

    def extra_positions(self, hp: dict) -> int:
        """Virtual tokens the method prepends to every sequence: a causal LM's logits are that much longer; on an
        encoder-decoder model they go before the encoder's input and shift no decoder position (FLOPs count them)."""
        return 0

    def target_loss(self, logits, targets):
        """A causal LM's training loss from its logits at the target positions (positions × vocabulary, one row
        per position of bench.harness.train.target_positions; an encoder-decoder model's: one row per decoder label) and
        the target ids there: the mean token cross-entropy (transformers' ForCausalLMLoss: fp32 logits, mean over
        target tokens)."""
        import torch.nn.functional as F

        return F.cross_entropy(logits.float(), targets)

    def training_loss(self, logits, targets, example_index):
        """The training loss where it depends on which training example each target row belongs to:
        `example_index` (one per batch row, into `ctx.train_examples`; a batch row's target rows are
        consecutive, in batch order) -- e.g. per-example soft labels (methods/pet.py). Default: `target_loss`."""
        return self.target_loss(logits, targets)

    def check_hparams(self, hp: dict, task, model_kind: str) -> None:
        """Raise BenchError, one line naming the valid choices, for hyperparameters (or a task) the method
        cannot run. Called when a cell is planned, before any model loads. Default: accept everything."""

    def check_architecture(self, hp: dict, arch) -> None:
        """Raise BenchError, one line naming what to use instead, where the method cannot run on this model family
        (`arch`: bench.harness.models.Architecture, read from config/models.yaml, so no weights load). Called when a
        cell is planned, after check_hparams. Default: every family."""

    def format_prompt(self, prompt: str, hp: dict, ctx: CellContext) -> str:
        """The text a causal LM sees in place of one example's task prompt, in training and evaluation
        (e.g. in-context demonstrations before it). Applied wherever `task.prompt(ex)` becomes token ids;
        encoders read the text fields, not the prompt, so it does not reach them. Default: unchanged."""
        return prompt

    def prepare_train_examples(self, examples: list, hp: dict, ctx: CellContext) -> list:
        """The examples the model trains on, made once from the cell's training examples (e.g. relabelled by
        a teacher model, methods/distill.py); they also become `ctx.train_examples`. Called only when the cell
        trains (steps > 0), before the cell's model loads (so `ctx.tokenizer` is still None: a bad input fails
        before any model loads, and what the hook loads is freed before the cell's model comes), and so
        before `apply` and the training batches; its time is not in the cell's train_s. Default: unchanged."""
        return examples

    def evaluate(self, model, tokenizer, task, examples: list, hp: dict, timer=None) -> list[dict] | None:
        """Per-example outputs of one eval set computed by the method itself (e.g. an ensemble's vote), as rows of
        bench.harness.evaluation.classification_outputs / generation_outputs plus any keys `score_outputs` reads, or
        None to use the harness's rank scoring / encoder logits / generation. `task.prompt` already applies
        `format_prompt`; `timer` (bench.harness.evaluation.Timer) collects model time and tokens."""
        return None

    def score_outputs(self, rows: list[dict], names, scorer: str | None = None) -> dict:
        """The metrics of per-example outputs: the record's metrics, and the report's re-scoring of resampled
        examples. Default: bench.harness.evaluation.score_outputs (the task's metrics `names`; generation as the eval
        set's official `scorer` computes them)."""
        from bench.harness.evaluation import score_outputs

        return score_outputs(rows, names, scorer)

    def analyse(self, model, hp: dict, ctx: CellContext) -> dict:
        """Facts about the trained delta that the record keeps under `analysis` (e.g. a soft prompt's nearest
        vocabulary tokens, for the report's interpretability table). Called after training, on cells that
        finished. Default: none."""
        return {}

    def save_delta(self, model, path: Path) -> None:
        from safetensors.torch import save_file

        path.mkdir(parents=True, exist_ok=True)
        tensors = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
        save_file(tensors, str(path / "delta.safetensors"))

    def load_delta(self, base, hp: dict, ctx: CellContext, path: Path):
        """Rebuild the adapted model from a fresh base and a saved delta."""
        from safetensors.torch import load_file

        model = self.apply(base, hp, ctx)
        delta = load_file(str(path / "delta.safetensors"))
        missing, unexpected = model.load_state_dict(delta, strict=False)
        absent = set(delta) - {n for n, _ in model.named_parameters()}
        if unexpected or absent:
            raise BenchError(f"delta at {path} does not fit method {self.name}: unexpected {sorted(absent)[:3]}")
        return model

    def make_optimizer(self, params, hp: dict):
        import torch

        if hp["optimizer"] == "adafactor":
            from transformers.optimization import Adafactor

            return Adafactor(
                params,
                lr=hp["lr"],
                scale_parameter=False,
                relative_step=False,
                warmup_init=False,
                weight_decay=hp["weight_decay"],
            )
        if hp["optimizer"] == "adamw":
            return torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
        raise BenchError(f"optimizer '{hp['optimizer']}' unknown: use adamw or adafactor")


class PeftMethod(Method):
    """A method whose adapted model is a `peft.PeftModel`: the delta is what peft's `save_pretrained`
    writes (less its generated model card) and loads with `peft.PeftModel.from_pretrained`."""

    def save_delta(self, model, path: Path) -> None:
        import torch

        # peft evaluates prompt encoders and prefix MLPs at save time: without grad, as evaluation runs
        # them (an LSTM's inference kernel differs from its training one by ~1e-5), so the saved delta
        # is exactly the one the cell's metrics were computed with
        with torch.no_grad():
            model.save_pretrained(str(path))
        (path / "README.md").unlink(missing_ok=True)

    def load_delta(self, base, hp: dict, ctx: CellContext, path: Path):
        from peft import PeftModel

        return peft_generation_compat(PeftModel.from_pretrained(base, str(path)))


def peft_generation_compat(model):
    """Make `model.generate` of a peft prompt-learning model (prefix, prompt, P-tuning) correct under
    transformers >= 5.24, and return the model.

    transformers 5.24 hands `generate`'s KV cache to the model as `cache` (`past_key_values` is deprecated),
    while peft 0.21.2, the newest release, reads and injects prompt-learning caches under the old name only:
    a prefix was silently dropped when generating, and a soft prompt re-inserted at every decoding step.
    Here peft's own `prepare_inputs_for_generation` sees the cache under the name it reads, and the model
    gets it back under the name it expects. Where transformers still says `past_key_values` nothing is
    renamed. Other models are returned unchanged. Encoder-decoder prefix tuning needs it too: without it the
    decoder's prefix was dropped after the first step (on tiny-t5 the cached greedy scores differed from
    recomputed ones by up to 14; tests/test_seq2seq.py checks them equal with it); a soft prompt on the encoder's
    input does not need it (the encoder runs once), and passes through it unchanged."""
    inner = getattr(model, "base_model_prepare_inputs_for_generation", None)
    if inner is None:
        return model
    outer = model.prepare_inputs_for_generation
    state = {"inside": False, "renamed": False}

    def base_inputs(*args, **kwargs):  # peft copies this onto the base model after generating: stay transparent
        inputs = inner(*args, **kwargs)
        if state["inside"] and "cache" in inputs:
            inputs["past_key_values"] = inputs.pop("cache")
            state["renamed"] = True
        return inputs

    def prepare(*args, **kwargs):
        state.update(inside=True, renamed=False)
        try:
            inputs = outer(*args, **kwargs)
        finally:
            state["inside"] = False
        if state["renamed"] and "past_key_values" in inputs:
            inputs["cache"] = inputs.pop("past_key_values")
        return inputs

    model.base_model_prepare_inputs_for_generation = base_inputs
    model.prepare_inputs_for_generation = prepare
    return model


def trainable_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def total_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def method_names() -> list[str]:
    return sorted(p.stem for p in METHODS_DIR.glob("*.py") if not p.stem.startswith("_"))


def method_summary(name: str) -> str:
    """The module docstring's first line, read without importing (for `bench methods`)."""
    doc = ast.get_docstring(ast.parse((METHODS_DIR / f"{name}.py").read_text())) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


@functools.lru_cache(maxsize=None)
def method_files(name: str) -> list[Path]:
    """The method's file and every methods/ module it imports, found by reading the imports (no import):
    what decides a method's cells, so Snakemake reruns them when any of these files changes."""
    files, pending = [], [METHODS_DIR / f"{name}.py"]
    while pending:
        path = pending.pop()
        if path in files or not path.exists():
            continue
        files.append(path)
        for node in ast.walk(ast.parse(path.read_text())):
            modules = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            pending += [METHODS_DIR / f"{m.split('.', 1)[1]}.py" for m in modules if m.startswith("methods.")]
    return sorted(files)


def get_method(name: str) -> Method:
    if name not in method_names():
        raise BenchError(f"unknown method '{name}': choose one of {', '.join(method_names())} (files in methods/)")
    module = importlib.import_module(f"methods.{name}")
    method = getattr(module, "METHOD", None)
    if not isinstance(method, Method):
        raise BenchError(f"methods/{name}.py must define METHOD = <a bench.harness.method.Method subclass>()")
    method.name = name
    return method


def resolve_hparams(method: Method, overrides: dict[str, Any]) -> dict[str, Any]:
    """Training defaults < the method's (paper) defaults < the grid/CLI overrides, type-checked."""
    hp = {**TRAIN_DEFAULTS, **method.defaults}
    for key, value in overrides.items():
        if key not in hp:
            raise BenchError(
                f"hyperparameter '{key}' is not known to method {method.name}: valid are {', '.join(sorted(hp))}"
            )
        hp[key] = _coerce(key, value, hp[key])
    check_ranges(hp)
    return hp


def check_ranges(hp: dict[str, Any]) -> None:
    """One line naming the fix where a training hyperparameter lies outside its range (RANGES), or is not finite."""
    for key, (low, inclusive, fix) in RANGES.items():
        value = hp.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            bound = f">= {low}" if inclusive else f"> {low}"
            raise BenchError(f"hyperparameter {key}={value:g} must be {bound}: use {fix}")


def _coerce(key: str, value: Any, default: Any) -> Any:
    if default is None:
        return value
    text = str(value).strip().lower()
    try:
        if isinstance(default, bool):
            if text in ("true", "false", "1", "0", "yes", "no"):
                return text in ("true", "1", "yes")
            raise ValueError
        if isinstance(default, int):
            number = float(value)
            if number != int(number) or isinstance(value, bool):
                raise ValueError
            return int(number)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise BenchError(
            f"hyperparameter {key}={value!r} must be of type {type(default).__name__} (default {default!r})"
        ) from None
