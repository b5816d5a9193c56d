"""bench/harness/generation.py: greedy decoding that drops finished rows gives `model.generate`'s tokens, on every tiny
architecture with several methods, and (slow) on SmolLM2-135M for E2E and WebNLG prompts.

Tiny random models hardly ever emit their end token, so each test decodes once without one and then names as end
token the token whose first occurrence falls on the most different steps: rows then end at different steps and
the loop drops them one by one, which is what has to stay exact. The weights are drawn wider than their init
(std 0.3; Gemma 0.05) so that greedy outputs vary between prompts instead of repeating one token."""

import collections

import pytest
import torch

from bench.harness.generation import decode, unsupported
from bench.harness.method import CellContext, get_method, resolve_hparams
from bench.harness.tasks import eval_examples, get_task
from bench.harness.tokens import pad, prompt_ids

CAUSAL = ["tiny-llama", "tiny-gemma3", "tiny-qwen2", "tiny-gpt2"]
SEQ2SEQ = ["tiny-t5", "tiny-bart"]
HP = {
    "full_ft": {},
    "lora": {"r": 4, "alpha": 8},
    "ia3": {},
    "prompt_tuning": {"num_virtual_tokens": 3},
    "p_tuning": {"num_virtual_tokens": 3, "encoder_hidden_size": 8},
    "prefix_tuning": {"prefix_length": 3, "mlp_hidden": 0, "init": "random"},
}
NEW = 16
STD = {"tiny-gemma3": 0.05}  # Gemma's sqrt(d)-scaled, tied embeddings repeat one token at wider weights


def _widen(model, std=0.3):
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0, std)


def _adapted(name, method_name, models_cache, task):
    from bench.harness.models import load_model

    model, tokenizer, _ = load_model(name, cache=models_cache)
    _widen(model, STD.get(name, 0.3))
    method = get_method(method_name)
    hp = resolve_hparams(method, HP[method_name])
    ctx = CellContext(
        task=task,
        model_kind="seq2seq" if model.config.is_encoder_decoder else "causal_lm",
        tokenizer=tokenizer,
        train_examples=[],
        seed=0,
    )
    torch.manual_seed(1)
    model = method.apply(model, hp, ctx)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():  # the method's own parameters off their init (LoRA's B starts at zero)
        for parameter in model.parameters():
            if parameter.requires_grad and method_name != "full_ft":
                parameter.add_(torch.randn(parameter.shape, generator=generator) * STD.get(name, 0.3))
    return model.eval(), tokenizer


def _batch(tokenizer, task, encoder_decoder: bool, equal_length: bool, n=12):
    ids = [prompt_ids(tokenizer, task.prompt(ex))[-48:] for ex in eval_examples(task, task.name, n)]
    if equal_length:  # soft prompts: the harness batches prompts of one length (bench.harness.evaluation.generate)
        ids = [row[-min(map(len, ids)) :] for row in ids]
    return pad(ids, tokenizer.pad_token_id, side="right" if encoder_decoder else "left")


def _spread_end_token(generated, start: int, pad_id: int) -> int:
    """The token whose first occurrence in each row falls on the most different steps."""
    first = collections.defaultdict(list)
    for row in generated[:, start:].tolist():
        seen = {}
        for step, token in enumerate(row):
            seen.setdefault(token, step)
        for token, step in seen.items():
            first[token].append(step)
    return max((t for t in first if t != pad_id), key=lambda t: (len(set(first[t])), len(first[t])))


def _check_equal(model, tokenizer, input_ids, attention_mask, new=NEW):
    start = 1 if model.config.is_encoder_decoder else input_ids.shape[1]
    probe = decode(model, input_ids, attention_mask, new, tokenizer.pad_token_id, -1, drop_finished=False)
    end = _spread_end_token(probe, start, tokenizer.pad_token_id)
    today = decode(model, input_ids, attention_mask, new, tokenizer.pad_token_id, end, drop_finished=False)
    ours = decode(model, input_ids, attention_mask, new, tokenizer.pad_token_id, end)
    ended = [int((row == end).nonzero()[0]) for row in today[:, start:] if (row == end).any()]
    assert len(set(ended)) >= 2, f"the test's end token {end} ends rows at {ended}: too few distinct steps"
    assert torch.equal(ours, today), (ours[:, start:], today[:, start:])
    return ended


@pytest.mark.parametrize("method_name", ["full_ft", "lora", "ia3", "prompt_tuning", "p_tuning", "prefix_tuning"])
@pytest.mark.parametrize("name", CAUSAL)
def test_dropping_finished_rows_gives_generates_tokens_causal(name, method_name, models_cache, e2e):
    model, tokenizer = _adapted(name, method_name, models_cache, e2e)
    assert unsupported(model) is None
    soft_prompt = method_name in ("prompt_tuning", "p_tuning")
    input_ids, attention_mask = _batch(tokenizer, e2e, False, soft_prompt)
    _check_equal(model, tokenizer, input_ids, attention_mask)


@pytest.mark.parametrize("method_name", ["full_ft", "lora", "prefix_tuning"])
@pytest.mark.parametrize("name", SEQ2SEQ)
def test_dropping_finished_rows_gives_generates_tokens_seq2seq(name, method_name, models_cache, e2e):
    model, tokenizer = _adapted(name, method_name, models_cache, e2e)
    assert unsupported(model) is None
    _check_equal(model, tokenizer, *_batch(tokenizer, e2e, True, False))


@pytest.mark.parametrize("name", SEQ2SEQ)
def test_soft_prompts_on_encoder_decoders_and_beams_take_generate(name, models_cache, e2e):
    """The cases the loop hands to `model.generate`: their outputs are `generate`'s by construction."""
    model, tokenizer = _adapted(name, "prompt_tuning", models_cache, e2e)
    assert "encoder-decoder" in unsupported(model)
    assert unsupported(model, num_beams=5) == "beam search (num_beams=5)"
    input_ids, attention_mask = _batch(tokenizer, e2e, True, False, n=4)
    assert torch.equal(
        decode(model, input_ids, attention_mask, 6, tokenizer.pad_token_id, tokenizer.eos_token_id),
        decode(
            model, input_ids, attention_mask, 6, tokenizer.pad_token_id, tokenizer.eos_token_id, drop_finished=False
        ),
    )


def test_forced_end_token_and_processors(models_cache, e2e):
    """BART's generation config forces the end token at the last step: the loop does too; a config asking for a
    logits processor the loop lacks (n-gram blocking) sends the call to `generate`."""
    model, tokenizer = _adapted("tiny-bart", "full_ft", models_cache, e2e)
    assert model.generation_config.forced_eos_token_id == tokenizer.eos_token_id
    input_ids, attention_mask = _batch(tokenizer, e2e, True, False, n=6)
    out = decode(model, input_ids, attention_mask, 5, tokenizer.pad_token_id, -1)
    assert out.shape[1] == 6 and (out[:, -1] == tokenizer.eos_token_id).all()
    assert torch.equal(
        out, decode(model, input_ids, attention_mask, 5, tokenizer.pad_token_id, -1, drop_finished=False)
    )
    model.generation_config.no_repeat_ngram_size = 3
    assert unsupported(model) == "generation config sets no_repeat_ngram_size=3"


def test_harness_generate_equal_and_not_a_wrapper(models_cache, e2e):
    """bench.harness.evaluation.generate and bench.harness.kinds.seq2seq.generate give the same texts on both paths; a
    model that is neither a transformers nor a peft model (prompt ensembles' wrapper) goes to `generate`."""
    from bench.harness import evaluation
    from bench.harness.kinds import seq2seq
    from bench.harness.models import load_model

    prompts = [e2e.prompt(ex) for ex in eval_examples(e2e, "e2e", 8)]
    for name, module in (("tiny-llama", evaluation), ("tiny-t5", seq2seq)):
        model, tokenizer, _ = load_model(name, cache=models_cache)
        _widen(model)
        texts = [module.generate(model, tokenizer, prompts, 8, 3, 64, drop_finished=drop) for drop in (True, False)]
        assert texts[0] == texts[1] and len(set(texts[0])) > 1
    assert "neither" in unsupported(torch.nn.Linear(2, 2))


@pytest.mark.slow
@pytest.mark.parametrize("task_name, new", [("e2e", 40), ("webnlg", 60)])
def test_smollm2_real_prompts_equal(task_name, new):
    """SmolLM2-135M (real weights) on 16 E2E / WebNLG test prompts in one batch: without `stop` the tokens are
    `generate`'s; with the harness's `FirstLineDone` each row's tokens are a prefix of `generate`'s, its kept text
    the same, and rows end at different steps (zero-shot SmolLM2 never emits its end token within the limit, but
    ends its first line). The same through bench.harness.evaluation.generate with a LoRA delta."""
    from bench.harness import evaluation
    from bench.harness.generation import FirstLineDone
    from bench.harness.models import load_model
    from bench.harness.tokens import clean_generation

    task = get_task(task_name)
    prompts = [task.prompt(ex) for ex in eval_examples(task, task_name, 16)]
    model, tokenizer, _ = load_model("smollm2-135m")
    model.eval()
    pad_id = tokenizer.pad_token_id
    input_ids, attention_mask = pad([prompt_ids(tokenizer, p)[-128:] for p in prompts], pad_id, side="left")
    today = decode(model, input_ids, attention_mask, new, pad_id, tokenizer.eos_token_id, drop_finished=False)
    assert torch.equal(decode(model, input_ids, attention_mask, new, pad_id, tokenizer.eos_token_id), today)
    ours = decode(model, input_ids, attention_mask, new, pad_id, tokenizer.eos_token_id, stop=FirstLineDone(tokenizer))
    ended = []
    for mine, theirs in zip(ours[:, input_ids.shape[1] :].tolist(), today[:, input_ids.shape[1] :].tolist()):
        made = mine.index(pad_id) if pad_id in mine else len(mine)
        assert mine[:made] == theirs[:made]
        assert clean_generation(tokenizer.decode(mine, skip_special_tokens=True)) == clean_generation(
            tokenizer.decode(theirs, skip_special_tokens=True)
        )
        ended.append(made)
    assert len(set(ended)) > 1 and min(ended) < new
    lora = get_method("lora")
    adapted = lora.apply(
        model,
        resolve_hparams(lora, {"r": 8, "alpha": 16}),
        CellContext(task=task, model_kind="causal_lm", tokenizer=tokenizer, train_examples=[], seed=0),
    )
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in adapted.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.01)
    adapted.eval()
    texts = [
        evaluation.generate(adapted, tokenizer, prompts[:8], new, 8, 128, drop_finished=drop) for drop in (True, False)
    ]
    assert texts[0] == texts[1]


def test_first_line_done_only_after_text(tiny_llama):
    """FirstLineDone ends a row at a newline that follows text, not at one before any text (clean_generation strips
    leading whitespace), and only rows whose latest token holds a newline are decoded."""
    from bench.harness.generation import FirstLineDone

    tokenizer = tiny_llama[1]
    stop = FirstLineDone(tokenizer)
    rows = [
        tokenizer("\n", add_special_tokens=False)["input_ids"],
        tokenizer("ab\n", add_special_tokens=False)["input_ids"],
        tokenizer("ab c", add_special_tokens=False)["input_ids"],
    ]
    width = max(map(len, rows))
    new = torch.tensor([row + [tokenizer.pad_token_id] * (width - len(row)) for row in rows])
    latest = torch.tensor([row[-1] for row in rows])
    assert stop(new, latest).tolist() == [False, True, False]
