"""The method interface: registry, hyperparameters, and each method's parameter count and delta round trip."""

import pytest
import torch

from bench.api.errors import BenchError
from bench.harness.method import CellContext, get_method, method_names, resolve_hparams, trainable_parameters


def test_registry_lists_method_files():
    assert {"full_ft", "lora"} <= set(method_names())


def test_unknown_method_names_the_choices():
    with pytest.raises(BenchError, match=r"unknown method 'dora'.*full_ft.*lora"):
        get_method("dora")


def test_hparams_layering_and_coercion():
    lora = get_method("lora")
    hp = resolve_hparams(lora, {"r": "8", "lr": "1e-3", "steps": "5"})
    assert hp["r"] == 8 and hp["lr"] == 1e-3 and hp["steps"] == 5 and hp["alpha"] == 8
    assert resolve_hparams(get_method("full_ft"), {})["lr"] == 2e-5  # the method's own default


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"rank": 4}, r"'rank' is not known to method lora: valid are .*\br\b"),
        ({"r": "four"}, r"r='four' must be of type int"),
        ({"r": 2.5}, r"r=2.5 must be of type int"),
        ({"lr": "fast"}, r"lr='fast' must be of type float"),
    ],
)
def test_bad_hparams_are_one_clear_line(overrides, message):
    with pytest.raises(BenchError, match=message):
        resolve_hparams(get_method("lora"), overrides)


def _ctx(tokenizer, task):
    return CellContext(task=task, model_kind="causal_lm", tokenizer=tokenizer)


def test_lora_trainable_params_closed_form(tiny_llama, sst2):
    model, tokenizer, _ = tiny_llama
    config = model.config
    lora = get_method("lora")
    hp = resolve_hparams(lora, {"r": 4})
    adapted = lora.apply(model, hp, _ctx(tokenizer, sst2))
    head_dim = config.hidden_size // config.num_attention_heads
    d_q = config.num_attention_heads * head_dim
    d_v = config.num_key_value_heads * head_dim
    expected = config.num_hidden_layers * 4 * ((config.hidden_size + d_q) + (config.hidden_size + d_v))
    assert trainable_parameters(adapted) == expected


def test_lora_absent_target_module_lists_valid(tiny_llama, sst2):
    model, tokenizer, _ = tiny_llama
    lora = get_method("lora")
    with pytest.raises(BenchError, match=r"\['query'\] not in llama models: choose from q_proj, k_proj"):
        lora.apply(model, resolve_hparams(lora, {"target_modules": "query"}), _ctx(tokenizer, sst2))


def test_full_ft_trains_everything(tiny_llama, sst2):
    model, tokenizer, _ = tiny_llama
    adapted = get_method("full_ft").apply(model, {}, _ctx(tokenizer, sst2))
    assert trainable_parameters(adapted) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["lora", "full_ft"])
def test_delta_round_trip_gives_identical_logits(name, models_cache, sst2, tmp_path, delta_round_trip):
    from bench.harness.models import load_model

    method = get_method(name)
    hp = resolve_hparams(method, {})
    model, tokenizer, _ = load_model("tiny-llama", cache=models_cache)
    ctx = _ctx(tokenizer, sst2)
    torch.manual_seed(0)
    adapted = method.apply(model, hp, ctx)
    with torch.no_grad():  # move the delta away from its init so the round trip is not trivially equal
        for parameter in adapted.parameters():
            if parameter.requires_grad:
                parameter.add_(0.05 * torch.randn_like(parameter))
    ours, reloaded, base = delta_round_trip(method, hp, ctx, adapted, tmp_path, models_cache)
    assert torch.equal(ours, reloaded)
    assert not torch.allclose(base, reloaded)
    if name == "lora":
        from peft import PeftModel

        base, _, _ = load_model("tiny-llama", cache=models_cache)
        assert isinstance(PeftModel.from_pretrained(base, str(tmp_path)), PeftModel)
