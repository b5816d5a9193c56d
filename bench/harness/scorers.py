"""Generation metrics, each computed the way the official scorer of its test set computes it.

A generation dataset names its scorer in config/tasks.yaml (`scorer:`); `generation_metrics` computes the
metrics a task asks for under that scorer. Scales are those the papers' tables print (BLEU 68.2, NIST 8.62,
METEOR 46.2, ROUGE-L 71.0, CIDEr 2.47); the scorers themselves print BLEU/METEOR/ROUGE-L as fractions.
e2e-metrics, webnlg-2017 and dart agree with the official scorers' printed output (tests/fixtures/scorers).

e2e-metrics  E2E NLG challenge's `measure_scores.py` (tuetschek/e2e-metrics), which LoRA Table 3 and
             Prefix-Tuning Table 2 report (Li & Liang's gpt2/run_generation.py calls it). Multi-reference,
             corpus level.
    bleu     mteval-v13a BLEU: sacrebleu corpus BLEU on 13a tokens (sacrebleu's port of mteval's tokenizer),
             lowercased as mteval scores by default, closest reference length (e2e-metrics' mteval skips the
             empty references it pads with), mteval's smoothing of empty n-gram orders (sacrebleu's "exp")
    nist     NIST-5 of the mteval-v13a-sig.pl e2e-metrics ships, own code (`mteval_nist`): information weights
             from the n-gram counts of all references of the scored set, each hypothesis n-gram clipped at its
             highest count in any one reference; brevity penalty (mteval's: 0.5 at 2/3 of the length) against
             the corpus's reference words divided by the mean number of non-empty references per segment
             (e2e-metrics' change to mteval, which pads MRs with fewer references with empty ones), i.e. the
             mean reference length times the number of segments
    meteor   METEOR 1.5, the jar pycocoevalcap ships (`-l en -norm`, paraphrase table), as coco-caption runs it
    rouge_l  coco-caption ROUGE-L (pycocoevalcap's Rouge): LCS with every reference, the highest precision and
             the highest recall over references, F with beta 1.2, averaged over examples
    cider    coco-caption CIDEr-D (pycocoevalcap); its IDF comes from the references scored here
             METEOR, ROUGE-L and CIDEr see the text as coco-caption's COCOEvalCap feeds them: Stanford
             PTBTokenizer (the CoreNLP jar pycocoevalcap ships), lowercased, punctuation removed. Java.
webnlg-2017  WebNLG 2017 challenge evaluation (webnlg-automatic-evaluation, as bundled in Yale-LILY/dart's
             evaluation/run_eval_on_webnlg.sh, which Li & Liang's run_generation.py calls for WebNLG): text is
             unidecoded, lowercased, split at every non-word character; the first 3 references only.
    bleu     multi-bleu.perl -lc (Moses) against 3 reference files: whitespace tokens, closest reference
             length (ties: the shorter), no smoothing. An example with fewer than 3 references has empty
             lines in the missing files, and an empty line is a reference of length 0 for the closest length
    meteor   METEOR 1.5 `-l en -norm -r 3` on the same normalised text (the jar of pycocoevalcap)
             (the challenge's TER, tercom 0.7.25, is not implemented)
             LoRA's own WebNLG and DART rows (Tables 13-14) come from another scorer (microsoft/LoRA
             examples/NLG/README.md): WebNLG/GenerationEval's eval.py, i.e. Moses multi-bleu-detok.perl with up
             to 6 references, on text LoRA's gpt2_decode.py lowercased and tokenised (so do its GPT-2 L AdapterL
             rows); its other rows equal Li & Liang's arXiv v1 Table 1 (these scripts, 3 references). Here every
             method is scored by these scripts.
dart         Yale-LILY/dart evaluation/run_eval_on_dart.sh (DART's own scorer; Li & Liang's code has no DART
             scoring call). Its reference files (dart_reference/all-delex-reference0-2.lex) hold the first 3
             non-empty references of each test entry split at every non-word character and lowercased (no
             unidecode): checked line by line against dart-v1.1.1-full-test.json, all 15,291 lines equal. The
             script scores the output file as given, but Li & Liang's released DART output (their
             data/dart/*_test_beam) is cased and untokenised, and scored as given against these lowercased,
             split references every capitalised word and every attached punctuation mark would miss; their
             hypotheses must have been normalised like the references, so they are here (an assumption).
    bleu     multi-bleu.perl without -lc against the 3 reference files (empty lines where fewer)
    meteor   METEOR 1.5 `-l en -norm -r 8` against the same 3 references (prepare_files.py pads them to 8 with
             empty lines, which never score)
rouge-score  XSum as Li & Liang score it: their seq2seq/finetune.py calls seq2seq/utils.py `calculate_rouge` (the
             HuggingFace seq2seq examples' of late 2020): Google's rouge-score, stemmed, F-measure of rouge1 /
             rouge2 / rougeL (not rougeLsum) against the one reference. They aggregate with rouge-score's
             BootstrapAggregator (the median of 1,000 resampled means, unseeded, per test batch, rounded to 4
             decimals, then averaged over batches); here the plain mean over examples, which that median
             estimates (it differs by its resampling noise and by the batch weighting; not checked here: no
             official ROUGE output was at hand to compare).
             With several references, the best reference's F-measure.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from bench.api.errors import BenchError
from bench.api.metrics import scorer_metrics

SCORERS = ("e2e-metrics", "webnlg-2017", "dart", "rouge-score")
METRICS = {scorer: scorer_metrics(scorer) for scorer in SCORERS}  # bench/api/metrics.py: each metric's scorers
ROUGE_TYPES = {"rouge_1": "rouge1", "rouge_2": "rouge2", "rouge_l": "rougeL"}
WEBNLG_REFERENCES = 3  # bleu_eval_3ref.sh / meteor_eval.sh -r 3
DART_REFERENCES = 3  # run_eval_on_dart.sh's reference files


def check_scorer(scorer: str, names, where: str) -> None:
    """One line (BenchError) when `scorer` is unknown or does not define one of the metrics in `names`."""
    if scorer not in METRICS:
        raise BenchError(f"{where}: unknown scorer '{scorer}': use one of {', '.join(SCORERS)} in config/tasks.yaml")
    missing = [name for name in names if name not in METRICS[scorer]]
    if missing:
        raise BenchError(
            f"{where}: scorer {scorer} does not define {', '.join(missing)}: use metrics from "
            f"{', '.join(METRICS[scorer])} or another scorer in config/tasks.yaml"
        )


def generation_metrics(
    hypotheses: list[str], references: list[list[str]], names, scorer: str = "e2e-metrics"
) -> dict[str, float]:
    """The metrics named in `names` as `scorer` computes them (see the module docstring); nothing else is
    computed, and each package is imported only when asked for. Any number of references per example."""
    check_scorer(scorer, names, "generation metrics")
    if scorer == "webnlg-2017":
        hyps = [_webnlg_hypothesis(h) for h in hypotheses]
        refs = [[_webnlg_reference(r) for r in rs[:WEBNLG_REFERENCES]] for rs in references]
        return _bleu_meteor(hyps, refs, names, lowercase=True, slots=WEBNLG_REFERENCES)
    if scorer == "dart":
        refs = [[_dart_text(r) for r in rs[:DART_REFERENCES]] for rs in references]
        return _bleu_meteor([_dart_text(h) for h in hypotheses], refs, names, lowercase=False, slots=DART_REFERENCES)
    if scorer == "rouge-score":
        return _rouge_score(hypotheses, references, names)
    metrics = {}
    if "bleu" in names:
        metrics["bleu"] = _sacrebleu(hypotheses, references, lowercase=True, tokenize="13a", smooth="exp")
    if "nist" in names:
        metrics["nist"] = mteval_nist(hypotheses, references)
    if {"meteor", "rouge_l", "cider"} & set(names):
        gts, res = _coco_tokenize(hypotheses, references)
        if "meteor" in names:
            metrics["meteor"] = 100.0 * _meteor(gts, res)
        if "rouge_l" in names:
            from pycocoevalcap.rouge.rouge import Rouge

            metrics["rouge_l"] = 100.0 * float(Rouge().compute_score(gts, res)[0])
        if "cider" in names:
            from pycocoevalcap.cider.cider import Cider

            metrics["cider"] = float(Cider().compute_score(gts, res)[0])
    return metrics


# --------------------------------------------------------------------------- BLEU
def _sacrebleu(hypotheses, references, lowercase: bool, tokenize: str, smooth: str) -> float:
    """Corpus BLEU over any number of references per example (a missing one is no reference at all)."""
    import sacrebleu

    streams = max(map(len, references), default=0)
    ref_streams = [[refs[k] if k < len(refs) else None for refs in references] for k in range(streams)]
    return sacrebleu.corpus_bleu(
        hypotheses, ref_streams, lowercase=lowercase, tokenize=tokenize, smooth_method=smooth, force=True
    ).score  # force: pre-tokenized text is expected


def multi_bleu(hypotheses: list[str], references: list[list[str]], lowercase: bool, slots: int) -> float:
    """multi-bleu.perl (Moses) with `slots` reference files: whitespace tokens, clipping at the highest count in
    any reference, closest reference length (ties: the shorter), no smoothing (any empty n-gram order: 0).
    A missing reference is an empty line of its file, which counts as a reference of length 0."""
    padded = [list(refs) + [""] * (slots - len(refs)) for refs in references]
    return _sacrebleu(hypotheses, padded, lowercase=lowercase, tokenize="none", smooth="none")


# --------------------------------------------------------------------------- NIST (mteval-v13a)
NIST_ORDER = 5
NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2  # mteval: penalty 0.5 at 2/3 of the reference length


def mteval_nist(hypotheses: list[str], references: list[list[str]], order: int = NIST_ORDER) -> float:
    """NIST-`order` as e2e-metrics' mteval-v13a-sig.pl computes it (order 5 is what it prints), on lowercased
    13a tokens."""
    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    tokenize = Tokenizer13a()
    hyps = [tokenize(h.lower()).split() for h in hypotheses]
    refs = [[tokenize(r.lower()).split() for r in rs] for rs in references]
    counts: Counter = Counter()  # n-grams of every reference, for the information weights
    for words in (w for rs in refs for w in rs):
        for n in range(1, order + 1):
            counts.update(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
    ref_words = sum(len(w) for rs in refs for w in rs)

    def info(ngram):
        return math.log2((counts[ngram[:-1]] if len(ngram) > 1 else ref_words) / counts[ngram])

    gained, hyp_ngrams = [0.0] * (order + 1), [0] * (order + 1)
    for words, rs in zip(hyps, refs):
        for n in range(1, order + 1):
            hyp_counts = Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))
            hyp_ngrams[n] += sum(hyp_counts.values())
            most = Counter()
            for r in rs:
                most |= Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))  # |: the max per n-gram
            gained[n] += sum(info(g) * min(c, most[g]) for g, c in hyp_counts.items() if g in most)
    score = sum(gained[n] / max(hyp_ngrams[n], 1) for n in range(1, order + 1))
    references_per_segment = sum(1 for rs in refs for r in rs if r) / max(len(refs), 1)
    if not references_per_segment or not ref_words:
        return 0.0
    ratio = sum(map(len, hyps)) / (ref_words / references_per_segment)
    if ratio <= 0:
        return 0.0
    return score * (math.exp(-NIST_BETA * math.log(ratio) ** 2) if ratio < 1 else 1.0)


# --------------------------------------------------------------------------- WebNLG 2017 / DART
def _split_nonword(text: str) -> str:
    """webnlg-automatic-evaluation's "detokenise": every non-word character a token, whitespace collapsed."""
    return " ".join(" ".join(re.split(r"(\W)", text)).split())


def _unidecode(text: str) -> str:
    try:
        from unidecode import unidecode
    except ImportError:
        raise BenchError(
            "the WebNLG 2017 scorer needs the unidecode package, which is not installed: "
            "pip install Unidecode (it is a dependency in pyproject.toml)"
        ) from None
    return unidecode(text)


def _webnlg_hypothesis(text: str) -> str:
    """As evaluation.py's read_participant + write_to_file: unidecode, lowercase, split."""
    return _split_nonword(_unidecode(_unidecode(text.strip()).lower()))


def _webnlg_reference(text: str) -> str:
    """As evaluation.py's bleu_ref_files_gen: split first, then lowercase and unidecode."""
    return _unidecode(_split_nonword(text).lower())


def _dart_text(text: str) -> str:
    """As DART's reference files: split at every non-word character, lowercased."""
    return _split_nonword(text.strip()).lower()


def _bleu_meteor(hyps, refs, names, lowercase: bool, slots: int) -> dict[str, float]:
    """multi-bleu.perl and METEOR on text already normalised as the scorer does."""
    metrics = {}
    if "bleu" in names:
        metrics["bleu"] = multi_bleu(hyps, refs, lowercase=lowercase, slots=slots)
    if "meteor" in names:
        if not all(refs):
            raise ValueError("METEOR needs at least one reference per example")
        metrics["meteor"] = 100.0 * _meteor(
            {i: list(rs) for i, rs in enumerate(refs)}, {i: [h] for i, h in enumerate(hyps)}
        )
    return metrics


# --------------------------------------------------------------------------- ROUGE (rouge-score)
def _rouge_score(hypotheses, references, names) -> dict[str, float]:
    from rouge_score import rouge_scorer

    rouge = {name: ROUGE_TYPES[name] for name in names}
    scorer = rouge_scorer.RougeScorer(list(rouge.values()), use_stemmer=True)
    totals = dict.fromkeys(rouge, 0.0)
    for hyp, refs in zip(hypotheses, references):
        scores = [scorer.score(ref, hyp) for ref in refs]
        for name, rouge_type in rouge.items():
            totals[name] += max(s[rouge_type].fmeasure for s in scores)
    return {name: 100.0 * total / len(hypotheses) for name, total in totals.items()}


# --------------------------------------------------------------------------- Java: METEOR, PTBTokenizer
JAVA_FIX = "install a JRE, e.g. apt-get install openjdk-17-jre-headless"


def check_metric_tools(names, scorers=("e2e-metrics",)) -> None:
    """One line (BenchError), before any model loads, when a metric in `names` needs Java under one of
    `scorers` (METEOR's jar always; e2e-metrics' PTBTokenizer for ROUGE-L and CIDEr too) and there is none,
    or the WebNLG scorer's unidecode is missing."""
    needing = [
        name for name in names if name == "meteor" or (name in ("rouge_l", "cider") and "e2e-metrics" in scorers)
    ]
    if needing and not shutil.which("java"):
        raise BenchError(
            f"metric(s) {', '.join(needing)} need Java (`java` on PATH), which is not installed: " + JAVA_FIX
        )
    if "webnlg-2017" in scorers:
        _unidecode("")


def _java_missing(what: str) -> RuntimeError:
    return RuntimeError(f"{what} needs Java (`java` on PATH): {JAVA_FIX}")


def java_log() -> Path:
    """Where the Java tools' chatter goes ($PEFT_REPRO_JAVA_LOG, else peft-repro-java.log in the temp folder)."""
    return Path(os.environ.get("PEFT_REPRO_JAVA_LOG") or Path(tempfile.gettempdir()) / "peft-repro-java.log")


@contextlib.contextmanager
def java_chatter_to_log():
    """The process's stderr (file descriptor 2, which the Java tokenizer inherits) appended to java_log() for the
    block; Python's own errors raised in it still reach the terminal, after the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(java_log(), "ab") as log:
            os.dup2(log.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _coco_tokenize(hypotheses, references) -> tuple[dict, dict]:
    """coco-caption's PTBTokenizer over hypotheses and references in one JVM run: {i: [refs]}, {i: [hyp]}."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    if not shutil.which("java"):
        raise _java_missing("METEOR/ROUGE-L/CIDEr tokenization (Stanford PTBTokenizer)")
    if not all(references):
        raise ValueError("METEOR, ROUGE-L and CIDEr need at least one reference per example")

    def caption(text):  # one line each: the tokenizer is line based
        return {"caption": " ".join(text.split())}

    captions = {("hyp", i): [caption(h)] for i, h in enumerate(hypotheses)}
    captions |= {("ref", i): [caption(r) for r in refs] for i, refs in enumerate(references)}
    with java_chatter_to_log():  # "PTBTokenizer tokenized N tokens at …" on every call: not the terminal's business
        tokens = PTBTokenizer().tokenize(captions)
    if any(len(tokens.get(key, ())) != len(value) for key, value in captions.items()):
        raise RuntimeError("PTBTokenizer returned a different number of lines than it was given")
    return (
        {i: tokens[("ref", i)] for i in range(len(references))},
        {i: tokens[("hyp", i)] for i in range(len(hypotheses))},
    )


def _meteor(gts: dict, res: dict) -> float:
    """Corpus METEOR (0-1) of pycocoevalcap's wrapper, whose java process is always ended here: the package
    ends it only when the object is garbage collected, and keeps its lock if a score fails."""
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
