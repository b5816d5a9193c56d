"""The prompt family (prompt_tuning, p_tuning, prompt_design, prompt_ensemble) on tiny-llama: parameter
counts in closed form, frozen base, delta round trips, inits, rank scoring and generation with virtual
tokens, k-shot prompts, the ensemble's one-pass scoring, bad hyperparameters, and one cell each."""

import copy
import dataclasses

import pytest
import torch

from bench.api.errors import BenchError
from bench.harness.batches import training_batches
from bench.harness.cell import CellConfig, FormattedTask, plan_cell, run_cell
from bench.harness.evaluation import generate, rank_scores
from bench.harness.method import CellContext, get_method, resolve_hparams, trainable_parameters
from bench.harness.tasks import Example
from bench.harness.tokens import continuation_ids
from bench.harness.train import train

P = 6  # a short prompt keeps the tests fast; the closed forms hold for any length
SENTENCES = ["great fun", "a dull , tired mess that never ends", "ok", "not bad at all", "meh"]


def _examples(n=5):
    return [Example(fields={"sentence": s}, label=k % 2) for k, s in enumerate(SENTENCES[:n])]


def _ctx(tokenizer, task, seed=0, train_examples=()):
    return CellContext(
        task=task, model_kind="causal_lm", tokenizer=tokenizer, train_examples=list(train_examples), seed=seed
    )


def _adapt(name, loaded, task, seed=0, train_examples=(), **overrides):
    model, tokenizer, _ = loaded
    method = get_method(name)
    hp = resolve_hparams(method, {"num_virtual_tokens": P, **overrides} if name != "prompt_design" else overrides)
    ctx = _ctx(tokenizer, task, seed, train_examples)
    torch.manual_seed(seed)
    return method, hp, ctx, method.apply(model, hp, ctx)


def _perturb(model):
    """Move the trainable weights away from their init so that round trips are not trivially equal."""
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(0.3 * torch.randn_like(parameter))


def _k(name):
    return {"k": 2} if name == "prompt_ensemble" else {}


def _d(loaded):
    return loaded[0].config.hidden_size


# ------------------------------------------------------------------ closed forms
def test_prompt_tuning_trains_p_times_d(tiny_llama, sst2):
    method, hp, _, adapted = _adapt("prompt_tuning", tiny_llama, sst2)
    assert trainable_parameters(adapted) == P * _d(tiny_llama) == method.delta_parameters(adapted)
    assert method.extra_positions(hp) == P
    defaults = resolve_hparams(method, {})
    assert (defaults["optimizer"], defaults["lr"], defaults["num_virtual_tokens"], defaults["init"]) == (
        "adafactor",
        0.3,
        100,
        "class_label",
    )


def test_p_tuning_delta_is_p_times_d_and_training_count_larger(tiny_llama, sst2, tmp_path):
    from safetensors.torch import load_file

    method, hp, _, adapted = _adapt("p_tuning", tiny_llama, sst2)
    d = _d(tiny_llama)
    assert method.delta_parameters(adapted) == P * d
    assert trainable_parameters(adapted) > P * d  # embedding + LSTM + MLP train
    method.save_delta(adapted, tmp_path)
    saved = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert list(saved) == ["prompt_embeddings"] and saved["prompt_embeddings"].numel() == P * d
    _, _, _, mlp = _adapt("p_tuning", tiny_llama, sst2, encoder="MLP", encoder_hidden_size=8)
    h = 8  # peft's MLP encoder: d -> h -> h -> d
    assert trainable_parameters(mlp) == P * d + (d * h + h) + (h * h + h) + (h * d + d)


def test_ensemble_trains_k_p_d_and_design_trains_nothing(tiny_llama, sst2):
    _, _, _, ensemble = _adapt("prompt_ensemble", tiny_llama, sst2, k=3)
    assert trainable_parameters(ensemble) == 3 * P * _d(tiny_llama)
    _, hp, _, designed = _adapt("prompt_design", tiny_llama, sst2)
    assert trainable_parameters(designed) == 0 and hp["steps"] == 0


# ------------------------------------------------------------------ frozen base
@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning", "prompt_ensemble"])
def test_base_is_bit_identical_after_training(name, tiny_llama, sst2):
    model, tokenizer, _ = tiny_llama
    before = {n: t.clone() for n, t in model.state_dict().items()}
    method, hp, ctx, adapted = _adapt(name, tiny_llama, sst2, **_k(name))
    hp = {**hp, "steps": 2, "lr": 10.0, "batch_size": 4, "max_len": 32}
    trainable = {n: p.detach().clone() for n, p in adapted.named_parameters() if p.requires_grad}
    result = train(
        adapted, method, hp, training_batches(tokenizer, sst2, "causal_lm", _examples(), 4, 32, 0), "causal_lm"
    )
    assert result.steps_done == 2 and result.diverged_at_step is None
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert any(not torch.equal(p, trainable[n]) for n, p in adapted.named_parameters() if p.requires_grad)


# ------------------------------------------------------------------ deltas
def _delta_files_bytes(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning", "prompt_ensemble"])
def test_delta_round_trip_and_size(name, models_cache, sst2, tmp_path, delta_round_trip):
    from peft import PeftModel

    from bench.harness.models import load_model

    loaded = load_model("tiny-llama", cache=models_cache)
    method, hp, ctx, adapted = _adapt(name, loaded, sst2, **_k(name))
    _perturb(adapted)
    logits, reloaded, base = delta_round_trip(method, hp, ctx, adapted, tmp_path, models_cache)
    assert torch.equal(logits, reloaded)
    assert not torch.allclose(base, logits[:, -base.shape[1] :])
    # on disk: 4 bytes a parameter plus the safetensors header and adapter_config.json per adapter
    params = method.delta_parameters(adapted)
    adapters = [tmp_path] if name != "prompt_ensemble" else sorted(tmp_path.glob("prompt_*"))
    assert 0 < _delta_files_bytes(tmp_path) - 4 * params < 1500 * len(adapters)
    # each peft adapter folder loads with plain peft and gives the same logits (the ensemble: its rows)
    for i, folder in enumerate(adapters):
        base, _, _ = load_model("tiny-llama", cache=models_cache)
        peft_model = PeftModel.from_pretrained(base, str(folder)).eval()
        with torch.no_grad():
            assert torch.allclose(
                peft_model(input_ids=torch.tensor(delta_round_trip.ids)).logits, logits[i : i + 1], atol=1e-5
            )


# ------------------------------------------------------------------ inits
def test_inits_produce_what_they_say(tiny_llama, sst2):
    from methods.prompt_tuning import frequent_token_ids

    model, tokenizer, _ = tiny_llama
    embeddings = model.get_input_embeddings().weight.detach().clone()
    frequent = embeddings[frequent_token_ids(tokenizer)]

    def prompt(init, seed=0, length=P):
        _, _, _, adapted = _adapt(
            "prompt_tuning", (copy.deepcopy(model), tokenizer, None), sst2, seed, init=init, num_virtual_tokens=length
        )
        return adapted.prompt_encoder["default"].embedding.weight.detach()

    def from_frequent(rows):
        return all((frequent == row).all(dim=1).any() for row in rows)

    uniform = prompt("random", length=200)
    assert uniform.min() >= -0.5 and uniform.max() <= 0.5 and uniform.min() < -0.45 and uniform.max() > 0.45
    assert abs(uniform.mean()) < 0.05 and abs(uniform.var() - 1 / 12) < 0.01  # U(-0.5, 0.5): var 1/12

    vocab = prompt("vocab")
    assert from_frequent(vocab) and len({tuple(r.tolist()) for r in vocab}) == P  # drawn without replacement
    assert torch.equal(vocab, prompt("vocab")) and not torch.equal(vocab, prompt("vocab", seed=1))

    labels = prompt("class_label")
    for row, word in zip(labels, sst2.verbalizer):  # multi-token words (byte-level here): mean embedding
        assert torch.allclose(row, embeddings[continuation_ids(tokenizer, word)].mean(dim=0))
    assert from_frequent(labels[len(sst2.verbalizer) :])


def test_token_inits_carry_the_embedding_modules_scale(tiny_llama, sst2):
    """Gemma multiplies by sqrt(d) inside its embedding module and peft prepends the prompt after that module: a
    class-label row is the label word as the text beside it arrives (the module's output), not the bare matrix row."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    _, tokenizer, _ = tiny_llama
    torch.manual_seed(0)
    gemma = Gemma3ForCausalLM(
        Gemma3TextConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
        )
    )
    module = gemma.get_input_embeddings()
    assert float(module.embed_scale) == pytest.approx(8.0)  # sqrt(64)
    _, _, _, adapted = _adapt("prompt_tuning", (gemma, tokenizer, None), sst2, init="class_label")
    rows = adapted.prompt_encoder["default"].embedding.weight.detach()
    for row, word in zip(rows, sst2.verbalizer):
        ids = torch.tensor(continuation_ids(tokenizer, word))
        with torch.no_grad():
            assert torch.allclose(row, module(ids).mean(dim=0), atol=1e-6)
            assert not torch.allclose(row, module.weight[ids].mean(dim=0), atol=1e-3)  # the bare rows: 8x smaller


def test_prompt_neighbours_find_the_tokens_a_prompt_is_made_of(sst2):
    from methods.prompt_tuning import prompt_neighbours

    class Vocabulary:  # decoded text per id, as a tokenizer's decode([id]) gives it
        tokens = [" positive", " Review", " xq", "Sent", "iment", *(f" w{i}" for i in range(45))]

        def __len__(self):
            return len(self.tokens)

        def decode(self, ids):
            return "".join(self.tokens[i] for i in ids)

    embeddings = torch.randn(len(Vocabulary.tokens) + 3, 16, generator=torch.Generator().manual_seed(0))  # + padding
    prompt = 2.5 * embeddings[[0, 1, 2]] + 1e-3 * torch.randn(3, 16)  # cosine ignores the scale
    out = prompt_neighbours(prompt, embeddings, Vocabulary(), sst2, k=3)
    assert [row[0] for row in out["tokens"]] == [" positive", " Review", " xq"]
    assert all(row[0] == pytest.approx(1.0, abs=1e-3) and row == sorted(row, reverse=True) for row in out["cosine"])
    assert out["label_words"] == ["negative", "positive"] and {"review", "sentiment"} <= set(out["task_words"])
    nearest = prompt_neighbours(prompt, embeddings, Vocabulary(), sst2, k=1)
    # a label word in row 0, a task word in row 1 (case-insensitive whole tokens), neither in row 2
    assert nearest["rows_with_label_word"] == 1 and nearest["rows_with_task_word"] == 1


def test_frequent_tokens_skip_special_and_byte_fallback(tiny_llama):
    from methods.prompt_tuning import frequent_token_ids

    _, tokenizer, _ = tiny_llama
    ids = frequent_token_ids(tokenizer)
    assert tokenizer.eos_token_id not in ids and len(ids) == min(
        5000, len(tokenizer) - len(tokenizer.added_tokens_decoder)
    )
    assert ids == sorted(ids)


# ------------------------------------------------------------------ scoring and generation with virtual tokens
@pytest.mark.parametrize("verbalizer", [(" negative", " positive"), ("0", "1")])
def test_prompt_tuned_rank_scores_match_brute_force(tiny_llama, sst2, verbalizer, brute_force_scores):
    task = dataclasses.replace(sst2, verbalizer=verbalizer)
    method, hp, _, adapted = _adapt("prompt_tuning", tiny_llama, task)
    _perturb(adapted)
    adapted.eval()
    tokenizer = tiny_llama[1]
    batched = rank_scores(
        adapted, tokenizer, task, _examples(), batch_size=3, max_len=128, extra_positions=method.extra_positions(hp)
    )
    assert torch.allclose(batched, brute_force_scores(adapted, tokenizer, task, _examples(), P), atol=1e-4)


def test_prompt_tuned_generation_batched_equals_one_at_a_time(tiny_llama, sst2):
    model, tokenizer, _ = tiny_llama
    with torch.no_grad():  # sharpen the random tiny model so that greedy outputs differ between prompts
        for parameter in model.parameters():
            parameter.mul_(20)
    method, hp, _, adapted = _adapt("prompt_tuning", tiny_llama, sst2, init="random")
    adapted.eval()
    prompts = [
        "name[The Eagle]\nDescription:",
        "a much longer prompt with many more bytes in it\nDescription:",
        "x\nDescription:",
        "y\nDescription:",
    ]
    extra = method.extra_positions(hp)
    batched = generate(adapted, tokenizer, prompts, max_new_tokens=6, batch_size=4, max_len=128, extra_positions=extra)
    single = [
        generate(adapted, tokenizer, [p], max_new_tokens=6, batch_size=1, max_len=128, extra_positions=extra)[0]
        for p in prompts
    ]
    assert batched == single and len(set(batched)) > 1


@pytest.mark.parametrize("name", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_kv_cached_generation_equals_recomputing_every_step(name, models_cache, sst2, tmp_path):
    """Greedy decoding with the KV cache scores every step as a full forward pass over the sequence so far:
    the virtual tokens are inserted once and never dropped (transformers 5.24 renamed the cache argument that
    peft 0.21 reads; bench.harness.method.peft_generation_compat). Also for the delta loaded back."""
    from bench.harness.models import load_model
    from bench.harness.tokens import prompt_ids

    loaded = load_model("tiny-llama", cache=models_cache)
    tokenizer = loaded[1]
    if name == "prefix_tuning":  # a prefix trained directly (no MLP); _adapt sets prompt lengths only
        method = get_method(name)
        hp = resolve_hparams(method, {"prefix_length": P, "mlp_hidden": 0})
        ctx = _ctx(tokenizer, sst2)
        adapted = method.apply(loaded[0], hp, ctx)
    else:
        method, hp, ctx, adapted = _adapt(name, loaded, sst2)
    _perturb(adapted)
    adapted.eval()
    # prompts of one length: left padding would change what the virtual tokens sit next to, not what the cache holds
    ids = torch.tensor([prompt_ids(tokenizer, "hello there"), prompt_ids(tokenizer, "what a film")])

    def cached(model):
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=4,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id,
            )
        return torch.stack(out.scores)

    def recomputed(model):  # greedy, every step a full forward pass over the sequence so far
        sequence, steps = ids, []
        with torch.no_grad():
            for _ in range(4):
                steps.append(model(input_ids=sequence, attention_mask=torch.ones_like(sequence)).logits[:, -1])
                sequence = torch.cat([sequence, steps[-1].argmax(-1, keepdim=True)], dim=1)
        return torch.stack(steps)

    scores = cached(adapted)
    assert torch.allclose(scores, recomputed(adapted), atol=1e-5, rtol=0)
    method.save_delta(adapted, tmp_path)
    reloaded = method.load_delta(load_model("tiny-llama", cache=models_cache)[0], hp, ctx, tmp_path).eval()
    assert torch.allclose(cached(reloaded), scores, atol=1e-5, rtol=0)


# ------------------------------------------------------------------ prompt design
def test_k_shot_prompt_holds_k_demonstrations_deterministically(tiny_llama, sst2):
    pool = [Example(fields={"sentence": f"train sentence {i}"}, label=i % 2) for i in range(20)]
    method, hp, ctx, _ = _adapt("prompt_design", tiny_llama, sst2, seed=3, train_examples=pool, shots=4)
    test = Example(fields={"sentence": "the test"}, label=0)
    task = FormattedTask(sst2, method, hp, ctx)
    text = task.prompt(test)
    blocks = text.split("\n\n")
    assert len(blocks) == 5 and blocks[-1] == sst2.prompt(test)
    shown = {sst2.prompt(ex) + sst2.target(ex) for ex in pool}
    assert all(block in shown for block in blocks[:-1]) and len(set(blocks[:-1])) == 4
    assert task.prompt(test) == text  # same seed, same prompt
    other = FormattedTask(sst2, method, hp, dataclasses.replace(ctx, seed=4)).prompt(test)
    assert other != text and other.endswith(sst2.prompt(test))
    zero = resolve_hparams(method, {})
    assert FormattedTask(sst2, method, zero, ctx).prompt(test) == sst2.prompt(test)
    with pytest.raises(BenchError, match=r"shots=30 exceeds the 20 training examples"):
        method.apply(tiny_llama[0], resolve_hparams(method, {"shots": 30}), ctx)


# ------------------------------------------------------------------ ensemble
def test_ensemble_one_pass_equals_separate_prompt_tuned_passes(tiny_llama, models_cache, sst2):
    from peft import PromptTuningConfig, get_peft_model

    from bench.harness.models import load_model

    method, hp, _, ensemble = _adapt("prompt_ensemble", tiny_llama, sst2, k=3)
    _perturb(ensemble)
    ensemble.eval()
    tokenizer = tiny_llama[1]
    calls = []
    hook = ensemble.base.register_forward_hook(
        lambda m, a, kw, out: calls.append(kw["inputs_embeds"].shape[0]), with_kwargs=True
    )
    examples = _examples()
    together = rank_scores(ensemble, tokenizer, sst2, examples, batch_size=16, max_len=128, extra_positions=P, copies=3)
    hook.remove()
    assert calls == [3 * 2 * len(examples)]  # one pass: k x (examples x 2 label prefixes) rows
    for i in range(3):
        base, _, _ = load_model("tiny-llama", cache=models_cache)
        single = get_peft_model(base, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=P))
        with torch.no_grad():
            single.prompt_encoder["default"].embedding.weight.copy_(ensemble.prompts[i])
        alone = rank_scores(single.eval(), tokenizer, sst2, examples, batch_size=2, max_len=128, extra_positions=P)
        assert torch.allclose(together[i], alone, atol=1e-4)
    metrics = method.score_outputs(method.evaluate(ensemble, tokenizer, sst2, examples, hp), sst2.metrics)
    assert metrics["accuracy_best_single"] >= metrics["accuracy_avg_single"]
    assert len(metrics["accuracy_singles"]) == 3


def test_vote_is_majority_with_mean_logprob_ties():
    from methods.prompt_ensemble import vote

    scores = torch.tensor(
        [  # 4 prompts x 3 examples x 2 labels
            [[0.0, -1.0], [-1.0, 0.0], [0.0, -1.0]],
            [[0.0, -1.0], [0.0, -1.0], [-5.0, 0.0]],
            [[-1.0, 0.0], [0.0, -1.0], [-5.0, 0.0]],
            [[-1.0, 0.0], [0.0, -1.0], [0.0, -5.0]],
        ]
    )
    # example 0: 2-2 tie, equal mean log-probs -> the first label; example 1: 3 votes to 1 for label 0;
    # example 2: 2-2 tie, mean log-prob -2.5 (label 0) against -1.5 (label 1) -> label 1
    assert vote(scores) == [0, 0, 1]


# ------------------------------------------------------------------ bad hyperparameters
@pytest.mark.parametrize(
    "method, hp, task, message",
    [
        ("prompt_tuning", {"num_virtual_tokens": 0}, "sst2", r"num_virtual_tokens=0 must be a positive integer"),
        ("prompt_tuning", {"init": "text"}, "sst2", r"init 'text' unknown: choose one of random, vocab, class_label"),
        (
            "prompt_ensemble",
            {"init": "zeros"},
            "sst2",
            r"init 'zeros' unknown: choose one of random, vocab, class_label",
        ),
        ("prompt_ensemble", {"k": 0}, "sst2", r"k=0 must be a positive number of prompts"),
        ("prompt_ensemble", {"num_virtual_tokens": -1}, "sst2", r"num_virtual_tokens=-1 must be a positive integer"),
        ("prompt_ensemble", {"grad_clip": 1.0}, "sst2", r"needs grad_clip=0"),
        ("prompt_ensemble", {}, "e2e", r"classification tasks only.*use prompt_tuning"),
        ("p_tuning", {"encoder": "gru"}, "sst2", r"encoder 'gru' unknown: choose one of LSTM, MLP"),
        ("p_tuning", {"num_virtual_tokens": 0}, "sst2", r"num_virtual_tokens=0 must be a positive integer"),
        ("prompt_design", {"shots": -1}, "sst2", r"shots=-1 must be 0"),
        ("prompt_design", {"steps": 5}, "sst2", r"trains nothing: use steps=0"),
    ],
)
def test_bad_hyperparameters_are_one_line_at_planning(method, hp, task, message, models_cache):
    config = CellConfig(task=task, model="tiny-llama", method=method, train_size=16, hp=hp)
    with pytest.raises(BenchError, match=message) as error:
        plan_cell(config)
    assert len(str(error.value).splitlines()) == 1


def test_design_and_ensemble_refuse_encoders(models_cache):
    for method in ("prompt_design", "prompt_ensemble"):
        with pytest.raises(BenchError, match=r"does not support encoder models"):
            plan_cell(CellConfig(task="mrpc", model="tiny-bert", method=method, train_size=16))


# ------------------------------------------------------------------ one cell per method
CELL_HP = {"steps": 2, "batch_size": 4, "max_len": 48, "num_virtual_tokens": P}


@pytest.mark.parametrize(
    "method, hp",
    [
        ("prompt_tuning", CELL_HP),
        ("p_tuning", CELL_HP),
        ("prompt_ensemble", {**CELL_HP, "k": 2}),
        ("prompt_design", {"shots": 2, "max_len": 128}),
    ],
)
def test_cell_record(method, hp, models_cache, tmp_path, tiny_llama, rescoring_gives_the_record):
    config = CellConfig(
        task="sst2", model="tiny-llama", method=method, train_size=16, seed=0, hp=hp, eval_limit=8, shifts=()
    )
    record = run_cell(config, tmp_path, threads=1)
    assert record["status"] == "ok" and record["metrics"]["sst2"]["n"] == 8
    rescoring_gives_the_record(record, tmp_path)  # the ensemble's vote, single prompts and mean log-prob too
    assert 0 <= record["metrics"]["sst2"]["accuracy"] <= 100
    cost, d = record["cost"], tiny_llama[0].config.hidden_size
    if method == "prompt_design":
        assert cost["trainable_params"] == cost["delta_params"] == cost["delta_bytes"] == 0
        assert record["train"]["steps"] == 0
        return
    assert len(record["train"]["losses"]) == 2
    k = hp.get("k", 1)
    assert cost["delta_params"] == k * P * d
    assert cost["trainable_params"] > k * P * d if method == "p_tuning" else cost["trainable_params"] == k * P * d
    assert 4 * cost["delta_params"] < cost["delta_bytes"] < 4 * cost["delta_params"] + 1500 * k
    if method == "prompt_ensemble":
        metrics = record["metrics"]["sst2"]
        assert {"accuracy_avg_single", "accuracy_best_single", "accuracy_mean_logprob"} <= set(metrics)
    if method == "prompt_tuning":  # Lester §7 analysis: P rows of 5 neighbours each, counts within range
        neighbours = record["analysis"]["prompt_neighbours"]
        assert len(neighbours["tokens"]) == len(neighbours["cosine"]) == P
        assert all(len(row) == 5 and row == sorted(row, reverse=True) for row in neighbours["cosine"])
        assert neighbours["label_words"] == ["negative", "positive"]
        assert {"review", "sentiment"} <= set(neighbours["task_words"])
        assert 0 <= neighbours["rows_with_label_word"] <= P and 0 <= neighbours["rows_with_task_word"] <= P
    else:
        assert "analysis" not in record


def test_encoder_cell_with_prompt_tuning(models_cache, tmp_path):
    record = run_cell(
        CellConfig(
            task="mrpc",
            model="tiny-bert",
            method="prompt_tuning",
            train_size=16,
            hp={**CELL_HP, "init": "vocab"},
            eval_limit=8,
            shifts=(),
        ),
        tmp_path,
        threads=1,
    )
    assert record["status"] == "ok" and {"accuracy", "f1"} <= set(record["metrics"]["mrpc"])
    assert record["cost"]["trainable_params"] == P * 32 + (32 * 2 + 2)  # prompt + the classifier head


def test_generation_cell_with_prompt_tuning(models_cache, tmp_path):
    record = run_cell(
        CellConfig(
            task="e2e",
            model="tiny-llama",
            method="prompt_tuning",
            train_size=8,
            hp={"steps": 1, "batch_size": 2, "max_len": 64, "num_virtual_tokens": P},
            eval_limit=4,
            shifts=(),
        ),
        tmp_path,
        threads=1,
    )
    assert record["status"] == "ok" and {"bleu", "rouge_l"} <= set(record["metrics"]["e2e"])
