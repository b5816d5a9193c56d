"""One frozen base, many trained deltas, one forward pass: `python -m bench.tools.serve CELL_DIR ...` (Lester et al.
2021: mixed-task batches; a deployed base model serves every task's delta at once).

Given cells of a grid (each a task's LoRA adapter or soft prompt, saved in DIR/delta/), it loads the base model
once, attaches every delta, and rank-scores the cells' eval examples in batches that mix the cells, each row under
its own delta: LoRA rows as peft's mixed-adapter batches (`adapter_names=`) run them — the base layers once for
the batch, each adapter's update B·A·x on its own rows — but on contiguous slices rather than index lists;
soft-prompt rows by prepending each row's own prompt embedding to its input embeddings (peft prompt tuning
prepends one prompt to a whole batch, so the mixed batch is built here, as peft's PeftModel builds a single-prompt
one: one `cat` when the prompts are of one length). As `bench.harness.evaluation.rank_scores` does for one model, the
rows of all cells are sorted by length before they are cut into batches (a batch pads little), and the LM head runs
only at the scored positions. It reads the deltas and the cells' outputs and writes nothing. Each example's label
scores must equal those its own cell computed alone (DIR/outputs.jsonl.gz): the command prints the largest
difference and fails when a prediction differs or a score differs by more than TOLERANCE (float sums in other
batch shapes differ by ~1e-6; the outputs keep 5 decimals).

The deltas of one mix must be of one kind (all LoRA or all soft prompts) on one base model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.api.errors import BenchError

TOLERANCE = 1e-4  # nats; the cells' outputs keep 5 decimals
BATCH = 16


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
            raise BenchError(f"{d} has no record.json and delta/: name cell folders of a grid that was run here "
                             "(deltas are not committed; rerun the grid to make them)")
        record = json.loads((path / "record.json").read_text())
        config = record["config"]
        cells.append(Cell(path, record, f"{config['task']}-{config['method']}-s{config['seed']}"))
    kinds = {kind(get_method(c.method)) for c in cells}
    models = {c.record["config"]["model"] for c in cells}
    if len(kinds) != 1 or len(models) != 1 or None in kinds:
        raise BenchError(f"cells mix delta kinds {sorted(map(str, kinds))} or models {sorted(models)}: give LoRA "
                         "cells or prompt-tuning cells of one model")
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

    def __init__(self, base, cells: list[Cell]):
        from peft import PeftModel
        from peft.utils import load_peft_weights

        from bench.harness.method import get_method

        self.cells, self.kind = cells, kind(get_method(cells[0].method))
        if self.kind == "lora":
            self.model = PeftModel.from_pretrained(base, str(cells[0].dir / "delta"), adapter_name=cells[0].name)
            for c in cells[1:]:
                self.model.load_adapter(str(c.dir / "delta"), adapter_name=c.name)
            self.prompts = []
        else:
            self.model = base
            self.prompts = [load_peft_weights(str(c.dir / "delta"))["prompt_embeddings"] for c in cells]
        self.model.eval()

    @torch.no_grad()
    def logprobs(self, rows: list[tuple], pad_id: int, wanted: list[tuple[int, int]]) -> torch.Tensor:
        """Log-probs (len(wanted), vocabulary) at `wanted` = [(row in `rows`, position in the row's own tokens),
        ...], in the order (row, position) ascending. Rows are right-padded; LoRA rows as `_lora_forward` runs
        them; a soft-prompt row's tokens follow its own prompt (one `cat` for the whole batch when the prompts are
        of one length, as peft builds a one-prompt batch).
        The LM head runs only at the wanted positions (a boolean `logits_to_keep`), not at every position."""
        from bench.harness.tokens import pad

        device = next(self.model.parameters()).device
        ids, mask = pad([r[1] for r in rows], pad_id)
        ids, mask = ids.to(device), mask.to(device)
        if self.kind == "lora":
            inputs, offsets = {"input_ids": ids}, [0] * len(rows)
        else:
            inputs, mask, offsets = self._prompted(rows, ids, mask)
        keep = torch.zeros(mask.shape, dtype=torch.bool, device=device)
        keep[[b for b, _ in wanted], [offsets[b] + p for b, p in wanted]] = True
        if self.kind == "lora":
            logits = self._lora_forward(rows, inputs, mask, keep)
        else:
            logits = self.model(**inputs, attention_mask=mask, logits_to_keep=keep).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu()

    def _lora_forward(self, rows, inputs, mask, keep):
        """Logits of LoRA rows, each under its cell's adapter: the base layers once for the whole batch (adapters
        disabled) and, after each LoRA layer, each run of consecutive rows of one cell gets its adapter's update
        B·A·x on its slice of the batch (a view: no copies), as peft's `adapter_names=` batches do with index
        lists. Adapters of other variants (DoRA, ...) go through peft's own `adapter_names=` forward."""
        from peft.tuners.lora import LoraLayer

        runs: list[list] = []  # [adapter, first row, last row + 1]
        for b, row in enumerate(rows):
            name = self.cells[row[0]].name
            if runs and runs[-1][0] == name:
                runs[-1][2] = b + 1
            else:
                runs.append([name, b, b + 1])
        layers = [m for m in self.model.modules() if isinstance(m, LoraLayer)]
        if any(layer.lora_variant for layer in layers):
            return self.model(**inputs, attention_mask=mask, logits_to_keep=keep,
                              adapter_names=[self.cells[r[0]].name for r in rows]).logits

        def add_updates(layer, args, output):
            x = args[0]
            for name, start, end in runs:
                if name in layer.lora_A:
                    update = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](x[start:end])))
                    output[start:end] += update * layer.scaling[name]
            return output

        hooks = [layer.register_forward_hook(add_updates) for layer in layers]
        try:
            with self.model.disable_adapter():
                return self.model(**inputs, attention_mask=mask, logits_to_keep=keep).logits
        finally:
            for hook in hooks:
                hook.remove()

    def _prompted(self, rows, ids, mask):
        """(inputs_embeds, attention mask, each row's offset of its first token) of soft-prompt rows."""
        embed = self.model.get_input_embeddings()
        prompts = [self.prompts[r[0]].to(ids.device, embed.weight.dtype) for r in rows]
        lengths = [p.shape[0] for p in prompts]
        text = embed(ids)
        if len(set(lengths)) == 1:
            ones = torch.ones(len(rows), lengths[0], dtype=mask.dtype, device=mask.device)
            return {"inputs_embeds": torch.cat([torch.stack(prompts), text], dim=1)}, torch.cat([ones, mask], 1), \
                lengths
        width = max(n + len(r[1]) for n, r in zip(lengths, rows))
        inputs = torch.zeros(len(rows), width, text.shape[-1], dtype=text.dtype, device=text.device)
        full = torch.zeros(len(rows), width, dtype=mask.dtype, device=mask.device)
        for b, (prompt, row) in enumerate(zip(prompts, rows)):
            end = len(prompt) + len(row[1])
            inputs[b, :end] = torch.cat([prompt, text[b, :len(row[1])]])
            full[b, :end] = 1
        return {"inputs_embeds": inputs}, full, lengths


def length_batches(rows: list[tuple], batch_size: int) -> list[list[int]]:
    """Indices of `rows` per batch: all rows sorted by token length (then arrival), cut into batches of
    `batch_size`, each batch's rows then ordered by cell: a batch pads little and holds whichever cells' rows are
    of its lengths, each cell's rows side by side (one slice per adapter)."""
    order = sorted(range(len(rows)), key=lambda r: (len(rows[r][1]), r))
    return [sorted(order[start:start + batch_size], key=lambda r: (rows[r][0], r))
            for start in range(0, len(order), batch_size)]


def score_mixed(mixed: Mixed, pad_id: int, rows: list[tuple], batch_size: int = BATCH) -> dict:
    """{(owner, example): [label scores]}: every row scored in batches of similar length that mix the cells
    (`length_batches`), the LM head only at scored positions."""
    scores: dict[tuple, dict] = {}
    for batch in length_batches(rows, batch_size):
        chunk = [rows[r] for r in batch]
        wanted = sorted({(b, first + k) for b, (_, _, scored) in enumerate(chunk)
                         for _, _, first, ids in scored for k in range(len(ids))})
        column = {key: c for c, key in enumerate(wanted)}
        logprobs = mixed.logprobs(chunk, pad_id, wanted)
        for b, (owner, _, scored) in enumerate(chunk):
            for i, j, first, ids in scored:
                value = sum(logprobs[column[(b, first + k)], t].item() for k, t in enumerate(ids))
                scores.setdefault((owner, i), {})[j] = value
    return {key: [labels[j] for j in sorted(labels)] for key, labels in scores.items()}


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
    return {"cells": [c.name for c in s.cells], "kind": s.mixed.kind, "examples": len(scores), "rows": len(s.rows),
            "batch_size": batch_size, "seconds": round(seconds, 3), "max_abs_diff": worst, "pred_differs": wrong,
            "equal": not wrong and worst <= TOLERANCE}


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
