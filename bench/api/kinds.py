"""The model-kind interface: everything the harness does differently for a causal LM, an encoder or an
encoder-decoder, behind one class. Each kind is one module in bench/harness/kinds/, registered by name; no code
outside those modules branches on the kind (a new kind: a subclass, `register_kind`, and a `kind:` in
config/models.yaml that names it)."""

from __future__ import annotations


class ModelKind:
    """One model kind. `name` is what config/models.yaml's `kind:` says; `generates`: whether it can decode text
    (an encoder with a classification head cannot)."""

    name: str = ""
    generates: bool = True
    language_model: bool = False  # scores text by its LM loss (retention needs it)
    transformers_class: str = "AutoModel"  # the class a converted model is built and saved as
    peft_task_type: str = ""  # peft's TaskType for methods built on peft

    # ---- loading (bench/harness/models.py)
    def special_ids(self, tokenizer) -> dict:
        """The config's special token ids of a tiny model built in code, beyond pad."""
        return {}

    def load_pretrained(self, source, num_labels: int | None):
        """The model in folder `source`, fp32, as a cell trains it."""
        import torch
        import transformers

        return getattr(transformers, self.transformers_class).from_pretrained(source, dtype=torch.float32)

    # ---- training batches (bench/harness/batches.py: training_batches)
    def encode(self, tokenizer, task, examples, max_len: int) -> list:
        """Each example's unpadded training item (token ids), tokenised in one batched call."""
        raise NotImplementedError

    def length(self, item) -> int:
        """An item's length in tokens (batches group items of similar length); by default the item is a pair
        (prompt ids, target ids)."""
        return len(item[0]) + len(item[1])

    def collate(self, items: list, tokenizer) -> dict:
        """A padded training batch of items: the model's keyword arguments, labels included."""
        raise NotImplementedError

    # ---- one training step (bench/harness/train.py)
    def step_loss(self, model, method, hp: dict, batch: dict, index):
        """(loss, positions at which the LM head ran) of a batch; `index`: its rows' example indices (for
        Method.training_loss) or None."""
        raise NotImplementedError

    def batch_tokens(self, batch: dict) -> tuple[int, int]:
        """(non-padding tokens the model read, of them those an encoder of an encoder-decoder read)."""
        return int(batch["attention_mask"].sum()), 0

    # ---- evaluation (bench/harness/cell.py: evaluate_set)
    def label_scores(self, model, tokenizer, task, examples, hp: dict, extra_positions: int, timer):
        """Log-scores of each label word per example, shape (examples, labels); highest wins."""
        raise NotImplementedError

    def generate(
        self, model, tokenizer, prompts: list[str], max_new_tokens: int, hp: dict, extra_positions: int, timer
    ) -> list[str]:
        """The decoded continuation of each prompt (hp: eval_batch_size, max_len, num_beams)."""
        raise NotImplementedError
