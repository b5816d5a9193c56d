"""Every method × architecture pair is decided when a cell is planned (docs/methods.md "Methods × architectures"):
over a tiny stand-in of every model family config/models.yaml names, each pair either trains a 2-step cell to `ok` or
is refused, with one line, by the check the Snakefile calls (bench.grid.plan.check_cells) -- as the docs' matrix
says; and each family's entry in config/models.yaml is what its stand-in's transformers classes really are."""

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.api.errors import BenchError
from bench.grid.plan import Cell, check_cells
from bench.harness.cell import CellConfig, run_cell
from bench.harness.method import method_names
from bench.harness.models import architectures, get_model_spec, model_names

REPO = Path(__file__).resolve().parent.parent
STEPS = 2
HP = {"steps": STEPS, "batch_size": 2, "max_len": 32}
METHOD_HP = {  # small prompts and prefixes: 2-step cells on tiny models
    "prompt_design": {"steps": 0, "max_len": 32},
    "prompt_tuning": {"num_virtual_tokens": 2},
    "prompt_ensemble": {"num_virtual_tokens": 2, "k": 2},
    "p_tuning": {"num_virtual_tokens": 2, "encoder_hidden_size": 8},
    "prefix_tuning": {"prefix_length": 2, "mlp_hidden": 8},
    "pet": {"template": "symbols"},  # PET needs one-token label words: one byte each for the tiny tokenizers
}


def readme_matrix() -> dict[tuple[str, str], str]:
    """(method, stand-in model) -> "runs" | "refused", from the table in docs/methods.md."""
    text = (REPO / "docs" / "methods.md").read_text().split("## Methods × architectures", 1)[1]
    rows = [line.strip().strip("|").split("|") for line in text.splitlines() if line.startswith("| ")]
    models = [re.search(r"`([^`]+)`", cell).group(1) for cell in rows[0][1:]]
    return {
        (row[0].strip().strip("`"), model): cell.split()[0] for row in rows[1:] for model, cell in zip(models, row[1:])
    }


MATRIX = readme_matrix()
STAND_INS = sorted({model for _, model in MATRIX}, key=model_names().index)


def test_the_readme_matrix_covers_every_method_and_family():
    assert {method for method, _ in MATRIX} == set(method_names())
    assert set(MATRIX.values()) == {"runs", "refused"}
    families = {get_model_spec(model).architecture for model in STAND_INS}
    assert families == set(architectures()) and len(families) == len(STAND_INS)  # one stand-in per family
    for name in model_names():  # every registry model that a method can run on is of a described family
        spec = get_model_spec(name)
        assert spec.architecture in architectures(), name


SEQ2SEQ_HP = {"prefix_tuning": {"init": "random"}}  # README note 7: real-token prefixes are for causal LMs


def _cell(method: str, model: str, **hp) -> Cell:
    kind_hp = SEQ2SEQ_HP.get(method, {}) if get_model_spec(model).kind == "seq2seq" else {}
    return Cell("matrix", "sst2", model, method, 4, 0, {**HP, **METHOD_HP.get(method, {}), **kind_hp, **hp}, 2, ())


def _run(cell: Cell, out: Path) -> dict:
    config = CellConfig(
        cell.task, cell.model, cell.method, cell.train_size, cell.seed, cell.hp, cell.eval_limit, cell.shifts, cell.grid
    )
    return run_cell(config, out, threads=1)


@pytest.mark.parametrize("method, model", sorted(MATRIX), ids=[f"{m}-{n}" for m, n in sorted(MATRIX)])
def test_each_pair_runs_or_is_refused_when_planned(method, model, models_cache, tmp_path):
    extra = {}
    if method == "distill":  # its teacher: the same family's full_ft cell
        teacher = _cell("full_ft", model)
        assert _run(teacher, tmp_path / "teacher")["status"] == "ok"
        extra = {"teacher": str(tmp_path / "teacher")}
    cell = _cell(method, model, **extra)
    try:
        check_cells([cell])
    except BenchError as error:
        assert MATRIX[method, model] == "refused", str(error)
        message = str(error)
        assert message.startswith(f"grid matrix: cell sst2/{model}/{method}/n4: ") and "\n" not in message
        return
    assert MATRIX[method, model] == "runs"
    record = _run(cell, tmp_path / "cell")
    assert record["status"] == "ok" and record["train"]["steps"] == cell.hp["steps"]
    assert record["metrics"]["sst2"]["n"] == 2


@pytest.mark.parametrize("model", STAND_INS)
def test_the_family_entry_is_what_the_stand_in_is(model, models_cache):
    """config/models.yaml's facts, which planning reads instead of the model, against the real classes."""
    from safetensors.torch import load_file

    from bench.harness.models import architecture, load_model, prepare_model
    from methods._common import HEAD_NAMES, block_stacks

    spec = get_model_spec(model)
    arch = architecture(spec.architecture)
    model_obj, _, _ = load_model(model, models_cache, num_labels=2)
    saved = load_file(str(prepare_model(model, models_cache) / "model.safetensors"))
    assert sum(t.numel() for t in saved.values()) == spec.params
    config = model_obj.config
    d_ff = next(
        getattr(config, key)
        for key in ("intermediate_size", "n_inner", "d_ff", "encoder_ffn_dim")
        if getattr(config, key, None)
    )
    stacks = block_stacks(model_obj)
    assert len(stacks) == (2 if spec.kind == "seq2seq" else 1) and arch.encoder_decoder == (spec.kind == "seq2seq")
    for _, blocks, block_arch in stacks:
        for block in blocks:
            attention = block.get_submodule(block_arch.attention_output)
            feed_forward = block.get_submodule(block_arch.feed_forward_output)
            assert _shape(attention)[1] == _shape(feed_forward)[1] == config.hidden_size  # both write the residual
            assert _shape(feed_forward)[0] == d_ff  # IA3 rescales its input: the inner activations
            for name in block_arch.key_value:
                assert _shape(block.get_submodule(name))[0] == config.hidden_size
    if arch.decoder_final_norm:  # ft_top_k trains it: the norm the decoder's last block feeds
        assert type(model_obj.get_submodule(arch.decoder_final_norm)).__name__.endswith("LayerNorm")
    body = [(name, module) for name, module in model_obj.named_modules() if name.split(".")[0] not in HEAD_NAMES]
    assert set(arch.linear) == {
        name.rsplit(".", 1)[-1] for name, module in body if type(module).__name__ in ("Linear", "Conv1D")
    }
    assert set(arch.query_value) <= set(arch.linear)
    assert arch.bias == any(
        name.endswith(".bias") for name, _ in model_obj.named_parameters() if name.split(".")[0] not in HEAD_NAMES
    )
    # peft's own test before it hands prefixes to a classifier; language models get them unchecked (the matrix runs
    # them; tests/test_seq2seq.py checks that an encoder-decoder's three attention kinds read theirs)
    takes_cache = any(
        "past_key_values" in inspect.signature(m.forward).parameters for m in (model_obj, model_obj.base_model)
    )
    assert arch.past_key_values == (spec.kind in ("causal_lm", "seq2seq") or takes_cache)


def _shape(module) -> tuple[int, int]:
    """(inputs, outputs) of a Linear or of GPT-2's Conv1D (whose weight is stored transposed)."""
    if type(module).__name__ == "Conv1D":
        return tuple(module.weight.shape)
    return module.in_features, module.out_features


@pytest.mark.parametrize(
    "method, hp, message",
    [
        ("lora", {"r": 0}, r"lora r=0 must be a positive integer"),
        (
            "lora",
            {"target_modules": "q_proj,query"},
            r"lora target_modules \['query'\] not in llama models: choose from "
            r"q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, "
            r"lm_head$",
        ),
    ],
)
def test_lora_settings_are_refused_when_planned(method, hp, message):
    with pytest.raises(BenchError, match=message):
        check_cells([_cell(method, "tiny-llama", **hp)])


def test_snakemake_refuses_a_bad_pair_before_planning(tmp_path):
    grid = {
        "models": ["tiny-llama", "tiny-roberta"],
        "methods": {"lora": None, "prefix_tuning": None},
        "tasks": {"sst2": {"shifts": [], "eval_limit": 2}},
        "train_sizes": [4],
        "hp": {"steps": STEPS},
    }
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(grid))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--snakefile",
            str(REPO / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--config",
            f"grid={path}",
        ],
        capture_output=True,
        text=True,
    )
    output = (done.stdout + done.stderr).strip()
    assert done.returncode != 0 and "Traceback" not in output
    lines = [
        line
        for line in output.splitlines()  # but Snakemake's own note that it read profiles/default
        if not line.endswith("for setting default command line arguments.")
    ]
    assert lines == [
        "error: grid g: cell sst2/tiny-roberta/prefix_tuning/n4: prefix_tuning passes its prefixes as "
        "past key/values, which roberta models do not take (transformers 5): use p_tuning or "
        "prompt_tuning (a soft prompt on the input) on this encoder, or prefix_tuning on a causal LM"
    ]


def test_a_model_of_an_undescribed_family_is_refused_when_planned(monkeypatch):
    import dataclasses

    from bench.harness import models

    falcon = dataclasses.replace(get_model_spec("tiny-llama"), name="tiny-falcon", architecture="falcon")
    monkeypatch.setitem(models._registry(), "tiny-falcon", falcon)
    with pytest.raises(
        BenchError,
        match=r"cell sst2/tiny-falcon/full_ft/n4: architecture 'falcon' is not described in "
        r"config/models.yaml: add it under `architectures` \(known: llama, ",
    ):
        check_cells([_cell("full_ft", "tiny-falcon")])
