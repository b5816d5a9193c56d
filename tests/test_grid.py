"""Grids as data: expansion into cells, and malformed grids rejected with one clear line before planning."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bench.api.errors import BenchError
from bench.grid.plan import check_cells, grid_cells, grid_names

REPO = Path(__file__).resolve().parent.parent
VALID = {
    "models": ["tiny-llama"],
    "methods": {"lora": {"r": 2}, "full_ft": None},
    "tasks": {"sst2": {"shifts": ["imdb"], "eval_limit": 8, "hp": {"max_len": 32}}},
    "train_sizes": [16, 32],
    "seeds": [0, 1],
    "hp": {"steps": 2},
}


def _write(tmp_path, data, name="g"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def test_every_shipped_grid_is_valid():
    assert {"smoke", "tiny"} <= set(grid_names())
    for name in grid_names():
        check_cells(grid_cells(name))


def test_expansion_and_hp_layering(tmp_path):
    cells = grid_cells(_write(tmp_path, VALID))
    assert len(cells) == 1 * 2 * 2 * 2  # tasks x methods x sizes x seeds
    lora = next(c for c in cells if c.method == "lora")
    assert lora.hp == {"steps": 2, "max_len": 32, "r": 2} and lora.shifts == ("imdb",) and lora.eval_limit == 8
    assert lora.dir == "results/g/sst2/tiny-llama/lora/n16/s0"
    assert "--hp r=2" in lora.cli_args() and "--shifts imdb" in lora.cli_args()
    assert lora.dev_limit is None and "--dev-limit" not in lora.cli_args()


def test_dev_limit_reaches_every_cell_of_its_task(tmp_path):
    data = _with(tasks__sst2__dev_limit=100, methods={"lora": {"lr": [1e-3, 1e-2]}})
    data["tasks"]["cb"] = None
    cells = grid_cells(_write(tmp_path, data))
    assert {(c.task, c.label, c.dev_limit) for c in cells} == {
        ("sst2", "lora-lr=0.001", 100),
        ("sst2", "lora-lr=0.01", 100),
        ("cb", "lora-lr=0.001", None),
        ("cb", "lora-lr=0.01", None),
    }
    sst2 = next(c for c in cells if c.task == "sst2")
    assert "--dev-limit 100" in sst2.cli_args() and sst2.dir == "results/g/sst2/tiny-llama/lora-lr=0.001/n16/s0"
    check_cells(cells)


def _with(**changes):
    data = yaml.safe_load(yaml.safe_dump(VALID))
    for dotted, value in changes.items():
        target, *path, last = [data, *dotted.split("__")]
        for key in path:
            target = target[key]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value
    return data


MALFORMED = [
    (_with(models=KeyError), "'models' is a required property"),
    (_with(methods=KeyError), "'methods' is a required property"),
    (_with(tasks=KeyError), "'tasks' is a required property"),
    (_with(train_sizes=KeyError), "'train_sizes' is a required property"),
    (_with(models=[]), "models: [] should be non-empty"),
    (_with(models="tiny-llama"), "models: 'tiny-llama' is not of type 'array'"),
    (_with(methods={}), "methods: {} should be non-empty"),
    (_with(train_sizes=[0]), "train_sizes.0"),
    (_with(train_sizes=["all"]), "train_sizes.0"),
    (_with(seeds=[-1]), "seeds.0"),
    (_with(seed=[0]), "Additional properties are not allowed ('seed' was unexpected)"),
    (_with(tasks__sst2__eval_limit="many"), "tasks.sst2.eval_limit: 'many' is not of type 'integer'"),
    (_with(tasks__sst2__eval_limit=0), "tasks.sst2.eval_limit: 0 is less than the minimum of 1"),
    (_with(tasks__sst2__shift=["imdb"]), "('shift' was unexpected)"),
    (_with(tasks__sst2__dev_limit=0), "tasks.sst2.dev_limit: 0 is less than the minimum of 1"),
    (_with(tasks__sst2__dev_limit="many"), "tasks.sst2.dev_limit: 'many' is not of type 'integer'"),
    (_with(tasks__sst2__dev_limit=67349), "dev_limit 67349 is out of range for task sst2"),
    (
        _with(tasks={"boolq": {"dev_limit": 5}}, methods={"prompt_design": None}, hp={"steps": 0}),
        "task boolq has no training split to hold a dev set out of",
    ),
    (_with(tasks__sst2__shifts="imdb"), "tasks.sst2.shifts: 'imdb' is not of type 'array'"),
    (_with(hp=[1, 2]), "hp: [1, 2] is not of type 'object'"),
    (_with(hp={"lr": [1]}), "hp.lr"),
    (_with(models=["gpt5"]), "unknown model 'gpt5': choose one of"),
    (_with(methods={"dora": None}), "unknown method 'dora': choose one of"),
    (_with(tasks={"sst3": None}), "unknown task 'sst3': choose one of"),
    (_with(train_sizes=[10_000_000]), "train size 10000000 invalid for sst2: use 'full' or 1..67349"),
    (_with(tasks__sst2__shifts=["yelp"]), "shift(s) ['yelp'] not defined for task sst2: choose from imdb"),
    (_with(methods={"lora": {"r": "four"}}), "hyperparameter r='four' must be of type int"),
    (_with(methods={"lora": {"rank": 4}}), "hyperparameter 'rank' is not known to method lora: valid are"),
    (_with(hp={"steps": 1.5}), "hyperparameter steps=1.5 must be of type int"),
    (_with(models=["tiny-bert"], tasks={"e2e": None}), "encoder tiny-bert cannot do generation task e2e"),
    ("models: [tiny-llama\n", "is not valid YAML"),
    ("- just\n- a list\n", "must be a YAML mapping"),
]


@pytest.mark.parametrize("data, message", MALFORMED, ids=[str(i) for i in range(len(MALFORMED))])
def test_malformed_grid_is_one_line_naming_the_field(tmp_path, data, message):
    with pytest.raises(BenchError) as caught:
        check_cells(grid_cells(_write(tmp_path, data)))
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_unknown_grid_name_lists_grids():
    with pytest.raises(BenchError, match=r"grid 'nope' not found: choose one of .*smoke"):
        grid_cells("nope")


def test_snakemake_reports_a_bad_grid_without_traceback(tmp_path):
    path = _write(tmp_path, _with(methods={"dora": None}))
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
    assert done.returncode != 0
    output = (done.stdout + done.stderr).strip()
    assert "unknown method 'dora'" in output and "Traceback" not in output
    lines = [
        line
        for line in output.splitlines()  # but Snakemake's own note that it read profiles/default
        if not line.endswith("for setting default command line arguments.")
    ]
    assert len(lines) == 1 and lines[0].startswith("error: ")


def test_blocks_and_sweeps(tmp_path):
    data = {
        "train_sizes": [16],
        "tasks": {"sst2": None},
        "models": ["tiny-llama"],
        "blocks": [
            {"methods": {"lora": None}},
            {
                "methods": {"pt": {"method": "full_ft", "lr": [1e-3, 1e-2], "steps": 2}},
                "seeds": [0, 1],
                "train_sizes": [8],
            },
        ],
    }
    cells = grid_cells(_write(tmp_path, data))
    assert sorted(c.dir.split("/", 3)[3] for c in cells) == [
        "tiny-llama/lora/n16/s0",
        "tiny-llama/pt-lr=0.001/n8/s0",
        "tiny-llama/pt-lr=0.001/n8/s1",
        "tiny-llama/pt-lr=0.01/n8/s0",
        "tiny-llama/pt-lr=0.01/n8/s1",
    ]
    swept = next(c for c in cells if c.label == "pt-lr=0.01")
    assert swept.method == "full_ft" and swept.hp == {"lr": 0.01, "steps": 2}
    check_cells(cells)


def test_block_errors_name_the_block(tmp_path):
    data = {"tasks": {"sst2": None}, "models": ["tiny-llama"], "blocks": [{"methods": {"lora": None}}]}
    with pytest.raises(BenchError, match=r"blocks.0: 'train_sizes' is a required property"):
        grid_cells(_write(tmp_path, data))


def test_a_grid_of_parts_is_the_union_of_its_parts_cells_in_their_folders(tmp_path):
    one = _write(tmp_path, VALID, "one")
    two = _write(tmp_path, {**VALID, "methods": {"lora": {"r": 4}}, "train_sizes": [16], "seeds": [0]}, "two")
    cells = grid_cells(_write(tmp_path, {"description": "both", "parts": [one, two]}, "both"))
    assert len(cells) == len(grid_cells(one)) + len(grid_cells(two)) == 9
    assert {c.dir.split("/")[1] for c in cells} == {"one", "two"}  # each cell in its part's folder, none in both/
    assert next(c for c in cells if c.grid == "two").hp["r"] == 4  # a part keeps its own settings
    check_cells(cells)


@pytest.mark.parametrize(
    "data, message",
    [
        ({"parts": ["SELF"]}, r"grid loop: its parts include itself \(through loop\)"),
        ({"parts": ["smoke"], "models": ["tiny-llama"]}, r"grid loop: .*Additional properties are not allowed"),
        ({"parts": []}, r"grid loop: .*(should be non-empty|too short)"),
    ],
)
def test_a_bad_grid_of_parts_is_one_line(tmp_path, data, message):
    path = tmp_path / "loop.yaml"
    data = {k: [str(path) if p == "SELF" else p for p in v] if k == "parts" else v for k, v in data.items()}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(BenchError, match=message):
        grid_cells(str(path))
