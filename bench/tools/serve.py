"""One frozen base, many trained deltas, one forward pass: `python -m bench serve-mixed CELL_DIR ...` (Lester et
al. 2021: mixed-task batches; a deployed base model serves every task's delta at once).

Given cells of a grid (each a task's LoRA adapter or soft prompt, saved in DIR/delta/), it loads the base model
once, attaches every delta, and rank-scores the cells' eval examples in batches that mix the cells, each row under
its own delta: LoRA rows as peft's mixed-adapter batches (`adapter_names=`) run them — the base layers once for
the batch, each row's adapter update B·A·x added after each LoRA layer — but as two batched matmuls over the whole
batch (each row's A and scaled B gathered from the adapters' stacked weights) rather than per-adapter sub-batches;
soft-prompt rows after their own prompt (peft prompt tuning prepends one prompt to a whole batch): each task's
prompt of one length is run through the base once, and every row's text attends to its own task's cached prompt
states (the base is causal, so they are the states a row would compute for its prompt); prompts of different
lengths are prepended to each row's input embeddings. As `bench.harness.evaluation.rank_scores` does for one model, the
rows of all cells are sorted by length before they are cut into batches (a batch pads little), and the LM head runs
only at the scored positions. It reads the deltas and the cells' outputs and writes nothing. Each example's label
scores must equal those its own cell computed alone (DIR/outputs.jsonl.gz): the command prints the largest
difference and fails when a prediction differs or a score differs by more than TOLERANCE (float sums in other
batch shapes differ by ~1e-6; the outputs keep 5 decimals).

The deltas of one mix must be of one kind (all LoRA or all soft prompts) on one base model.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.api.errors import BenchError

TOLERANCE = 1e-4  # nats; the cells' outputs keep 5 decimals
BATCH = 16


@functools.cache
def cache_arg() -> str:
    """The name a causal LM's forward takes its KV cache under: `cache` from transformers 5.24 on
    (`past_key_values` is deprecated there), `past_key_values` before."""
    import inspect

    from transformers import LlamaForCausalLM

    return "cache" if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters else "past_key_values"


@dataclass
class Cell:
    """One trained cell whose delta joins the mix."""

    dir: Path
    record: dict
    name: str  # its adapter name in the mix: task, method, seed

    @property
    def hp(self) -> dict:
        return self.record["config"]["hp"]

    @property
    def method(self) -> str:
        return self.record["config"]["method"]


def read_cells(dirs: list[str]) -> list[Cell]:
    from bench.harness.method import get_method

    cells = []
    for d in dirs:
        path = Path(d)
        if not (path / "record.json").is_file() or not (path / "delta").is_dir():
            raise BenchError(
                f"{d} has no record.json and delta/: name cell folders of a grid that was run here "
                "(deltas are not committed; rerun the grid to make them)"
            )
        record = json.loads((path / "record.json").read_text())
        config = record["config"]
        cells.append(Cell(path, record, f"{config['task']}-{config['method']}-s{config['seed']}"))
    kinds = {kind(get_method(c.method)) for c in cells}
    models = {c.record["config"]["model"] for c in cells}
    if len(kinds) != 1 or len(models) != 1 or None in kinds:
        raise BenchError(
            f"cells mix delta kinds {sorted(map(str, kinds))} or models {sorted(models)}: give LoRA "
            "cells or prompt-tuning cells of one model"
        )
    if len({c.name for c in cells}) != len(cells):
        raise BenchError("two cells share task, method and seed: give each once")
    return cells


def kind(method) -> str | None:
    """'lora' or 'prompt' (what a mixed batch can carry), None for other methods."""
    from methods.lora import LoRA
    from methods.prompt_tuning import PromptTuning

    return "lora" if isinstance(method, LoRA) else "prompt" if isinstance(method, PromptTuning) else None


def requests(tokenizer, task, examples, max_len: int, owner: int) -> list[tuple]:
    """Rank scoring's rows, as bench.harness.evaluation.rank_scores builds them (one row per distinct input sequence):
    (owner cell, token ids of prompt + label word less its last token, [(example, label, first scored position,
    label word ids), ...])."""
    from bench.harness.tokens import continuation_ids, prompt_ids

    label_ids = [continuation_ids(tokenizer, word) for word in task.verbalizer]
    room = max_len - max(len(ids) for ids in label_ids)
    rows: dict[tuple, list] = {}
    for i, ex in enumerate(examples):
        prompt = prompt_ids(tokenizer, task.prompt(ex))[-room:]
        for j, ids in enumerate(label_ids):
            rows.setdefault(tuple(prompt + ids[:-1]), []).append((i, j, len(prompt) - 1, ids))
    return [(owner, list(sequence), scored) for sequence, scored in rows.items()]


class Mixed:
    """The base model with every cell's delta attached; `logprobs(rows, ...)` runs rows of different cells in one
    pass and returns log-probs only where they are scored."""

    def __init__(self, base, cells: list[Cell], adapted=None):
        """`adapted`: a model that already carries the one cell's delta (as `Method.load_delta` builds it), scored
        by this same path instead of attaching the delta to `base` (a separate model served the same way)."""
        from peft import PeftModel
        from peft.utils import load_peft_weights

        from bench.harness.method import get_method

        self.cells, self.kind = cells, kind(get_method(cells[0].method))
        self.names = [c.name for c in cells]  # the adapter name of each cell's delta in self.model
        if adapted is not None and len(cells) != 1:
            raise BenchError("an adapted model carries one cell's delta: give one cell with it")
        if self.kind == "lora" and adapted is not None:
            self.model, self.names = adapted, [adapted.active_adapter]
        elif self.kind == "lora":
            self.model = PeftModel.from_pretrained(base, str(cells[0].dir / "delta"), adapter_name=cells[0].name)
            for c in cells[1:]:
                self.model.load_adapter(str(c.dir / "delta"), adapter_name=c.name)
        else:
            self.model = base if adapted is None else adapted.get_base_model()
        self.prompts = (
            [] if self.kind == "lora" else [load_peft_weights(str(c.dir / "delta"))["prompt_embeddings"] for c in cells]
        )
        self.model.eval()
        self.states = self._prompt_states()
        self.stacks = self._lora_stacks() if self.kind == "lora" else None

    @torch.no_grad()
    def _prompt_states(self):
        """Each cell's soft prompt run through the base once: per layer (keys, values) of shape (cells, heads,
        prompt length, head size), which every row of that cell then attends to instead of recomputing its
        prompt (the base is causal: a prompt's states do not depend on the text after it). None for LoRA, or
        when the prompts differ in length (their rows then carry the prompt embeddings, `_prompted`)."""
        if not self.prompts or len({p.shape[0] for p in self.prompts}) != 1:
            return None
        embed = self.model.get_input_embeddings()
        outs = [
            self.model(inputs_embeds=p.to(embed.weight.device, embed.weight.dtype)[None], use_cache=True)
            for p in self.prompts
        ]
        per_cell = [getattr(out, cache_arg()) for out in outs]
        return [
            (torch.cat([c.layers[n].keys for c in per_cell]), torch.cat([c.layers[n].values for c in per_cell]))
            for n in range(len(per_cell[0].layers))
        ]

    @torch.no_grad()
    def logprobs(self, rows: list[tuple], pad_id: int, wanted: list[tuple[int, int]]) -> torch.Tensor:
        """Log-probs (len(wanted), vocabulary) at `wanted` = [(row in `rows`, position in the row's own tokens),
        ...], in the order (row, position) ascending. Rows are right-padded; LoRA rows as `_lora_forward` runs
        them; a soft-prompt row's tokens follow its own prompt: with prompts of one length the rows' text runs
        against each row's cached prompt states (`_cached_prompt_forward`), else each row carries its prompt's
        embeddings (`_prompted`). The LM head runs only at the wanted positions (a boolean `logits_to_keep`),
        not at every position."""
        from bench.harness.tokens import pad

        device = next(self.model.parameters()).device
        ids, mask = pad([r[1] for r in rows], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        if self.kind == "lora" or self.states is not None:
            inputs, offsets = {"input_ids": ids}, [0] * len(rows)
        else:
            inputs, mask, offsets = self._prompted(rows, ids, mask)
        keep = torch.zeros(mask.shape, dtype=torch.bool, device=device)
        keep[[b for b, _ in wanted], [offsets[b] + p for b, p in wanted]] = True
        if self.kind == "lora":
            logits = self._lora_forward(rows, inputs, mask, keep)
        elif self.states is not None:
            logits = self._cached_prompt_forward(rows, ids, mask, keep)
        else:
            logits = self.model(**inputs, attention_mask=mask, logits_to_keep=keep).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def _cached_prompt_forward(self, rows, ids, mask, keep):
        """Logits of soft-prompt rows whose prompts' states are cached: each row's own cell's states gathered into
        one batch cache (an index_select per layer), the base run on the rows' text only, at positions after
        the prompt (as peft's prompt tuning places them)."""
        from transformers import DynamicCache

        owners = torch.tensor([r[0] for r in rows], device=ids.device)
        cache = DynamicCache(
            [(k.index_select(0, owners), v.index_select(0, owners)) for k, v in self.states], config=self.model.config
        )
        prompt = torch.ones(len(rows), self.states[0][0].shape[2], dtype=mask.dtype, device=mask.device)
        return self.model(
            input_ids=ids, attention_mask=torch.cat([prompt, mask], 1), logits_to_keep=keep, **{cache_arg(): cache}
        ).logits

    def _lora_forward(self, rows, inputs, mask, keep):
        """Logits of LoRA rows, each under its cell's adapter: the base layers once for the whole batch (adapters
        disabled) and, after each LoRA layer, every row's own adapter update B·A·x·scaling as two batched matmuls
        over the whole batch (each row's A and scaled B gathered from the adapters' stacked weights,
        `_lora_stacks`), instead of peft's `adapter_names=` sub-batches (an index-list gather and scatter and
        three small layers per adapter per layer); a batch of one cell's rows multiplies by its weights directly.
        Adapters of other variants (DoRA, ...) go through peft's own `adapter_names=` forward."""
        stacks = self.stacks
        if stacks is None:
            return self.model(
                **inputs, attention_mask=mask, logits_to_keep=keep, adapter_names=[self.names[r[0]] for r in rows]
            ).logits
        owners = [r[0] for r in rows]
        index = torch.tensor(owners, device=inputs["input_ids"].device)
        one = owners[0] if len(set(owners)) == 1 else None

        def add_update(layer, args, output):
            down, up = stacks[layer]
            x = args[0]
            if one is not None:
                return output.add_(x @ down[one].T @ up[one].T)
            low = torch.bmm(x, down.index_select(0, index).transpose(1, 2))
            return output.add_(torch.bmm(low, up.index_select(0, index).transpose(1, 2)))

        hooks = [layer.register_forward_hook(add_update) for layer in stacks]
        try:
            with self.model.disable_adapter():
                return self.model(**inputs, attention_mask=mask, logits_to_keep=keep).logits
        finally:
            for hook in hooks:
                hook.remove()

    def _lora_stacks(self) -> dict | None:
        """Per LoRA layer (A of every cell, shape (cells, rank, in); B·scaling of every cell, (cells, out, rank)),
        ranks padded with zeros to the largest, a cell that does not adapt the layer all zeros. None
        when an adapter is of another variant (DoRA, ...), has a bias or dropout left on, or adapts an embedding
        (not plain B·A·x)."""
        from peft.tuners.lora import LoraLayer

        stacks = {}
        for layer in (m for m in self.model.modules() if isinstance(m, LoraLayer)):
            if layer.lora_variant or any(
                not isinstance(d, torch.nn.Identity) and d.training for d in layer.lora_dropout.values()
            ):
                return None
            present = [n for n in self.names if n in layer.lora_A]
            if not present or any(layer.lora_B[n].bias is not None for n in present):  # embedding or biased LoRA
                return None
            rank = max(layer.lora_A[n].weight.shape[0] for n in present)
            weight = layer.get_base_layer().weight
            down = weight.new_zeros(len(self.names), rank, weight.shape[1])
            up = weight.new_zeros(len(self.names), weight.shape[0], rank)
            for c, name in enumerate(self.names):
                if name in layer.lora_A:
                    r = layer.lora_A[name].weight.shape[0]
                    down[c, :r] = layer.lora_A[name].weight.detach()
                    up[c, :, :r] = layer.lora_B[name].weight.detach() * layer.scaling[name]
            stacks[layer] = (down, up)
        return stacks

    def _prompted(self, rows, ids, mask):
        """(inputs_embeds, attention mask, each row's offset of its first token) of soft-prompt rows."""
        embed = self.model.get_input_embeddings()
        prompts = [self.prompts[r[0]].to(ids.device, embed.weight.dtype) for r in rows]
        lengths = [p.shape[0] for p in prompts]
        text = embed(ids)
        if len(set(lengths)) == 1:
            ones = torch.ones(len(rows), lengths[0], dtype=mask.dtype, device=mask.device)
            return (
                {"inputs_embeds": torch.cat([torch.stack(prompts), text], dim=1)},
                torch.cat([ones, mask], 1),
                lengths,
            )
        width = max(n + len(r[1]) for n, r in zip(lengths, rows))
        inputs = torch.zeros(len(rows), width, text.shape[-1], dtype=text.dtype, device=text.device)
        full = torch.zeros(len(rows), width, dtype=mask.dtype, device=mask.device)
        for b, (prompt, row) in enumerate(zip(prompts, rows)):
            end = len(prompt) + len(row[1])
            inputs[b, :end] = torch.cat([prompt, text[b, : len(row[1])]])
            full[b, :end] = 1
        return {"inputs_embeds": inputs}, full, lengths


def length_batches(rows: list[tuple], batch_size: int) -> list[list[int]]:
    """Indices of `rows` per batch: all rows sorted by token length (then arrival), cut into batches of
    `batch_size`, each batch's rows then ordered by cell: a batch pads little and holds whichever cells' rows are
    of its lengths, each cell's rows side by side (one slice per adapter)."""
    order = sorted(range(len(rows)), key=lambda r: (len(rows[r][1]), r))
    return [
        sorted(order[start : start + batch_size], key=lambda r: (rows[r][0], r))
        for start in range(0, len(order), batch_size)
    ]


def score_batch(mixed: Mixed, pad_id: int, chunk: list[tuple], scores: dict) -> dict:
    """Score one batch of rows (any cells') into `scores` = {(owner, example): {label: score}}; returns it."""
    wanted = sorted(
        {
            (b, first + k)
            for b, (_, _, scored) in enumerate(chunk)
            for _, _, first, ids in scored
            for k in range(len(ids))
        }
    )
    column = {key: c for c, key in enumerate(wanted)}
    logprobs = mixed.logprobs(chunk, pad_id, wanted)
    for b, (owner, _, scored) in enumerate(chunk):
        for i, j, first, ids in scored:
            scores.setdefault((owner, i), {})[j] = sum(
                logprobs[column[(b, first + k)], t].item() for k, t in enumerate(ids)
            )
    return scores


def label_scores(scores: dict) -> dict:
    """{(owner, example): [label scores]} from `score_batch`'s {(owner, example): {label: score}}."""
    return {key: [labels[j] for j in sorted(labels)] for key, labels in scores.items()}


def score_mixed(mixed: Mixed, pad_id: int, rows: list[tuple], batch_size: int = BATCH) -> dict:
    """{(owner, example): [label scores]}: every row scored in batches of similar length that mix the cells
    (`length_batches`), the LM head only at scored positions."""
    scores: dict[tuple, dict] = {}
    for batch in length_batches(rows, batch_size):
        score_batch(mixed, pad_id, [rows[r] for r in batch], scores)
    return label_scores(scores)


def interleave(per_cell: list[list[tuple]]) -> list[tuple]:
    """Rows of the cells alternated (a, b, a, b, ...), as requests for different tasks would arrive (the order
    `length_batches` sorts from)."""
    out, longest = [], max(len(rows) for rows in per_cell)
    for k in range(longest):
        out += [rows[k] for rows in per_cell if k < len(rows)]
    return out


def cell_examples(cell: Cell, limit: int | None = None):
    """The cell's task, in-domain eval examples (as its record's eval_limit chose them) and its own outputs."""
    from bench.harness.cell import read_outputs
    from bench.harness.tasks import eval_examples, get_task

    config = cell.record["config"]
    task = get_task(config["task"])
    examples = eval_examples(task, task.name, config.get("eval_limit"), config.get("data_root"))
    outputs = read_outputs(cell.dir, cell.record)
    if outputs is None:
        raise BenchError(f"{cell.dir} has no per-example outputs matching its record: rerun the cell")
    n = len(examples) if limit is None else min(limit, len(examples))
    return task, examples[:n], outputs[task.name][:n]


@dataclass
class Setup:
    """Everything a mixed run needs: the cells, the mixed model, its tokenizer, the interleaved rows and each
    (cell, example)'s own output row."""

    cells: list[Cell]
    mixed: Mixed
    tokenizer: object
    rows: list[tuple]
    own: dict
    tasks: list  # per cell: (task, examples)


def setup(dirs: list[str], limit: int | None = None) -> Setup:
    from bench.harness.models import load_model

    cells = read_cells(dirs)
    base, tokenizer, _ = load_model(cells[0].record["config"]["model"])
    mixed = Mixed(base, cells)
    per_cell, own, tasks = [], {}, []
    for owner, cell in enumerate(cells):
        task, examples, outputs = cell_examples(cell, limit)
        per_cell.append(requests(tokenizer, task, examples, cell.hp["max_len"], owner))
        own.update({(owner, i): row for i, row in enumerate(outputs)})
        tasks.append((task, examples))
    return Setup(cells, mixed, tokenizer, interleave(per_cell), own, tasks)


def compare(s: Setup, scores: dict) -> tuple[float, list[str]]:
    """(largest |score − the cell's own score|, examples whose prediction differs)."""
    worst, wrong = 0.0, []
    for key, values in scores.items():
        reference = s.own[key]
        worst = max(worst, max(abs(a - b) for a, b in zip(values, reference["logprobs"])))
        if max(range(len(values)), key=values.__getitem__) != reference["pred"]:
            wrong.append(f"{s.cells[key[0]].name} example {reference['id']}")
    return worst, wrong


def serve(dirs: list[str], limit: int | None = None, batch_size: int = BATCH) -> dict:
    """Score the cells' eval examples in mixed batches; compare with each cell's own outputs."""
    s = setup(dirs, limit)
    start = time.perf_counter()
    scores = score_mixed(s.mixed, s.tokenizer.pad_token_id, s.rows, batch_size)
    seconds = time.perf_counter() - start
    worst, wrong = compare(s, scores)
    return {
        "cells": [c.name for c in s.cells],
        "kind": s.mixed.kind,
        "examples": len(scores),
        "rows": len(s.rows),
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "max_abs_diff": worst,
        "pred_differs": wrong,
        "equal": not wrong and worst <= TOLERANCE,
    }


def held_bytes(*objects) -> int:
    """Bytes of the distinct tensor storages the given modules (parameters and buffers) and tensors hold."""
    seen, total = set(), 0
    for obj in objects:
        tensors = [*obj.parameters(), *obj.buffers()] if isinstance(obj, torch.nn.Module) else [obj]
        for t in tensors:
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.tools.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("cells", nargs="+", help="cell folders (record.json + delta/), e.g. results/curves/...")
    parser.add_argument("--limit", type=int, help="eval examples per cell (default: all the cell evaluated)")
    parser.add_argument("--batch-size", type=int, default=BATCH)
    args = parser.parse_args(argv)
    try:
        result = serve(args.cells, args.limit, args.batch_size)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0 if result["equal"] else 1


if __name__ == "__main__":
    sys.exit(main())
