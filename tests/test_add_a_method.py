"""docs/add-a-method.md, followed end to end on a copy of the project: every file its code blocks name is written
(methods/dora.py, a grid), every `$ peft-repro ...` command is run, and each line the page shows under a command is
the start of a line that command prints."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from bench.harness.tasks import data_root

REPO = Path(__file__).resolve().parent.parent
GUIDE = REPO / "docs" / "add-a-method.md"


def guide_files(text: str) -> dict[str, str]:
    """{path: content} of each code block whose first line is a comment naming the file."""
    return {m[1]: m[2] for m in re.finditer(r"```(?:python|yaml)\n# (\S+)\n(.*?)```", text, re.S)}


def guide_commands(text: str) -> list[tuple[str, list[str]]]:
    """(command, the lines shown under it) of each console block."""
    out = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            command, *shown = chunk.strip("\n").split("\n")
            out.append((command, shown))
    return out


def test_the_guide_adds_dora_end_to_end(tmp_path, models_cache):
    text = GUIDE.read_text()
    files, commands = guide_files(text), guide_commands(text)
    assert "methods/dora.py" in files and any(c.startswith("peft-repro run-cell") for c, _ in commands)
    copy = tmp_path / "project"
    for name in ("bench", "methods", "config", "pyproject.toml"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, copy / name)
    for path, content in files.items():
        assert not (copy / path).exists(), f"the guide overwrites {path}"
        (copy / path).write_text(content)
    env = {
        **os.environ,
        "PYTHONPATH": str(copy),
        "PEFT_REPRO_DATA": str(data_root()),
        "PEFT_REPRO_MODELS": str(models_cache),
        "OMP_NUM_THREADS": "1",
    }
    for command, shown in commands:
        argv = shlex.split(command)
        assert argv[0] == "peft-repro"
        done = subprocess.run(
            [sys.executable, "-m", "bench", *argv[1:]], cwd=copy, env=env, capture_output=True, text=True, timeout=600
        )
        printed = (done.stdout + done.stderr).splitlines()
        assert done.returncode == (2 if any(s.startswith("error:") for s in shown) else 0), (command, printed[-5:])
        for line in shown:
            assert any(p.startswith(line) for p in printed), (command, line, printed[-5:])
    record = (copy / "results" / "dora-try" / "record.json").read_text()
    assert '"method": "dora"' in record and '"status": "ok"' in record
