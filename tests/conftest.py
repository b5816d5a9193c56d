import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def models_cache(tmp_path_factory) -> Path:
    """A private model cache so tests never touch results/models."""
    path = tmp_path_factory.mktemp("models")
    os.environ["PEFT_REPRO_MODELS"] = str(path)
    return path


@pytest.fixture()
def tiny_llama(models_cache):
    from bench.harness.models import load_model

    return load_model("tiny-llama", cache=models_cache)


@pytest.fixture(scope="session")
def sst2():
    from bench.harness.tasks import get_task

    return get_task("sst2")


@pytest.fixture(scope="session")
def e2e():
    from bench.harness.tasks import get_task

    return get_task("e2e")


def _brute_force_scores(model, tokenizer, task, examples, shift=0):
    """Label log-probs one (example, label) sequence at a time, full logits; `shift` = virtual tokens."""
    import torch

    from bench.harness.tokens import continuation_ids, prompt_ids

    out = torch.zeros(len(examples), len(task.verbalizer))
    with torch.no_grad():
        for i, ex in enumerate(examples):
            prompt = prompt_ids(tokenizer, task.prompt(ex))
            for j, word in enumerate(task.verbalizer):
                label = continuation_ids(tokenizer, word)
                logprobs = torch.log_softmax(model(input_ids=torch.tensor([prompt + label])).logits[0], -1)
                out[i, j] = sum(logprobs[shift + len(prompt) - 1 + k, t] for k, t in enumerate(label))
    return out


@pytest.fixture(scope="session")
def brute_force_scores():
    """The reference that batched rank scoring must equal."""
    return _brute_force_scores


ROUND_TRIP_IDS = [[5, 6, 7, 8, 9]]


def _delta_round_trip(method, hp, ctx, adapted, path, cache):
    """Save `adapted`'s delta to `path`, load it onto a fresh tiny-llama: logits of (adapted, reloaded, plain
    base) on ROUND_TRIP_IDS."""
    import torch

    from bench.harness.models import load_model

    method.save_delta(adapted, path)
    fresh, _, _ = load_model("tiny-llama", cache=cache)
    reloaded = method.load_delta(fresh, hp, ctx, path)
    base, _, _ = load_model("tiny-llama", cache=cache)
    ids = torch.tensor(ROUND_TRIP_IDS)
    adapted.eval(), reloaded.eval()
    with torch.no_grad():
        return adapted(input_ids=ids).logits, reloaded(input_ids=ids).logits, base(input_ids=ids).logits


_delta_round_trip.ids = ROUND_TRIP_IDS


@pytest.fixture(scope="session")
def delta_round_trip():
    return _delta_round_trip


def _rescoring_gives_the_record(record, cell_dir):
    """The kept per-example outputs, scored again, give exactly the record's metrics, for every eval set."""
    from bench.harness.cell import read_outputs
    from bench.harness.method import get_method
    from bench.harness.tasks import get_task

    outputs = read_outputs(cell_dir, record)
    assert outputs is not None and set(outputs) == set(record["metrics"])
    method, task = get_method(record["config"]["method"]), get_task(record["config"]["task"])
    for eval_set, metrics in record["metrics"].items():
        rows = outputs[eval_set]
        assert len(rows) == metrics["n"] and len({r["id"] for r in rows}) == len(rows)
        kept = {k: v for k, v in metrics.items() if k not in ("n", "samples")}
        assert method.score_outputs(rows, task.metrics) == kept, eval_set


@pytest.fixture(scope="session")
def rescoring_gives_the_record():
    return _rescoring_gives_the_record
