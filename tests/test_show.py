"""Issue 33: what a reader sees at the end of a run (the verdicts summary) and in the figures (one message each:
at most 6 series per axes, legends outside the axes, human labels, titles that say train size, seeds and eval
examples). The report is built once from synthetic records (tests/test_report.py's two-model grid)."""
import os
import re
import shutil
from pathlib import Path

import pytest

from bench.__main__ import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The two-model grid's report, its printed summary and the matplotlib figures it drew (kept open)."""
    import matplotlib.pyplot as plt

    from tests.test_report import _sweep_grid

    import bench.plots as plots

    tmp_path, here = tmp_path_factory.mktemp("show"), os.getcwd()
    os.chdir(tmp_path)
    figures, close = [], plt.close
    plots.plt.close = lambda fig=None: figures.append(fig)  # the figures stay inspectable
    try:
        grid = _sweep_grid(tmp_path)
        import io
        from contextlib import redirect_stdout

        out = io.StringIO()
        with redirect_stdout(out):
            assert main(["report", grid]) == 0
        yield tmp_path, out.getvalue(), [f for f in figures if f is not None]
    finally:
        plots.plt.close = close
        for fig in figures:
            close(fig)
        os.chdir(here)


def test_the_report_ends_with_the_cells_and_the_verdicts(built):
    tmp_path, printed, _ = built
    lines = printed.splitlines()
    assert lines[0].startswith("wrote ") and "reports/g" in lines[0]
    assert "Grid `g`: 24 cells: 24 ok, 0 stale, 0 failed (results/g/cells.csv)." in lines
    claims = next(line for line in lines if line.startswith("Claims: "))
    assert re.search(r"\d+ reproduced", claims) and "reports/g/claims.md" in claims
    head = next(i for i, line in enumerate(lines) if line.startswith("| claim "))
    assert re.match(r"\| claim +\| Δ \[95% interval\] +\| verdict +\|$", lines[head])
    row = next(line for line in lines if line.startswith("| prompt_tuning_robust_to_domain_shift "))
    assert re.search(r"\| [+-]\d+\.\d\d \[[+-]\d+\.\d\d, [+-]\d+\.\d\d\] \w+ +\| reproduced +\|$", row)
    assert len({len(line) for line in lines[head:] if line.startswith("|")}) == 1  # padded: a table in a terminal
    assert lines[-1].startswith("Not run (no cells of theirs here): ") and "prefix_low_data" in lines[-1]
    assert (tmp_path / "reports/g/verdicts.md").read_text() == "\n".join(lines[1:]) + "\n"
    assert not any("/plots/" in line or line.endswith(".png") for line in lines)  # no list of paths


def test_the_java_tokenizer_chatter_goes_to_the_log(capfd, tmp_path, monkeypatch):
    if not shutil.which("java"):
        pytest.skip("no java here (CI installs it)")
    from bench.scorers import _coco_tokenize

    monkeypatch.setenv("PEFT_REPRO_JAVA_LOG", str(tmp_path / "java.log"))
    assert _coco_tokenize(["a cat, sat."], [["A cat sat."]]) == ({0: ["a cat sat"]}, {0: ["a cat sat"]})
    captured = capfd.readouterr()
    assert "PTBTokenizer" not in captured.err + captured.out
    assert "PTBTokenizer tokenized" in (tmp_path / "java.log").read_text()
