"""Evaluation: rank scoring of label words, batched greedy/beam generation, and the metrics.

Classification with a causal LM asks the LM itself: each label word's log-probability after the
prompt, highest wins (Lester / PET style, no task head). All labels of all examples in a batch go
through one forward pass; when every label word is one token, the rows for one example are the same
sequence and collapse into one. Logits are computed only at the positions that are scored.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bench.batches import continuation_ids, encoder_inputs, pad, prompt_ids
from bench.errors import BenchError


ROUGE_TYPES = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}


@dataclass
class Timer:
    """Accumulates model wall time and tokens across calls."""

    seconds: float = 0.0
    tokens: int = 0


def _chunks(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def rank_scores(model, tokenizer, task, examples, batch_size: int, max_len: int,
                extra_positions: int = 0, timer: Timer | None = None, copies: int = 1) -> torch.Tensor:
    """Sum of label-token log-probs, shape (examples, labels).

    `copies` > 1: the model answers every input row with `copies` rows, copy-major (row c * rows + b is
    copy c of input row b; e.g. one row per prompt of a prompt ensemble); the scores then have shape
    (copies, examples, labels).
    """
    label_ids = [continuation_ids(tokenizer, word) for word in task.verbalizer]
    room = max_len - max(len(ids) for ids in label_ids)
    rows: dict[tuple, int] = {}  # distinct input sequence -> row
    requests = []  # (example, label, row, first scored position, target ids)
    for i, ex in enumerate(examples):
        prompt = prompt_ids(tokenizer, task.prompt(ex))[-room:]
        for j, ids in enumerate(label_ids):
            sequence = tuple(prompt + ids[:-1])
            row = rows.setdefault(sequence, len(rows))
            requests.append((i, j, row, len(prompt) - 1, ids))
    sequences = list(rows)
    scores = torch.zeros(copies, len(examples), len(label_ids))
    by_row: dict[int, list] = {}
    for request in requests:
        by_row.setdefault(request[2], []).append(request)
    by_length = sorted(range(len(sequences)), key=lambda r: len(sequences[r]))  # batches of similar length: less padding
    for batch_rows in tqdm(list(_chunks(by_length, batch_size)), desc="score", leave=False, mininterval=2):
        input_ids, attention_mask = pad([list(sequences[r]) for r in batch_rows], tokenizer.pad_token_id)
        wanted = sorted({p + k for r in batch_rows for (_, _, _, p, ids) in by_row[r] for k in range(len(ids))})
        start = time.perf_counter()
        logits = model(input_ids=input_ids.to(model.device), attention_mask=attention_mask.to(model.device),
                       logits_to_keep=torch.tensor(wanted, device=model.device) + extra_positions).logits.cpu()
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        if timer:
            timer.seconds += time.perf_counter() - start
            timer.tokens += copies * int(attention_mask.sum())
        column = {position: c for c, position in enumerate(wanted)}
        for c in range(copies):
            for b, r in enumerate(batch_rows):
                for i, j, _, first, ids in by_row[r]:
                    row = c * len(batch_rows) + b
                    scores[c, i, j] = sum(logprobs[row, column[first + k], t].item() for k, t in enumerate(ids))
    return scores[0] if copies == 1 else scores


@torch.no_grad()
def encoder_logits(model, tokenizer, task, examples, batch_size: int, max_len: int,
                   timer: Timer | None = None) -> torch.Tensor:
    out = []
    for chunk in tqdm(list(_chunks(examples, batch_size)), desc="classify", leave=False, mininterval=2):
        inputs = {k: v.to(model.device) for k, v in encoder_inputs(tokenizer, task, chunk, max_len).items()}
        start = time.perf_counter()
        out.append(model(**inputs).logits.float().cpu())
        if timer:
            timer.seconds += time.perf_counter() - start
            timer.tokens += int(inputs["attention_mask"].sum())
    return torch.cat(out)


def clean_generation(text: str) -> str:
    """First line of the continuation; leading whitespace is dropped before cutting."""
    return text.lstrip().split("\n", 1)[0].strip()


def _generation_batches(lengths: list[int], batch_size: int, equal_length: bool) -> list[list[int]]:
    """Indices of the prompts per batch, longest first: prompts of similar length together (less padding),
    or (equal_length) only prompts of one token length together."""
    if not equal_length:
        return list(_chunks(sorted(range(len(lengths)), key=lambda i: -lengths[i]), batch_size))
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(n, []).append(i)
    return [chunk for n in sorted(groups, reverse=True) for chunk in _chunks(groups[n], batch_size)]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int, max_len: int,
             num_beams: int = 1, timer: Timer | None = None, extra_positions: int = 0) -> list[str]:
    """Batched, left-padded, KV-cached decoding (greedy unless num_beams > 1).

    With virtual tokens (`extra_positions` > 0, e.g. peft prompt tuning) left padding would sit between
    the virtual tokens and the text and shift the text's positions, so a batch then holds only prompts
    of equal token length (no padding): results do not depend on the batch, at some cost in speed.
    """
    encoded = [prompt_ids(tokenizer, p)[-max_len:] for p in prompts]
    outputs: list[str] = [""] * len(prompts)
    batches = _generation_batches([len(ids) for ids in encoded], batch_size, extra_positions > 0)
    for chunk in tqdm(batches, desc="generate", leave=False, mininterval=2):
        input_ids, attention_mask = pad([encoded[i] for i in chunk], tokenizer.pad_token_id, side="left")
        start = time.perf_counter()
        input_ids, attention_mask = input_ids.to(model.device), attention_mask.to(model.device)
        generated = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False,
                                   num_beams=num_beams, max_new_tokens=max_new_tokens, use_cache=True,
                                   pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new_tokens = generated[:, input_ids.shape[1]:]
        if timer:
            timer.seconds += time.perf_counter() - start
            timer.tokens += int(attention_mask.sum()) + int((new_tokens != tokenizer.pad_token_id).sum())
        texts = tokenizer.batch_decode(new_tokens.cpu(), skip_special_tokens=True)
        for i, text in zip(chunk, texts):
            outputs[i] = clean_generation(text)
    return outputs


def example_id(ex) -> str:
    """A stable id of an eval example: sha256 (16 hex digits) of its fields, label and references, so that two
    cells' outputs on one example pair up whatever order or subset they were evaluated in."""
    content = json.dumps([ex.fields, ex.label, list(ex.references)], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


def classification_outputs(scores, examples) -> list[dict]:
    """Per-example outputs of a classifier from its scores (examples, labels): log-probabilities of each label
    (rank scoring: the label words' summed log-probs; encoders: log-softmax of the head's logits)."""
    return [{"id": example_id(ex), "gold": ex.label, "pred": int(row.argmax()), "logprobs": [round(float(v), 5)
                                                                                            for v in row]}
            for ex, row in zip(examples, scores)]


def generation_outputs(hypotheses, examples) -> list[dict]:
    return [{"id": example_id(ex), "gold": list(ex.references), "hyp": h} for ex, h in zip(examples, hypotheses)]


def score_outputs(rows: list[dict], names) -> dict[str, float]:
    """The metrics of per-example outputs (classification_outputs / generation_outputs rows). Records' metrics
    are computed by this from the rows the cell keeps, so re-scoring the kept rows gives the record's numbers."""
    if rows and "hyp" in rows[0]:
        return generation_metrics([r["hyp"] for r in rows], [r["gold"] for r in rows], names)
    return classification_metrics([r["pred"] for r in rows], [r["gold"] for r in rows], names)


def classification_metrics(predictions: list[int], labels: list[int], names) -> dict[str, float]:
    metrics = {"accuracy": 100.0 * sum(p == y for p, y in zip(predictions, labels)) / len(labels)}
    if "f1" in names:
        classes = sorted(set(labels) | set(predictions))
        f1s = []
        for c in classes if len(classes) > 2 else [1]:
            tp = sum(p == c and y == c for p, y in zip(predictions, labels))
            fp = sum(p == c and y != c for p, y in zip(predictions, labels))
            fn = sum(p != c and y == c for p, y in zip(predictions, labels))
            f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
        metrics["f1"] = 100.0 * sum(f1s) / len(f1s)  # binary: F1 of class 1; else macro-F1
    return metrics


def generation_metrics(hypotheses: list[str], references: list[list[str]], names) -> dict[str, float]:
    """The generation metrics named in `names` (nothing else is computed; each package is imported only
    when asked for). All are multi-reference (any number of references per example) and corpus level.

    bleu     sacrebleu corpus BLEU, 13a tokens, case-sensitive (×100)
    rouge_*  rouge-score F-measure (stemmed) against the best reference, averaged (×100)
    nist     NIST-5 of nltk on mteval-v13a tokens (sacrebleu's port of its tokenizer), lowercased as mteval
             does by default (raw)
    meteor   METEOR 1.5, the jar pycocoevalcap ships (`-l en -norm`, paraphrase table included), corpus
             level (×100)
    cider    coco-caption's CIDEr (CIDEr-D: clipped, length penalty, its own ×10) from pycocoevalcap (raw);
             its IDF comes from the references scored here, so it depends on which examples are scored

    Scales as the E2E tables print them (LoRA Table 3, Prefix-Tuning Table 2): BLEU 68.2, NIST 8.62,
    METEOR 46.2, ROUGE-L 71.0, CIDEr 2.47. METEOR and CIDEr see the text as e2e-metrics feeds them
    (coco-caption's COCOEvalCap): Stanford PTBTokenizer (the CoreNLP 3.4.1 jar pycocoevalcap ships),
    lowercased, punctuation removed. Both need Java; METEOR's JVM (about 11-13 s of CPU, mostly loading the
    paraphrase table) is ended before this returns.

    Known difference from e2e-metrics: its NIST (mteval-v13a) clips n-gram matches at their highest count
    in any reference and takes the average reference length for the length penalty; nltk scores each n-gram
    order against the one best reference and takes that reference's length. On 40 E2E test MRs (7.3
    references each) nltk reads 0.8-1.0 lower (7.04 vs 7.88 for a held-out human reference, 1.82 vs 2.80
    for a template system).
    """
    metrics = {}
    if "bleu" in names:
        import sacrebleu

        streams = max(len(r) for r in references)
        ref_streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(streams)]
        # lowercased, as the E2E challenge's official script (e2e-metrics) scores it
        metrics["bleu"] = sacrebleu.corpus_bleu(hypotheses, ref_streams, lowercase=True).score
    rouge = {name: ROUGE_TYPES[name] for name in names if name in ROUGE_TYPES}
    if rouge:
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(list(rouge.values()), use_stemmer=True)
        totals = dict.fromkeys(rouge, 0.0)
        for hyp, refs in zip(hypotheses, references):
            scores = [scorer.score(ref, hyp) for ref in refs]
            for name, rouge_type in rouge.items():
                totals[name] += max(s[rouge_type].fmeasure for s in scores)
        metrics.update({name: 100.0 * total / len(hypotheses) for name, total in totals.items()})
    if "nist" in names:
        metrics["nist"] = _nist(hypotheses, references)
    if "meteor" in names or "cider" in names:
        gts, res = _coco_tokenize(hypotheses, references)
        if "meteor" in names:
            metrics["meteor"] = 100.0 * _meteor(gts, res)
        if "cider" in names:
            from pycocoevalcap.cider.cider import Cider

            metrics["cider"] = float(Cider().compute_score(gts, res)[0])
    return metrics


def _nist(hypotheses: list[str], references: list[list[str]], order: int = 5) -> float:
    """NIST-`order` (mteval-v13a's default 5). nltk divides by zero for an n-gram order no hypothesis
    reaches; such an order adds 0 in mteval, so the order is capped at the longest hypothesis."""
    from nltk.translate.nist_score import corpus_nist
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    hyps = [tokenize(h.lower()).split() for h in hypotheses]
    refs = [[tokenize(r.lower()).split() for r in rs] for rs in references]
    order = min(order, max(map(len, hyps), default=0))
    return float(corpus_nist(refs, hyps, n=order)) if order else 0.0


JAVA_METRICS = ("meteor", "cider")  # the METEOR 1.5 jar; coco-caption's PTBTokenizer (CIDEr, METEOR)
JAVA_FIX = "install a JRE, e.g. apt-get install openjdk-17-jre-headless"


def check_metric_tools(names) -> None:
    """One line (BenchError), before any model loads, when a metric in `names` needs Java and there is none."""
    import shutil

    needing = [name for name in names if name in JAVA_METRICS]
    if needing and not shutil.which("java"):
        raise BenchError(f"metric(s) {', '.join(needing)} need Java (`java` on PATH), which is not installed: "
                         + JAVA_FIX)


def _java_missing(what: str) -> RuntimeError:
    return RuntimeError(f"{what} needs Java (`java` on PATH): {JAVA_FIX}")


def _coco_tokenize(hypotheses, references) -> tuple[dict, dict]:
    """coco-caption's PTBTokenizer over hypotheses and references in one JVM run: {i: [refs]}, {i: [hyp]}."""
    import shutil

    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not shutil.which("java"):
        raise _java_missing("METEOR/CIDEr tokenization (Stanford PTBTokenizer)")
    if not all(references):
        raise ValueError("METEOR and CIDEr need at least one reference per example")
    def caption(text):  # one line each: the tokenizer is line based
        return {"caption": " ".join(text.split())}

    captions = {("hyp", i): [caption(h)] for i, h in enumerate(hypotheses)}
    captions |= {("ref", i): [caption(r) for r in refs] for i, refs in enumerate(references)}
    tokens = PTBTokenizer().tokenize(captions)
    if any(len(tokens.get(key, ())) != len(value) for key, value in captions.items()):
        raise RuntimeError("PTBTokenizer returned a different number of lines than it was given")
    return ({i: tokens[("ref", i)] for i in range(len(references))},
            {i: tokens[("hyp", i)] for i in range(len(hypotheses))})


def _meteor(gts: dict, res: dict) -> float:
    """Corpus METEOR (0-1) of pycocoevalcap's wrapper, whose java process is always ended here: the package
    ends it only when the object is garbage collected, and keeps its lock if a score fails."""
    import shutil

    from pycocoevalcap.meteor.meteor import Meteor

    if not shutil.which("java"):
        raise _java_missing("METEOR")
    scorer = Meteor()
    try:
        return float(scorer.compute_score(gts, res)[0])
    finally:
        if scorer.lock.locked():
            scorer.lock.release()
        scorer.meteor_p.stdin.close()
        scorer.meteor_p.kill()
        scorer.meteor_p.wait()
