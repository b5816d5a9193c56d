"""Encoder-decoder models (tiny-t5, tiny-bart; bench/harness/kinds/seq2seq.py): special ids, the training loss against
the model's own, rank scoring against one (example, label) pair at a time, batched and KV-cached generation against
unbatched and recomputed decoding, and every method's closed-form parameter counts, frozen base and delta round trip."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.api.errors import BenchError
from bench.grid.plan import Cell, check_cells
from bench.harness.batches import training_batches
from bench.harness.kinds.seq2seq import decoder_input_ids, generate, rank_scores, step_loss
from bench.harness.method import CellContext, get_method, resolve_hparams, trainable_parameters
from bench.harness.tasks import data_root, train_examples
from bench.harness.tokens import prompt_ids
from bench.harness.train import train

MODELS = ["tiny-t5", "tiny-bart"]
# both: d 32, 2 encoder + 2 decoder blocks, 4 heads of 8 (d_kv 32), d_ff 64 (config/models.yaml)
D, LE, LD, D_KV, D_FF = 32, 2, 2, 32, 64


SMALL = {
    "prompt_tuning": {"num_virtual_tokens": 3},
    "p_tuning": {"num_virtual_tokens": 3, "encoder_hidden_size": 8},
    "prefix_tuning": {"prefix_length": 3, "mlp_hidden": 0, "init": "random"},
}


def _load(name, cache):
    from bench.harness.models import load_model

    return load_model(name, cache=cache)


def _ctx(tokenizer, task, examples=()):
    return CellContext(task=task, model_kind="seq2seq", tokenizer=tokenizer, train_examples=list(examples))


def _perturb(model):
    """Move every trainable tensor off its init, so that a method's delta changes what the model computes."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.5)


@pytest.mark.parametrize(
    "name, ids", [("tiny-t5", dict(pad=0, eos=1, start=0, bos=None)), ("tiny-bart", dict(pad=1, eos=2, start=2, bos=0))]
)
def test_stand_ins_have_their_familys_special_ids(name, ids, models_cache):
    model, tokenizer, _ = _load(name, models_cache)
    config = model.config
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id) == (
        ids["pad"],
        ids["eos"],
        ids["bos"],
    )
    assert (config.pad_token_id, config.eos_token_id, config.decoder_start_token_id) == (
        ids["pad"],
        ids["eos"],
        ids["start"],
    )
    encoded = prompt_ids(tokenizer, "hi")
    assert (
        encoded[-1] == ids["eos"]
        and encoded[:-1]
        == ([ids["bos"]] if ids["bos"] is not None else []) + tokenizer("hi", add_special_tokens=False)["input_ids"]
    )
    assert model.config.is_encoder_decoder


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("task_name", ["sst2", "e2e"])
def test_loss_is_the_models_own_with_its_gradients(name, task_name, models_cache):
    from bench.harness.tasks import get_task

    task = get_task(task_name)
    model, tokenizer, _ = _load(name, models_cache)
    model.train()
    examples = train_examples(task, 6, 0, data_root(None))
    batch = next(training_batches(tokenizer, task, "seq2seq", examples, 6, 512, 0, group_by_length=False))
    assert batch["labels"].shape == batch["decoder_attention_mask"].shape
    assert (batch["labels"] == -100).any() == (task_name == "e2e")  # SST-2's two label words are equally long
    torch.manual_seed(0)
    ours, _ = step_loss(model, get_method("full_ft"), batch)
    ours_grads = torch.autograd.grad(ours, list(model.parameters()), allow_unused=True)
    torch.manual_seed(0)
    theirs = model(**batch).loss  # the model shifts the labels itself
    their_grads = torch.autograd.grad(theirs, list(model.parameters()), allow_unused=True)
    assert abs(ours.item() - theirs.item()) <= 1e-6 * abs(theirs.item())
    for mine, reference in zip(ours_grads, their_grads):
        assert (mine is None) == (reference is None)
        if mine is not None:
            assert torch.allclose(mine, reference, rtol=1e-5, atol=1e-7)


def _one_pair_at_a_time(model, tokenizer, task, examples):
    out = torch.zeros(len(examples), len(task.verbalizer))
    with torch.no_grad():
        for i, ex in enumerate(examples):
            ids = torch.tensor([prompt_ids(tokenizer, task.prompt(ex))])
            for j, word in enumerate(task.verbalizer):
                label = torch.tensor(
                    [tokenizer(word, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]]
                )
                logits = model(input_ids=ids, decoder_input_ids=decoder_input_ids(model, label)).logits
                out[i, j] = torch.log_softmax(logits[0], -1).gather(-1, label[0, :, None]).sum()
    return out


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method_name", ["full_ft", "prompt_tuning", "prefix_tuning"])
def test_rank_scores_equal_scoring_one_pair_at_a_time(name, method_name, models_cache, sst2):
    model, tokenizer, _ = _load(name, models_cache)
    examples = train_examples(sst2, 5, 0, data_root(None))
    method = get_method(method_name)
    hp = resolve_hparams(method, SMALL.get(method_name, {}))
    adapted = method.apply(model, hp, _ctx(tokenizer, sst2)).eval()
    _perturb(adapted)
    batched = rank_scores(adapted, tokenizer, sst2, examples, batch_size=4, max_len=512)  # padded rows, none cut
    assert torch.allclose(batched, _one_pair_at_a_time(adapted, tokenizer, sst2, examples), atol=1e-4, rtol=1e-6)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method_name", ["prompt_tuning", "prefix_tuning"])
def test_batched_generation_equals_one_at_a_time(name, method_name, models_cache, e2e):
    model, tokenizer, _ = _load(name, models_cache)
    method = get_method(method_name)
    adapted = method.apply(model, resolve_hparams(method, SMALL[method_name]), _ctx(tokenizer, e2e)).eval()
    _perturb(adapted)
    prompts = [e2e.prompt(ex) for ex in train_examples(e2e, 5, 0, data_root(None))]
    for beams in (1, 2):
        batched = generate(adapted, tokenizer, prompts, max_new_tokens=6, batch_size=4, max_len=128, num_beams=beams)
        single = [
            generate(adapted, tokenizer, [p], max_new_tokens=6, batch_size=1, max_len=128, num_beams=beams)[0]
            for p in prompts
        ]
        assert batched == single


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method_name", ["prompt_tuning", "p_tuning", "prefix_tuning"])
def test_kv_cached_generation_equals_recomputing_every_step(name, method_name, models_cache, sst2, tmp_path):
    """Greedy decoding with the KV cache scores every step as a full forward pass over the decoder's sequence so
    far (prompt or prefix inserted once, never dropped: bench.harness.method.peft_generation_compat); also reloaded."""
    model, tokenizer, _ = _load(name, models_cache)
    method = get_method(method_name)
    hp = resolve_hparams(method, SMALL[method_name])
    ctx = _ctx(tokenizer, sst2)
    adapted = method.apply(model, hp, ctx)
    _perturb(adapted)
    adapted.eval()
    ids = torch.tensor([prompt_ids(tokenizer, "hello there"), prompt_ids(tokenizer, "what a film")])

    def cached(peft_model):
        with torch.no_grad():
            out = peft_model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=4,
                output_scores=True,
                return_dict_in_generate=True,
                pad_token_id=tokenizer.pad_token_id,
                forced_eos_token_id=None,
                eos_token_id=None,
            )
        return torch.stack(out.scores)

    def recomputed(peft_model):
        sequence = torch.full((len(ids), 1), peft_model.config.decoder_start_token_id)
        steps = []
        with torch.no_grad():
            for _ in range(4):
                steps.append(
                    peft_model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=sequence).logits[
                        :, -1
                    ]
                )
                sequence = torch.cat([sequence, steps[-1].argmax(-1, keepdim=True)], dim=1)
        return torch.stack(steps)

    scores = cached(adapted)
    assert torch.allclose(scores, recomputed(adapted), atol=1e-5, rtol=0)
    base = _load(name, models_cache)[0]
    assert not torch.allclose(scores, recomputed(base), atol=1e-3)  # the prompt or prefix is in them
    method.save_delta(adapted, tmp_path)
    reloaded = method.load_delta(_load(name, models_cache)[0], hp, ctx, tmp_path).eval()
    assert torch.allclose(cached(reloaded), scores, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_prefixes_reach_all_three_attention_kinds(name, models_cache, sst2):
    """Li & Liang's three prefix sets (methods/_seq2seq_prefix.py): the encoder's changes the encoder's output, the
    decoder's self-attention and cross-attention prefixes change the logits but not the encoder's output; the
    decoder stays causal with its prefix (a position's logits do not see later positions)."""
    model, tokenizer, _ = _load(name, models_cache)
    base_encoder = _encoded(model, tokenizer)
    method = get_method("prefix_tuning")
    adapted = method.apply(model, resolve_hparams(method, SMALL["prefix_tuning"]), _ctx(tokenizer, sst2)).eval()
    assert not torch.allclose(_encoded(adapted, tokenizer), base_encoder, atol=1e-4)
    generator = torch.Generator().manual_seed(2)
    for kind in ("encoder", "decoder", "cross"):
        encoded, logits = _encoded(adapted, tokenizer), _logits(adapted, tokenizer)
        table = adapted.prompt_encoder.sets[kind].table
        with torch.no_grad():
            table.add_(torch.randn(table.shape, generator=generator))
        assert torch.allclose(_encoded(adapted, tokenizer), encoded, atol=1e-6) == (kind != "encoder"), kind
        assert not torch.allclose(_logits(adapted, tokenizer), logits, atol=1e-6, rtol=0), kind  # tiny-bart: ~1e-5
    full, shorter = _logits(adapted, tokenizer), _logits(adapted, tokenizer, decoder=2)
    assert torch.allclose(full[:, :2], shorter, atol=1e-5, rtol=0)


def _encoded(model, tokenizer):
    ids = torch.tensor([prompt_ids(tokenizer, "the food was fine")])
    with torch.no_grad():
        return model.get_encoder()(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state


P, H, R, K = 3, 8, 4, 1
CASES = {  # method -> (overrides, trainable while training, parameters in the delta), in closed form
    "lora": ({"r": R}, (2 * LE + 4 * LD) * R * (D + D_KV)),  # q, v of self-attention and the decoder's cross-attention
    "ia3": ({}, LE * (2 * D_KV + D_FF) + LD * (4 * D_KV + D_FF)),  # k, v (+ cross k, v) and the d_ff activations
    "adapter": ({}, (LE + LD) * 2 * (2 * D * (D // 16) + D + D // 16)),  # after self-attention and feed-forward
    "prompt_tuning": ({"num_virtual_tokens": P}, P * D),  # one p x d table, before the encoder's input
    # encoder self-, decoder self- and cross-attention prefixes, each with its MLP (E, Linear, tanh, Linear) while
    # training; the delta keeps the three tables (Li & Liang)
    "prefix_tuning": (
        {"prefix_length": P, "mlp_hidden": H, "init": "random"},
        (sum(P * D + D * H + H + H * L * 2 * D_KV + L * 2 * D_KV for L in (LE, LD, LD)), P * 2 * D_KV * (LE + 2 * LD)),
    ),
    "p_tuning": (
        {"num_virtual_tokens": P, "encoder": "MLP", "encoder_hidden_size": H},
        (P * D + (D * H + H) + (H * H + H) + (H * D + D), P * D),
    ),
}


def _logits(model, tokenizer, decoder=3):
    ids = torch.tensor([prompt_ids(tokenizer, "the food was fine")])
    decoder_ids = torch.tensor([[model.config.decoder_start_token_id, 70, 71][:decoder]])
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=torch.ones_like(ids), decoder_input_ids=decoder_ids).logits


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method_name", sorted(CASES) + ["ft_top_k", "bitfit"])
def test_counts_frozen_base_and_delta_round_trip(name, method_name, models_cache, sst2, tmp_path):
    if method_name == "bitfit" and name == "tiny-t5":
        pytest.skip("T5 has no biases: refused at plan time (test_matrix)")
    model, tokenizer, _ = _load(name, models_cache)
    examples = train_examples(sst2, 8, 0, data_root(None))
    method = get_method(method_name)
    overrides, counts = CASES.get(method_name, ({"k": K} if method_name == "ft_top_k" else {}, None))
    hp = resolve_hparams(method, {**overrides, "steps": 2, "lr": 0.1, "batch_size": 4, "max_len": 48, "grad_clip": 0.0})
    ctx = _ctx(tokenizer, sst2, examples)
    originals = list(model.named_parameters())
    snapshot = [p.detach().clone() for _, p in originals]
    torch.manual_seed(0)
    adapted = method.apply(model, hp, ctx)
    trainable, delta = counts if isinstance(counts, tuple) else (counts, counts)
    trained = {n for n, p in originals if p.requires_grad}
    if method_name == "ft_top_k":  # the top decoder block and the decoder's final norm (T5; BART has none)
        top = {"tiny-t5": ("decoder.block.1.", "decoder.final_layer_norm."), "tiny-bart": ("model.decoder.layers.1.",)}
        assert trained == {n for n, _ in originals if n.startswith(top[name])}
        trainable = delta = sum(p.numel() for n, p in originals if n in trained)
    elif method_name == "bitfit":
        assert trained == {n for n, _ in originals if n.endswith(".bias")}
        trainable = delta = sum(p.numel() for n, p in originals if n in trained)
    assert trainable_parameters(adapted) == trainable
    assert method.delta_parameters(adapted) == delta

    result = train(
        adapted, method, hp, training_batches(tokenizer, sst2, "seq2seq", examples, 4, 48, 0), "seq2seq", "test"
    )
    assert result.steps_done == 2 and result.diverged_at_step is None
    changed = {n for (n, p), before in zip(originals, snapshot) if not torch.equal(p, before)}
    assert changed <= trained  # the rest of the base is bit-identical
    assert (changed == set()) == (method_name not in ("ft_top_k", "bitfit"))

    method.save_delta(adapted, tmp_path)
    weights = [f for f in tmp_path.rglob("*.safetensors")]
    assert sum(t.numel() for f in weights for t in load_file(str(f)).values()) == delta
    adapted.eval()
    after = _logits(adapted, tokenizer)
    reloaded = method.load_delta(_load(name, models_cache)[0], hp, ctx, tmp_path).eval()
    assert torch.allclose(after, _logits(reloaded, tokenizer), atol=1e-6, rtol=0)
    base = _load(name, models_cache)[0]
    assert not torch.allclose(after, _logits(base, tokenizer), atol=1e-4)
    if method_name in CASES and method_name not in ("adapter", "prefix_tuning"):  # peft's: plain peft checkpoints
        from peft import PeftModel

        plain = PeftModel.from_pretrained(base, str(tmp_path)).eval()
        assert type(plain).__name__ == "PeftModelForSeq2SeqLM"
        assert torch.allclose(after, _logits(plain, tokenizer), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_ensemble_one_pass_equals_separate_prompt_tuned_passes(name, models_cache, sst2):
    ensemble, tuning = get_method("prompt_ensemble"), get_method("prompt_tuning")
    model, tokenizer, _ = _load(name, models_cache)
    hp = resolve_hparams(ensemble, {"num_virtual_tokens": P, "k": 2})
    adapted = ensemble.apply(model, hp, _ctx(tokenizer, sst2))
    _perturb(adapted)
    examples = train_examples(sst2, 4, 0, data_root(None))
    rows = ensemble.evaluate(adapted, tokenizer, sst2, examples, hp)
    for i, prompt in enumerate(adapted.prompts):
        single = tuning.apply(
            _load(name, models_cache)[0], resolve_hparams(tuning, {"num_virtual_tokens": P}), _ctx(tokenizer, sst2)
        ).eval()
        with torch.no_grad():
            single.prompt_encoder["default"].embedding.weight.copy_(prompt)
        scores = rank_scores(single, tokenizer, sst2, examples, batch_size=8, max_len=128)
        assert [row["preds"][i] for row in rows] == scores.argmax(-1).tolist()


def test_plan_time_refusals(models_cache):
    def cell(method, model, **hp):
        return Cell("g", "sst2", model, method, 4, 0, {"steps": 2, **hp}, 2, ())

    with pytest.raises(BenchError, match=r"prefix_tuning init=real_tokens needs a causal LM: .*use init=random$"):
        check_cells([cell("prefix_tuning", "tiny-bart")])
    with pytest.raises(BenchError, match=r"bitfit needs bias terms: t5 models have none"):
        check_cells([cell("bitfit", "t5-xl-lm-adapt")])  # a hub model: planning loads nothing
    check_cells([cell("lora", "bart-large"), cell("prompt_tuning", "t5-xl-lm-adapt")])
    import dataclasses

    from bench.harness.models import architecture

    pegasus = dataclasses.replace(architecture("bart"), model_type="pegasus")  # a family added to models.yaml
    with pytest.raises(BenchError, match=r"knows t5 and bart attention, not pegasus: use lora or prompt_tuning$"):
        get_method("prefix_tuning").check_architecture({}, pegasus)


@pytest.mark.parametrize(
    "name, encoder_prefix",
    [
        ("tiny-t5", ("encoder.block.", "encoder.final_layer_norm.")),
        (
            "tiny-bart",
            ("model.encoder.embed_positions.", "model.encoder.layers.", "model.encoder.layernorm_embedding."),
        ),
    ],
)
def test_flops_count_each_position_through_its_own_stack(name, encoder_prefix, models_cache):
    from bench.harness.flops import (
        encoder_parameters,
        flops_per_step,
        lm_head_parameters,
        token_path_parameters,
        train_flops,
    )

    model, _, _ = _load(name, models_cache)
    encoder = sum(p.numel() for n, p in model.named_parameters() if n.startswith(encoder_prefix))
    model.requires_grad_(False)
    assert encoder_parameters(model) == (encoder, 0)
    model.requires_grad_(True)
    assert encoder_parameters(model) == (encoder, encoder)
    total, _ = token_path_parameters(model)
    head = lm_head_parameters(model)
    # 100 encoder tokens, 20 decoder tokens, 30 head positions, full fine-tuning: 6 FLOPs per weight and position
    assert train_flops(model, True, 120, 100, 0, 4, 30) == 6 * (
        encoder * 100 + (total - encoder - head) * 20 + head * 30
    )
    llama, _, _ = _load("tiny-llama", models_cache)
    assert encoder_parameters(llama) == (0, 0)
    llama_total, llama_trainable = token_path_parameters(llama)
    assert train_flops(llama, False, 50, 0, 2, 4, 5) == flops_per_step(
        llama_total, False, 50, 2, 4, llama_trainable, lm_head_parameters(llama), 5
    )


def test_untied_t5_head_loads_untied(models_cache, tmp_path, monkeypatch):
    """A T5 v1.1 / LM-adapt checkpoint (untied lm_head, as Lester et al.'s) keeps its own head through our loader
    (the hub source's save + load_model), although transformers 5.24's T5Config sets tie_word_embeddings."""
    import dataclasses

    from transformers import T5ForConditionalGeneration

    import bench.harness.models as models

    tiny, tokenizer, _ = _load("tiny-t5", models_cache)
    config = type(tiny.config).from_dict(tiny.config.to_dict() | {"tie_word_embeddings": False})
    T5ForConditionalGeneration(config).save_pretrained(tmp_path / "hub")
    tokenizer.save_pretrained(tmp_path / "hub")
    weights = tmp_path / "hub" / "model.safetensors"
    tensors = load_file(str(weights))
    head = torch.randn(tensors["shared.weight"].shape, generator=torch.Generator().manual_seed(3))
    save_file(tensors | {"lm_head.weight": head}, str(weights), metadata={"format": "pt"})  # as v1.1 checkpoints hold
    spec = dataclasses.replace(models.get_model_spec("t5-xl-lm-adapt"), hub_id=str(tmp_path / "hub"))
    monkeypatch.setattr(models, "get_model_spec", lambda name: spec)
    loaded, _, _ = models.load_model("t5-xl-lm-adapt", cache=tmp_path / "cache")
    assert torch.equal(loaded.lm_head.weight, head)
    assert not torch.equal(loaded.lm_head.weight, loaded.shared.weight)
    assert loaded.lm_head.weight.data_ptr() != loaded.shared.weight.data_ptr()
