"""prefix_tuning, adapter, ia3, bitfit, ft_top_k on the tiny models: closed-form parameter counts, frozen
base after training, delta round trips and sizes, initialisation, scoring/generation, bad input, cells."""

import json

import pytest
import torch
from safetensors.torch import load_file

from bench.api.errors import BenchError
from bench.harness.batches import training_batches
from bench.harness.evaluation import generate, rank_scores
from bench.harness.method import CellContext, get_method, resolve_hparams, trainable_parameters
from bench.harness.tokens import pad, prompt_ids
from bench.harness.train import train

# tiny-llama: d 32, 2 layers, 4 heads, 2 key/value heads of 8 -> d_kv 16, d_ff 64 (config/models.yaml)
# tiny-bert:  d 32, 2 layers, 4 heads of 8 -> d_kv 32, d_ff 64; head Linear(32, 2)
# tiny-gpt2:  d 32, 2 layers, d_ff 64; IA3 rescales its fused q/k/v output (3d = 96 values, so d_kv "48" here)
SHAPES = {
    "tiny-llama": dict(d=32, L=2, d_kv=16, d_ff=64, head=0),
    "tiny-bert": dict(d=32, L=2, d_kv=32, d_ff=64, head=32 * 2 + 2),
    "tiny-gpt2": dict(d=32, L=2, d_kv=48, d_ff=64, head=0),
}
KIND = {"tiny-llama": "causal_lm", "tiny-bert": "encoder", "tiny-gpt2": "causal_lm"}
TRAIN_HP = {"steps": 2, "lr": 0.1, "batch_size": 4, "max_len": 48}
CASES = [  # (method, model, hyperparameter overrides)
    ("prefix_tuning", "tiny-llama", {"prefix_length": 4, "mlp_hidden": 16}),
    ("adapter", "tiny-llama", {}),
    ("adapter", "tiny-bert", {}),
    ("adapter", "tiny-gpt2", {}),
    ("adapter", "tiny-gpt2", {"placement": "lin", "bottleneck": 3, "activation": "relu"}),  # Hu et al.'s AdapterL
    ("ia3", "tiny-llama", {}),
    ("ia3", "tiny-bert", {}),
    ("ia3", "tiny-gpt2", {}),
    ("bitfit", "tiny-bert", {}),
    ("ft_top_k", "tiny-llama", {"k": 1}),
    ("ft_top_k", "tiny-bert", {"k": 1}),
]
CAUSAL = ["prefix_tuning", "adapter", "ia3", "ft_top_k"]


def expected_counts(method: str, model: str, hp: dict) -> tuple[int, int]:
    """(trainable while training, parameters in the saved delta), in closed form."""
    s = SHAPES[model]
    d, L, d_kv, d_ff, head = s["d"], s["L"], s["d_kv"], s["d_ff"], s["head"]
    if method == "prefix_tuning":
        p, h = hp["prefix_length"], hp["mlp_hidden"]
        prefix = p * L * 2 * d_kv
        mlp = p * d_kv + (d_kv * h + h) + (h * L * 2 * d_kv + L * 2 * d_kv)  # E, Linear(d_kv,h), Linear(h,L2d_kv)
        return mlp + head, prefix + head
    if method == "adapter" and hp.get("placement") == "lin":  # one per block, after the FFN, with a LayerNorm
        m = hp["bottleneck"]
        n = L * (2 * d * m + d + m + 2 * d) + head
    elif method == "adapter":
        m = d // hp["reduction_factor"]
        n = L * 2 * (2 * d * m + d + m) + head
    elif method == "ia3":
        n = L * (2 * d_kv + d_ff) + head
    elif method == "bitfit":  # BERT: embedding LN; per layer q,k,v,o + 2 LN + FFN out (7d) and FFN in (d_ff); pooler
        n = d + L * (7 * d + d_ff) + d + head
    elif method == "ft_top_k" and model == "tiny-llama":  # q,o d*d; k,v d*d_kv; 3 FFN matrices; 2 norms; final norm
        n = hp["k"] * (2 * d * d + 2 * d * d_kv + 3 * d * d_ff + 2 * d) + d
    elif method == "ft_top_k":  # BERT block (4 attention Linear, 2 LN, 2 FFN Linear) + pooler + head
        n = hp["k"] * (4 * d * d + 4 * d + 4 * d + 2 * d * d_ff + d_ff + d) + (d * d + d) + head
    return n, n


def _setup(method_name, model_name, overrides, models_cache, sst2, n_train=16):
    from bench.harness.models import load_model
    from bench.harness.tasks import train_examples

    method = get_method(method_name)
    hp = resolve_hparams(method, {**TRAIN_HP, **overrides})
    model, tokenizer, _ = load_model(model_name, cache=models_cache, num_labels=2)
    ctx = CellContext(
        task=sst2,
        model_kind=KIND[model_name],
        tokenizer=tokenizer,
        train_examples=train_examples(sst2, n_train, 0),
        seed=0,
    )
    return method, hp, model, tokenizer, ctx


def _inputs(model_name):
    ids = torch.tensor([[5, 70, 80, 90, 100, 110], [5, 71, 81, 91, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model, model_name):
    model.eval()
    with torch.no_grad():
        return model(**_inputs(model_name)).logits


@pytest.mark.parametrize("method_name, model_name, overrides", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_train_frozen_base_and_delta_round_trip(method_name, model_name, overrides, models_cache, sst2, tmp_path):
    from bench.harness.models import load_model

    method, hp, model, tokenizer, ctx = _setup(method_name, model_name, overrides, models_cache, sst2)
    originals = list(model.named_parameters())
    snapshot = [p.detach().clone() for _, p in originals]
    torch.manual_seed(0)
    adapted = method.apply(model, hp, ctx)
    trainable, delta = expected_counts(method_name, model_name, hp)
    assert trainable_parameters(adapted) == trainable
    assert method.delta_parameters(adapted) == delta

    result = train(
        adapted,
        method,
        hp,
        training_batches(tokenizer, sst2, ctx.model_kind, ctx.train_examples, hp["batch_size"], hp["max_len"], 0),
        ctx.model_kind,
        progress="test",
    )
    assert result.steps_done == 2 and result.diverged_at_step is None

    changed = {name for (name, p), before in zip(originals, snapshot) if not torch.equal(p, before)}
    trained = {name for name, p in originals if p.requires_grad}  # base tensors the method itself trains
    assert changed <= trained  # everything else of the base is bit-identical
    if method_name == "ft_top_k":  # exactly the top block (+ final norm / pooler + head) trains and changed
        top = {
            "tiny-llama": ("model.layers.1.", "model.norm."),
            "tiny-bert": ("bert.encoder.layer.1.", "bert.pooler.", "classifier."),
        }[model_name]
        assert trained == {name for name, _ in originals if name.startswith(top)}
        # the softmax ignores a key bias (it adds the same amount to every score of a query): zero gradient
        assert trained - changed <= {"bert.encoder.layer.1.attention.self.key.bias"}
    elif method_name == "bitfit":  # biases and the head
        assert trained == {n for n, _ in originals if n.endswith(".bias") or n.startswith("classifier.")}
        assert len(changed) >= len(trained) - 2  # all but the key biases
    elif KIND[model_name] == "encoder" and method_name == "adapter":  # own code trains the head in place
        assert changed == trained == {"classifier.weight", "classifier.bias"}
    else:  # peft trains a copy of the head (modules_to_save): the whole base is untouched
        assert changed == trained == set()

    method.save_delta(adapted, tmp_path)
    files = [f for f in tmp_path.rglob("*") if f.is_file()]
    delta_bytes = sum(f.stat().st_size for f in files)
    assert 0 <= delta_bytes - 4 * delta < 10_000, delta_bytes
    weights = [f for f in files if f.suffix == ".safetensors"]
    assert sum(t.numel() for f in weights for t in load_file(str(f)).values()) == delta

    fresh, _, _ = load_model(model_name, cache=models_cache, num_labels=2)
    reloaded = method.load_delta(fresh, hp, ctx, tmp_path)
    after = _logits(adapted, model_name)
    assert torch.allclose(after, _logits(reloaded, model_name), atol=1e-6, rtol=0)
    base, _, _ = load_model(model_name, cache=models_cache, num_labels=2)
    assert not torch.allclose(after, _logits(base, model_name), atol=1e-4)
    if method_name in ("prefix_tuning", "ia3"):  # PEFT-backed deltas are plain peft checkpoints
        from peft import PeftModel

        plain = PeftModel.from_pretrained(base, str(tmp_path))
        assert torch.allclose(after, _logits(plain, model_name), atol=1e-6, rtol=0)


@pytest.mark.parametrize("mlp_hidden", [0, 16])
def test_prefix_real_token_init_is_the_base_model_reading_real_tokens(mlp_hidden, models_cache, sst2):
    """At step 0 the prefix holds the frozen model's own key/values on real task tokens, so the adapted
    model computes what the base model computes on `real tokens + input` (and generates likewise)."""
    from bench.harness.models import load_model
    from methods.prefix_tuning import init_token_ids

    method, hp, model, tokenizer, ctx = _setup(
        "prefix_tuning", "tiny-llama", {"prefix_length": 5, "mlp_hidden": mlp_hidden}, models_cache, sst2
    )
    real = init_token_ids(hp, ctx, 5)
    assert real == prompt_ids(tokenizer, sst2.prompt(ctx.train_examples[0]))[:5]  # task text, first example
    adapted = method.apply(model, hp, ctx)
    base, _, _ = load_model("tiny-llama", cache=models_cache)
    ids = torch.tensor([[5, 70, 80, 90, 100]])
    with torch.no_grad():
        ours = adapted(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
        theirs = base(input_ids=torch.tensor([real + ids[0].tolist()])).logits[:, 5:]
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)

    prompts = [prompt_ids(tokenizer, "hello there"), prompt_ids(tokenizer, "a longer prompt about food")]

    def scores(m, sequences):  # left-padded batch, as bench.harness.evaluation.generate decodes
        input_ids, attention_mask = pad(sequences, tokenizer.pad_token_id, side="left")
        out = m.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=False,
            max_new_tokens=3,
            output_scores=True,
            return_dict_in_generate=True,
            pad_token_id=tokenizer.pad_token_id,
        )
        return torch.stack(out.scores)

    assert torch.allclose(scores(adapted, prompts), scores(base, [real + p for p in prompts]), atol=1e-5, rtol=0)


def test_prefix_label_scores_at_init_are_finite_and_near_the_base(models_cache, sst2):
    """Real-token prefixes leave the label log-probs finite and close to the base model's. (The tiny random
    model is too insensitive to show the collapse of a random init; FEASIBILITY.md measured it on SmolLM2.)"""
    from bench.harness.models import load_model
    from bench.harness.tasks import eval_examples

    method, hp, model, tokenizer, ctx = _setup("prefix_tuning", "tiny-llama", {}, models_cache, sst2)
    examples = eval_examples(sst2, "sst2", 8)
    base, _, _ = load_model("tiny-llama", cache=models_cache)
    before = rank_scores(base, tokenizer, sst2, examples, 8, 64)
    after = rank_scores(method.apply(model, hp, ctx), tokenizer, sst2, examples, 8, 64)
    tokens = torch.tensor([len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in sst2.verbalizer])
    assert torch.isfinite(after).all()
    assert ((after - before).abs() / tokens).max() < 0.5  # nats per label token


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-bert", "tiny-gpt2"])
def test_adapter_is_the_identity_at_init(model_name, models_cache, sst2):
    from bench.harness.models import load_model

    method, hp, model, _, ctx = _setup("adapter", model_name, {}, models_cache, sst2)
    base, _, _ = load_model(model_name, cache=models_cache, num_labels=2)
    adapted = method.apply(model, hp, ctx)
    assert any(".adapter." in name for name, _ in adapted.named_parameters())
    assert torch.equal(_logits(adapted, model_name), _logits(base, model_name))


@pytest.mark.parametrize("method_name", CAUSAL)
def test_rank_scoring_and_generation_run(method_name, models_cache, sst2, e2e):
    overrides = {"prefix_length": 4, "mlp_hidden": 16} if method_name == "prefix_tuning" else {}
    method, hp, model, tokenizer, ctx = _setup(method_name, "tiny-llama", overrides, models_cache, sst2)
    adapted = method.apply(model, hp, ctx)
    assert method.extra_positions(hp) == 0
    adapted.eval()
    scores = rank_scores(adapted, tokenizer, sst2, ctx.train_examples[:4], 4, 48, method.extra_positions(hp))
    assert scores.shape == (4, 2) and torch.isfinite(scores).all()
    texts = generate(adapted, tokenizer, ["name[Aromi] | food[Chinese]\nDescription:", "x\nDescription:"], 4, 2, 48)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize(
    "method_name, model_name, overrides, message",
    [
        ("prefix_tuning", "tiny-llama", {"prefix_length": 0}, r"prefix_length=0 must be a positive integer"),
        ("prefix_tuning", "tiny-llama", {"init": "zeros"}, r"init='zeros' unknown: choose one of real_tokens, random"),
        ("prefix_tuning", "tiny-llama", {"prefix_length": 10, "mlp_hidden": 4}, r"use mlp_hidden >= 10"),
        ("adapter", "tiny-llama", {"reduction_factor": 0}, r"reduction_factor=0 must be a positive divisor"),
        (
            "adapter",
            "tiny-llama",
            {"reduction_factor": 5},
            r"reduction_factor=5 does not divide the hidden size 32 of tiny-llama: valid: 1, 2, 4, 8, 16, 32$",
        ),
        ("adapter", "tiny-bert", {"activation": "elu"}, r"activation='elu' unknown: choose one of gelu, relu"),
        (
            "adapter",
            "tiny-gpt2",
            {"placement": "pfeiffer"},
            r"placement='pfeiffer' unknown: choose one of houlsby, lin",
        ),
        ("ft_top_k", "tiny-llama", {"k": 3}, r"k=3 invalid for tiny-llama with 2 blocks: choose 1\.\.2"),
        ("ft_top_k", "tiny-bert", {"k": 0}, r"k=0 must be at least 1"),
        (
            "bitfit",
            "tiny-llama",
            {},
            r"bitfit needs bias terms: llama models have none; use ia3 or lora, or a model with "
            r"biases \(qwen2, gpt2, bert, roberta, mpnet, bart\)$",
        ),
    ],
)
def test_bad_hyperparameters_are_one_clear_error(method_name, model_name, overrides, message, models_cache, sst2):
    method, hp, model, _, ctx = _setup(method_name, model_name, overrides, models_cache, sst2, n_train=1)
    with pytest.raises(BenchError, match=message) as caught:
        method.apply(model, hp, ctx)
    assert "\n" not in str(caught.value)


def test_bad_hyperparameter_fails_before_the_model_loads(models_cache, tmp_path, capsys):
    from bench.cli import main

    argv = [
        "run-cell",
        "--task",
        "sst2",
        "--model",
        "tiny-llama",
        "--method",
        "prefix_tuning",
        "--train-size",
        "8",
        "--hp",
        "prefix_length=-1",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "prefix_length=-1" in err and len(err.splitlines()) == 1


CELLS = [(m, "tiny-llama") for m in CAUSAL] + [(m, "tiny-bert") for m in ["adapter", "ia3", "ft_top_k", "bitfit"]]


@pytest.mark.parametrize("method_name, model_name", CELLS, ids=[f"{m}-{n}" for m, n in CELLS])
def test_cell_runs(method_name, model_name, models_cache, tmp_path):
    from bench.harness.cell import CellConfig, run_cell

    hp = {"steps": 2, "batch_size": 4, "max_len": 48, "lr": 1e-2}
    if method_name == "prefix_tuning":
        hp.update(prefix_length=4, mlp_hidden=16)
    config = CellConfig(
        task="sst2", model=model_name, method=method_name, train_size=16, seed=0, hp=hp, eval_limit=8, shifts=()
    )
    record = run_cell(config, tmp_path, threads=1)
    assert record == json.loads((tmp_path / "record.json").read_text())
    assert record["status"] == "ok" and record["metrics"]["sst2"]["n"] == 8
    cost = record["cost"]
    trainable, delta = expected_counts(method_name, model_name, get_method(method_name).defaults | hp)
    assert (cost["trainable_params"], cost["delta_params"]) == (trainable, delta)
    assert 0 <= cost["delta_bytes"] - 4 * delta < 10_000


def test_prefix_generation_cell(models_cache, tmp_path):
    from bench.harness.cell import CellConfig, run_cell

    config = CellConfig(
        task="e2e",
        model="tiny-llama",
        method="prefix_tuning",
        train_size=8,
        seed=0,
        hp={"steps": 1, "batch_size": 2, "max_len": 64, "prefix_length": 4, "mlp_hidden": 16},
        eval_limit=2,
        shifts=None,
    )
    record = run_cell(config, tmp_path, threads=1)
    assert record["status"] == "ok" and {"bleu", "rouge_l"} <= set(record["metrics"]["e2e"])


def test_bitfit_cell_on_a_bias_free_model_fails_clearly(models_cache, tmp_path):
    from bench.harness.cell import CellConfig, run_cell

    config = CellConfig(
        task="sst2", model="tiny-llama", method="bitfit", train_size=8, seed=0, hp={"steps": 1}, eval_limit=2, shifts=()
    )
    with pytest.raises(BenchError, match="bitfit needs bias terms"):
        run_cell(config, tmp_path, threads=1)
    assert not (tmp_path / "record.json").exists()
