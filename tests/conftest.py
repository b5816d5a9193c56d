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
    from bench.models import load_model

    return load_model("tiny-llama", cache=models_cache)


@pytest.fixture(scope="session")
def sst2():
    from bench.tasks import get_task

    return get_task("sst2")


@pytest.fixture(scope="session")
def e2e():
    from bench.tasks import get_task

    return get_task("e2e")
