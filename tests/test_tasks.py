"""Task registry tests: split sizes against the data READMEs, sampling, errors, checksum checks."""

from __future__ import annotations

import collections
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a plain checkout, no install

from bench.api.errors import BenchError  # noqa: E402
from bench.harness import tasks as T  # noqa: E402


def _real_root() -> Path | None:
    try:
        return T.data_root()
    except BenchError:
        return None


REAL_ROOT = _real_root()
needs_data = pytest.mark.skipif(REAL_ROOT is None, reason="shared/data not found (set PEFT_REPRO_DATA)")

# (dataset id, examples, references) as stated in the data READMEs; grouped multi-reference splits
# count distinct inputs. dart: one example per entry, as DART's scorer counts them (dart/test: 5,097 entries
# share 4,159 distinct triple sets, and one of its 12,552 references is empty in the original XML).
# webnlg/dev: 872 entries, 871 distinct triple sets.
SIZES = [
    ("e2e/train", 42061, 42061),
    ("e2e/dev", 547, 4672),
    ("e2e/test", 630, 4693),
    ("webnlg/train", 18102, 18102),
    ("webnlg/dev", 871, 2268),
    ("webnlg/test_all", 1862, 4928),
    ("webnlg/test_seen", 971, 2495),
    ("webnlg/test_unseen", 891, 2433),
    ("dart/dev", 2768, 6980),
    ("dart/test", 5097, 12551),
    ("xsum/test", 321, 321),
    ("xsum/sports", 90, 90),
    ("xsum/news", 223, 223),
    ("xsum/sample_train", 221, 221),
    ("xsum/sample_test", 100, 100),
    ("xsum/sample_test_sports", 31, 31),
    ("xsum/sample_test_news", 66, 66),
    ("sst2/train", 67349, 0),
    ("sst2/dev", 872, 0),
    ("imdb/test", 25000, 0),
    ("amazon/books", 2000, 0),
    ("amazon/dvd", 2000, 0),
    ("amazon/electronics", 2000, 0),
    ("amazon/kitchen", 2000, 0),
    ("amazon/airline", 2000, 0),
    ("mrpc/train", 3668, 0),
    ("mrpc/dev", 408, 0),
    ("mrpc/test", 1725, 0),
    ("qqp/train", 21497, 0),
    ("qqp/dev", 2000, 0),
    ("rte/train", 2490, 0),
    ("rte/val", 277, 0),
    ("cb/train", 250, 0),
    ("cb/val", 56, 0),
    ("copa/train", 400, 0),
    ("copa/val", 100, 0),
    ("wic/train", 5428, 0),
    ("wic/val", 638, 0),
    ("wsc/train", 554, 0),
    ("wsc/val", 104, 0),
    ("multirc/train", 27243, 0),
    ("multirc/val", 4848, 0),
    ("boolq/val", 3270, 0),
    ("fewglue/rte/train", 32, 0),
    ("fewglue/cb/train", 32, 0),
    ("fewglue/copa/train", 32, 0),
    ("fewglue/wic/train", 32, 0),
    ("fewglue/wsc/train", 32, 0),
    ("fewglue/boolq/train", 32, 0),
    ("fewglue/multirc/train", 154, 0),  # 32 FewGLUE passages, one example per (question, answer)
]
# positives (label 1) from the READMEs where stated
POSITIVES = {
    "sst2/train": 37569,
    "sst2/dev": 444,
    "imdb/test": 12500,
    "amazon/books": 1000,
    "amazon/airline": 1000,
    "mrpc/train": 2474,
    "mrpc/dev": 279,
    "mrpc/test": 1147,
}
EXPECTED_TASKS = {
    "e2e",
    "webnlg",
    "xsum",
    "xsum_full",
    "xsum_full_offline",
    "sst2",
    "mrpc",
    "qqp",
    "rte",
    "cb",
    "copa",
    "wic",
    "wsc",
    "multirc",
    "boolq",
    "fewglue_boolq",
    "fewglue_cb",
    "fewglue_copa",
    "fewglue_multirc",
    "fewglue_rte",
    "fewglue_wic",
    "fewglue_wsc",
}
HUB = {"xsum/hub_train": 204045, "xsum/hub_test": 11334}  # declared rows; read from the hub when a cell runs


# ----------------------------------------------------------------------------- registry (no data)
def test_registry_declares_all_tasks_and_datasets():
    assert set(T.task_names()) == EXPECTED_TASKS
    assert {d for d, _, _ in SIZES} | set(HUB) == set(T.dataset_ids())
    for name in T.task_names():
        task = T.get_task(name)
        assert task.kind in ("classification", "generation")
        assert 1 <= len(task.text_fields) <= 2
        if task.kind == "classification":
            assert len(task.verbalizer) >= 2 and all(w.startswith(" ") for w in task.verbalizer)
            assert len(set(task.verbalizer)) == len(task.verbalizer)
            assert task.metrics[0] == "accuracy" and task.max_new_tokens == 0
        else:
            assert task.verbalizer == () and task.max_new_tokens > 0
            assert set(task.metrics) <= {"bleu", "nist", "meteor", "rouge_1", "rouge_2", "rouge_l", "cider"}
    assert T.get_task("boolq").train_split is None and T.get_task("xsum").train_split is None
    assert T.get_task("xsum").metrics == ("rouge_1", "rouge_2", "rouge_l")
    assert set(T.get_task("sst2").shifts) == {
        "imdb",
        "amazon_books",
        "amazon_dvd",
        "amazon_electronics",
        "amazon_kitchen",
        "airline",
    }
    assert set(T.get_task("webnlg").shifts) == {"test_seen", "test_unseen", "dart"}
    assert T.get_task("mrpc").shifts == {"qqp": "qqp/dev"} and T.get_task("qqp").shifts == {"mrpc": "mrpc/dev"}
    assert T.get_task("cb").verbalizer == (" yes", " no", " maybe")


def test_unknown_task_lists_choices():
    with pytest.raises(BenchError) as err:
        T.get_task("nope")
    msg = str(err.value)
    assert "unknown task 'nope'" in msg and "config/tasks.yaml" in msg
    assert all(name in msg for name in T.task_names())


def test_prompt_and_target_render():
    sst2, e2e = T.get_task("sst2"), T.get_task("e2e")
    ex = T.Example({"sentence": "great film"}, label=1)
    assert sst2.prompt(ex) == "Review: great film\nSentiment:" and sst2.target(ex) == " positive"
    gen = T.Example({"mr": "name[X]"}, references=("X is nice.", "Other."))
    assert e2e.prompt(gen) == "name[X]\nDescription:" and e2e.target(gen) == " X is nice."
    with pytest.raises(BenchError, match="template needs field"):
        sst2.prompt(T.Example({"text": "x"}, label=0))


def test_sample_nested_and_seeded():
    items = [T.Example({"i": str(i)}, label=i % 2) for i in range(1000)]
    a50, a100 = T.sample(items, 50, seed=1), T.sample(items, 100, seed=1)
    assert a100[:50] == a50 and len(a100) == 100 and len(set(map(id, a100))) == 100
    assert T.sample(items, 100, seed=1) == a100  # same seed, same order
    assert T.sample(items, 100, seed=2) != a100  # different seed differs
    assert a100 != items[:100]  # actually shuffled
    assert T.sample(items, "full", seed=7) == items  # file order
    assert T.sample(items, "100", seed=1) == a100  # wildcard strings work
    assert (
        T.sample(items, 1000, seed=1) != items
        and sorted(T.sample(items, 1000, 1), key=lambda e: int(e.fields["i"])) == items
    )


@pytest.mark.parametrize("size", [0, -5, 1001, "abc", 2.5, None])
def test_sample_bad_size(size):
    items = [T.Example({"i": str(i)}) for i in range(1000)]
    with pytest.raises(BenchError, match="from 1 to 1000"):
        T.sample(items, size, seed=0)


def test_module_imports_no_heavy_libraries():
    code = (
        "import sys, bench.harness.tasks; "
        "print(sorted(m for m in ('torch', 'transformers', 'numpy', 'pandas') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=T.PROJECT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- data root
def _mini_root(dst: Path, rels: list[str]) -> Path:
    """Copy a few files of the real data root with their SHA256SUMS lines."""
    wanted, lines = set(rels), []
    for line in (REAL_ROOT / "SHA256SUMS").read_text().splitlines():
        rel = line.split(None, 1)[1].strip().removeprefix("./")
        if rel in wanted:
            lines.append(line)
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(REAL_ROOT / rel, dst / rel)
    assert len(lines) == len(wanted)
    (dst / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return dst


def test_data_root_missing_error(tmp_path, monkeypatch):
    with pytest.raises(BenchError) as err:
        T.data_root(tmp_path / "nowhere")
    msg = str(err.value)
    assert str(tmp_path / "nowhere") in msg and "PEFT_REPRO_DATA" in msg and "--data-root" in msg
    monkeypatch.setenv("PEFT_REPRO_DATA", str(tmp_path))  # folder without SHA256SUMS
    with pytest.raises(BenchError, match="no SHA256SUMS"):
        T.data_root()


def test_data_root_precedence(tmp_path, monkeypatch):
    env_root, arg_root = tmp_path / "env", tmp_path / "arg"
    for d in (env_root, arg_root):
        d.mkdir()
        (d / "SHA256SUMS").write_text("")
    monkeypatch.setenv("PEFT_REPRO_DATA", str(env_root))
    assert T.data_root() == env_root.resolve()
    assert T.data_root(str(arg_root)) == arg_root.resolve()
    monkeypatch.delenv("PEFT_REPRO_DATA")
    if REAL_ROOT is not None:
        assert T.data_root() == REAL_ROOT


@needs_data
def test_env_override_loads_from_copy(tmp_path, monkeypatch):
    root = _mini_root(tmp_path, ["superglue/CB/val.jsonl"])
    monkeypatch.setenv("PEFT_REPRO_DATA", str(root))
    assert T.data_root() == root.resolve()
    assert T.load_split("cb/val") == T.load_split("cb/val", REAL_ROOT)
    assert T.file_sha256s(T.get_task("boolq"), ["boolq"], REAL_ROOT)["superglue/BoolQ/val.jsonl"]
    with pytest.raises(BenchError, match="data file superglue/CB/train.jsonl not found"):
        T.load_split("cb/train")


@needs_data
def test_tamper_detected(tmp_path):
    root = _mini_root(tmp_path, ["superglue/CB/val.jsonl", "superglue/COPA/val.jsonl"])
    path = root / "superglue/CB/val.jsonl"
    data = bytearray(path.read_bytes())
    data[100] = ord("X") if data[100] != ord("X") else ord("Y")
    path.write_bytes(bytes(data))
    with pytest.raises(BenchError) as err:
        T.load_split("cb/val", root)
    msg = str(err.value)
    assert "superglue/CB/val.jsonl" in msg and "sha256" in msg and "restore" in msg
    assert len(T.load_split("copa/val", root)) == 100  # untouched file still loads


@needs_data
def test_unlisted_file_rejected(tmp_path):
    root = _mini_root(tmp_path, ["superglue/WiC/val.jsonl"])
    (root / "SHA256SUMS").write_text("")
    with pytest.raises(BenchError, match="superglue/WiC/val.jsonl is not listed"):
        T.load_split("wic/val", root)


# ----------------------------------------------------------------------------- real data
@needs_data
@pytest.mark.parametrize("dataset_id,n,n_refs", SIZES)
def test_split_sizes(dataset_id, n, n_refs):
    examples = T.load_split(dataset_id)
    assert len(examples) == T.split_size(dataset_id) == n
    assert sum(len(ex.references) for ex in examples) == n_refs
    if n_refs:
        assert all(ex.references and all(r.strip() for r in ex.references) for ex in examples)
        assert all(ex.label is None for ex in examples)
    else:
        counts = collections.Counter(ex.label for ex in examples)
        # FewGLUE's WSC holds only true coreferences (PET trains WSC to generate the referent): one class
        assert len(counts) >= (1 if dataset_id == "fewglue/wsc/train" else 2) and None not in counts
        if dataset_id in POSITIVES:
            assert counts[1] == POSITIVES[dataset_id]
    assert all(isinstance(v, str) for ex in examples for v in ex.fields.values())
    empty = sum(not all(v.strip() for v in ex.fields.values()) for ex in examples)
    assert empty == (3 if dataset_id == "multirc/train" else 0)  # 3 empty answers in official MultiRC


@needs_data
def test_multireference_grouping():
    test = T.load_split("e2e/test")
    assert len({ex.fields["mr"] for ex in test}) == 630
    assert max(len(ex.references) for ex in test) > 1
    train = T.load_split("e2e/train")
    assert all(len(ex.references) == 1 for ex in train[:100])
    assert len({ex.fields["mr"] for ex in train}) == 4862
    dart = T.load_split("dart/test")  # not grouped: entries sharing a triple set keep their own references
    assert len({ex.fields["triples"] for ex in dart}) == 4159 < len(dart) == 5097
    assert " | " in dart[0].fields["triples"] and " ; " in dart[0].fields["triples"]
    assert "_" not in T.load_split("webnlg/test_seen")[0].fields["triples"]


@needs_data
def test_every_task_renders_first_examples():
    for name in T.task_names():
        task = T.get_task(T.task_offline_twin(name) or name)  # a task on hub data: its twin, on local files
        batches = [T.eval_examples(task, s, 3) for s in task.eval_sets]
        if task.train_split:
            batches.append(T.train_examples(task, 3, seed=0))
        for ex in (ex for batch in batches for ex in batch):
            prompt, target = task.prompt(ex), task.target(ex)
            assert prompt.strip() and target.startswith(" ") and len(target) > 1
            assert all(ex.fields[f].strip() for f in task.text_fields)
            if task.kind == "classification":
                assert 0 <= ex.label < len(task.verbalizer)


@needs_data
def test_imdb_and_amazon_cleaned():
    imdb = T.load_split("imdb/test")
    assert not any("<br" in ex.fields["sentence"] or "\n" in ex.fields["sentence"] for ex in imdb)
    assert not any("\t" in ex.fields["sentence"] for ex in T.load_split("amazon/books"))


@needs_data
def test_eval_limit_fixed_and_shift_names():
    sst2 = T.get_task("sst2")
    a = T.eval_examples(sst2, "imdb", 200)
    assert a == T.eval_examples(sst2, "imdb", 200) and len(a) == 200
    assert T.eval_examples(sst2, "imdb", 100) == a[:100]
    assert len({ex.label for ex in a}) == 2  # not the sorted neg-first head
    assert len(T.eval_examples(sst2, "sst2", None)) == 872
    assert len(T.eval_examples(sst2, "sst2", 10**6)) == 872
    with pytest.raises(BenchError) as err:
        T.eval_examples(sst2, "yelp", None)
    assert all(s in str(err.value) for s in ["sst2", "imdb", "airline"])
    with pytest.raises(BenchError, match="evaluation-only"):
        T.train_examples(T.get_task("boolq"), 10, 0)


@needs_data
def test_qqp_holdout_disjoint_and_mrpc_shift():
    train, dev = T.load_split("qqp/train"), T.load_split("qqp/dev")

    def pairs(xs):
        return {(e.fields["sentence1"], e.fields["sentence2"]) for e in xs}

    assert not pairs(train) & pairs(dev)
    mrpc = T.get_task("mrpc")
    assert T.eval_examples(mrpc, "qqp", None) == dev
    assert T.eval_examples(T.get_task("qqp"), "mrpc", None) == T.load_split("mrpc/dev")


@needs_data
def test_file_sha256s_records_every_file():
    sums = T.file_sha256s(T.get_task("sst2"), ["sst2", "imdb", "airline"])
    assert set(sums) == {
        "sst2/train.tsv",
        "sst2/dev.tsv",
        "imdb/test.jsonl.gz",
        "amazon_multidomain_blitzer/airline/all_labeled.tsv",
    }
    assert all(len(v) == 64 for v in sums.values())
    listed = (REAL_ROOT / "SHA256SUMS").read_text()
    assert all(f"{v}  ./{k}" in listed for k, v in sums.items())
    assert set(T.file_sha256s(T.get_task("xsum"), ["xsum"])) == {"xsum_sample/xsum_articles_321.jsonl"}


@needs_data
def test_dev_split_held_out_of_every_training_sample():
    cb, split = T.get_task("cb"), T.load_split("cb/train")  # 250 training examples
    dev = T.dev_examples(cb, 50)
    held = {id(ex) for ex in dev}
    assert len(dev) == len(held) == 50 and held <= {id(ex) for ex in split}
    assert T.dev_examples(cb, 50) == dev and T.dev_examples(cb, 20) == dev[:20]  # fixed; smaller is a prefix
    assert dev != split[-50:] and dev != split[:50]  # a permutation, not the file's ends
    full = T.train_examples(cb, "full", 0, holdout=50)
    assert len(full) == 200 and held.isdisjoint(map(id, full))
    assert held | {id(ex) for ex in full} == {id(ex) for ex in split}  # nothing else is lost
    content = lambda xs: {(tuple(sorted(ex.fields.items())), ex.label) for ex in xs}  # noqa: E731
    assert content(dev).isdisjoint(content(full))
    for seed in (0, 1, 7):  # the dev set does not move with the seed
        a16, a32 = (T.train_examples(cb, n, seed, holdout=50) for n in (16, 32))
        assert a32[:16] == a16 and held.isdisjoint(map(id, a32))
        assert T.train_examples(cb, "full", seed, holdout=50) == full
    assert T.train_examples(cb, 32, 0, holdout=50) != T.train_examples(cb, 32, 0)  # documented: other samples
    assert T.train_examples(cb, 32, 0) == T.sample(split, 32, 0)  # without holdout: as before


@needs_data
def test_dev_split_errors():
    cb = T.get_task("cb")
    for n in (250, 10_000, 0):
        with pytest.raises(
            BenchError,
            match=rf"dev_limit {n} is out of range for task cb: its training split "
            r"cb/train has 250 examples; use an integer from 1 to 249",
        ):
            T.dev_examples(cb, n)
    with pytest.raises(BenchError, match="sample size 201 is out of range for a split of 200 examples"):
        T.train_examples(cb, 201, 0, holdout=50)
    with pytest.raises(BenchError, match="task boolq has no training split to hold a dev set out of"):
        T.dev_examples(T.get_task("boolq"), 10)


def test_hub_splits_plan_offline_and_stop_in_one_line_when_read(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert {d: T.split_size(d) for d in HUB} == HUB  # planning reads the declared rows, no network
    with pytest.raises(
        BenchError,
        match=r"dataset xsum/hub_test is EdinburghNLP/xsum \(test\) on the hub and could "
        r"not "
        r"be loaded \(.*\): run where the hub is reachable .* offline twin",
    ):
        T.load_split("xsum/hub_test")
    full = T.get_task("xsum_full")
    assert T.task_offline_twin("xsum_full") == "xsum_full_offline" and T.task_offline_twin("xsum") is None
    assert set(T.file_sha256s(full, ["xsum_full"])) == {"hub:EdinburghNLP/xsum/train", "hub:EdinburghNLP/xsum/test"}
    # the sections are disjoint BBC topics of the local sample, and the twin's eval part never meets its train part
    sports, news = T.load_split("xsum/sample_test_sports"), T.load_split("xsum/sample_test_news")
    train = {ex.fields["document"] for ex in T.load_split("xsum/sample_train")}
    assert not train & {ex.fields["document"] for ex in T.load_split("xsum/sample_test") + sports + news}
