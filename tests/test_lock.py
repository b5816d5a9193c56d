"""The dependency lock: complete, hashed, what every install command uses, recorded in every record, and a
cell that refuses versions outside pyproject.toml's ranges."""

import json
import os
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench.cli import main
from bench.harness import lock

REPO = Path(__file__).resolve().parent.parent
INSTALL_FROM_LOCK = (
    "pip install -q --no-deps --require-hashes -r config/requirements.lock{docs} -r "
    "config/model-packages.txt"
    " && pip install -q --no-deps --no-build-isolation -e ."
)  # docs: the test command's docs lock
DOCS = " -r config/docs-requirements.lock"


def _requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [line for extra in lock.EXTRAS for line in project["optional-dependencies"][extra]]
    return [Requirement(line) for line in project["dependencies"] + extras]


def test_lock_pins_every_dependency_within_its_range_with_hashes():
    text = lock.LOCK.read_text()
    pins = lock.lock_pins(text)
    for requirement in _requirements():
        name = lock.normalise(requirement.name)
        assert name in pins, f"{name} missing from the lock: run python -m bench lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    # every pinned package carries at least one sha256 (pip refuses the whole file otherwise, but say which)
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        if re.match(r"[A-Za-z0-9][\w.-]*==", block):
            assert "--hash=sha256:" in block, block.splitlines()[0]
    assert pins["torch"].endswith("+cpu")  # PyPI's torch would pull the CUDA build
    assert len(pins) > 100  # transitively: the dependencies of the dependencies too


def test_every_install_command_uses_the_lock():
    readme, ci = (REPO / "README.md").read_text(), (REPO / ".ci" / "run").read_text()
    test_command = next(line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line)
    assert INSTALL_FROM_LOCK.format(docs=DOCS) in test_command and test_command in ci
    run_command = next(
        line for line in readme.splitlines() if line.startswith("python3 -m venv") and "snakemake" in line
    )
    assert INSTALL_FROM_LOCK.format(docs="").replace(" -q", "") in run_command
    for text in (readme, ci):
        assert 'pip install -e ".' not in text and "pip install -q -e" not in text


def test_the_docs_lock_pins_by_hash_what_the_main_lock_does_not():
    """config/docs-requirements.lock (python -m bench.lock --docs): mkdocs and mkdocs-material with their
    dependencies, each pinned with a sha256, none pinned twice (both files install in one pip command)."""
    text = lock.DOCS_LOCK.read_text()
    pins = lock.lock_pins(text)
    assert {"mkdocs", "mkdocs-material"} <= set(pins) and not set(pins) & set(lock.lock_pins())
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        if re.match(r"[A-Za-z0-9][\w.-]*==", block):
            assert "--hash=sha256:" in block, block.splitlines()[0]


def test_differing_packages_names_each_difference():
    assert lock.differing_packages({"a": "1", "b": "2", "c": None}, {"a": "1", "b": "3", "d": "4"}) == {
        "b": ("2", "3"),
        "d": (None, "4"),
    }
    assert lock.differing_packages({"a": "1"}, {"a": "1"}) == {}


def test_environment_matches_this_install():
    env = lock.environment()
    assert env["lock_sha256"] == lock.hashlib.sha256(lock.LOCK.read_bytes()).hexdigest()
    assert set(env["packages"]) == set(lock.lock_pins())
    if not os.environ.get("PEFT_REPRO_COMPAT"):  # installed from the lock (README's test command): nothing differs
        assert lock.differing_packages(env["packages"]) == {}


@pytest.mark.parametrize(
    "installed, message",
    [
        (
            {"transformers": "6.0.0"},
            r"transformers 6\.0\.0 is installed but this suite supports transformers<6,>=5\.23",
        ),
        ({"peft": None}, r"peft is not installed \(this suite needs peft<0\.22,>=0\.21\.2\)"),
    ],
)
def test_a_cell_refuses_versions_outside_the_supported_ranges(installed, message, monkeypatch, capsys, tmp_path):
    from bench.harness import cell

    real = lock.installed_versions
    monkeypatch.setattr(
        lock, "installed_versions", lambda names: {**real(names), **{n: v for n, v in installed.items() if n in names}}
    )
    cell.supported_versions.cache_clear()
    try:
        status = main(
            [
                "run-cell",
                "--task",
                "sst2",
                "--model",
                "tiny-llama",
                "--method",
                "lora",
                "--train-size",
                "4",
                "--out",
                str(tmp_path / "cell"),
            ]
        )
    finally:
        cell.supported_versions.cache_clear()
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert re.search(message, err) and err.rstrip().endswith(lock.INSTALL)
    assert not (tmp_path / "cell").exists()


def test_records_keep_the_lock(models_cache, tmp_path):
    from bench.harness.cell import CellConfig, run_cell

    run_cell(
        CellConfig(
            task="sst2",
            model="tiny-llama",
            method="lora",
            train_size=4,
            seed=0,
            hp={"steps": 1, "batch_size": 4, "max_len": 32},
            eval_limit=4,
            shifts=(),
        ),
        tmp_path,
    )
    env = json.loads((tmp_path / "record.json").read_text())["env"]
    assert env["lock_sha256"] == lock.lock_sha256()
    assert env["packages"]["transformers"] == lock.lock_pins()["transformers"]


def test_other_lock_names_the_packages_that_differ():
    pins = lock.lock_pins()
    assert lock.other_lock(lock.environment()) is None  # made under today's lock
    moved = {**pins, "transformers": "5.23.0", "uv": None}
    said = lock.other_lock({"lock_sha256": "ab" * 32, "packages": moved})
    assert said == f"lock {'ab' * 6}: transformers 5.23.0 (lock {pins['transformers']}), uv – (lock {pins['uv']})"
    same = lock.other_lock({"lock_sha256": "cd" * 32, "packages": pins})
    assert same == f"lock {'cd' * 6}: same package versions"
    old = lock.other_lock({"torch": pins["torch"], "transformers": "5.23.0", "peft": pins["peft"]})
    assert old == f"no lock recorded: transformers 5.23.0 (lock {pins['transformers']})"
