"""Helpers shared by method files (not a method: the leading underscore keeps it out of the registry)."""

from __future__ import annotations

from bench.api.errors import BenchError

# Classification heads of AutoModelForSequenceClassification models: the names peft's SEQ_CLS task
# type puts into modules_to_save, so own-code methods train the same head peft-backed ones do.
HEAD_NAMES = ("classifier", "score")


def model_label(model) -> str:
    """A short name for messages: the folder the model was loaded from, else its class."""
    path = str(getattr(model.config, "name_or_path", "") or "").rstrip("/")
    return path.rsplit("/", 1)[-1] or type(model).__name__


def model_architecture(model):
    """The model family's facts (bench.harness.models.Architecture) that planning checked the cell against."""
    from bench.harness.models import architecture

    return architecture(model.config.model_type)


def peft_task_type(ctx) -> str:
    from bench.harness.kinds import get_kind

    return get_kind(ctx.model_kind).peft_task_type


def freeze(model) -> None:
    for parameter in model.parameters():
        parameter.requires_grad_(False)


def train_head(model, ctx) -> None:
    """Encoders: unfreeze the classification head (the top-level `classifier`/`score` module)."""
    if ctx.model_kind != "encoder":
        return
    heads = [module for name, module in model.named_children() if name in HEAD_NAMES]
    if not heads:
        raise BenchError(
            f"encoder {model_label(model)} has no classification head named "
            f"{' or '.join(HEAD_NAMES)}: load it with AutoModelForSequenceClassification"
        )
    for head in heads:
        for parameter in head.parameters():
            parameter.requires_grad_(True)


def block_stacks(model) -> list:
    """(qualified name, ModuleList, Architecture of its blocks) of every stack of transformer blocks: the one stack
    of a decoder-only model or encoder, an encoder-decoder's encoder then decoder (config/models.yaml `stacks`)."""
    arch = model_architecture(model)
    if not arch.encoder_decoder:
        return [(*transformer_blocks(model), arch)]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [(path, base.get_submodule(path), arch.stack(index)) for index, path in enumerate(arch.stacks)]


def transformer_blocks(model):
    """(qualified name, ModuleList) of the model's stack of transformer blocks, bottom first (one stack)."""
    layers = getattr(model.config, "num_hidden_layers", None)
    found = [
        (name, module)
        for name, module in model.named_modules()
        if type(module).__name__ == "ModuleList" and len(module) == layers
    ]
    if len(found) != 1:
        raise BenchError(
            f"cannot find the {layers} transformer blocks of {model_label(model)} "
            f"({type(model).__name__}): found {len(found)} candidate module lists"
        )
    return found[0]
