"""Issue 33: what a reader sees at the end of a run (the verdicts summary) and in the figures (one message each:
at most 6 series per axes, legends outside the axes, human labels, titles that say train size, seeds and eval
examples). The report is built once from synthetic records (tests/test_report.py's two-model grid)."""

import io
import os
import re
import shutil
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from bench.cli import main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The two-model grid's report, its printed summary and the matplotlib figures it drew (kept open)."""
    import matplotlib.pyplot as plt

    from bench.report import plots
    from tests.test_report import _sweep_grid

    tmp_path, here = tmp_path_factory.mktemp("show"), os.getcwd()
    os.chdir(tmp_path)
    figures, close = [], plt.close
    plots.plt.close = lambda fig=None: figures.append(fig)  # the figures stay inspectable
    try:
        grid = _sweep_grid(tmp_path)
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
    from bench.harness.scorers import _coco_tokenize

    monkeypatch.setenv("PEFT_REPRO_JAVA_LOG", str(tmp_path / "java.log"))
    assert _coco_tokenize(["a cat, sat."], [["A cat sat."]]) == ({0: ["a cat sat"]}, {0: ["a cat sat"]})
    captured = capfd.readouterr()
    assert "PTBTokenizer" not in captured.err + captured.out
    assert "PTBTokenizer tokenized" in (tmp_path / "java.log").read_text()


def _series(ax) -> int:
    """The series an axes draws: its containers (error bars; bars, with their own error bars as part of them) and
    its lines outside them (reference lines at a threshold or 0 count too)."""
    bars_own = {id(c.errorbar) for c in ax.containers if getattr(c, "errorbar", None) is not None}
    containers = [c for c in ax.containers if id(c) not in bars_own]
    inside = {id(a) for c in ax.containers for a in c.get_children()}
    lines = [line for line in ax.lines if id(line) not in inside]
    return len(containers) + len(lines)


def test_every_figure_has_at_most_6_series_per_axes_and_its_legends_outside(built):
    tmp_path, _, figures = built
    names = {Path(p).name for p in (tmp_path / "reports/g/plots").glob("*.png")}
    assert {
        "size-sst2.png",
        "trainsize-sst2.png",
        "shift-sst2.png",
        "pareto-sst2.png",
        "pareto-e2e.png",
        "forest-claims.png",
    } <= names
    assert any(n.startswith("claim-") for n in names)  # one figure per claim with comparisons
    assert len(figures) == len(names)
    for fig in figures:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        axes = [ax for ax in fig.axes if ax.get_visible()]
        boxes = [ax.get_window_extent(renderer) for ax in axes]
        legends = [ax.get_legend() for ax in axes if ax.get_legend()] + list(fig.legends)
        assert legends, fig._suptitle.get_text() if fig._suptitle else fig
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax_box in boxes:
                assert not box.overlaps(ax_box), (fig._suptitle.get_text() if fig._suptitle else "", legend)
        for ax in axes:
            assert _series(ax) <= 6, (fig._suptitle.get_text() if fig._suptitle else "", _series(ax))
            handles, labels = ax.get_legend_handles_labels()
            assert len(handles) <= 6
            colours = [tuple(_colour(h)) for h, label in zip(handles, labels) if not label.startswith("Pareto")]
            assert len(colours) == len(set(colours)), labels  # no two series of one axes share a colour


def _colour(handle):
    from matplotlib.colors import to_rgba

    artist = handle[0] if isinstance(handle, tuple) or hasattr(handle, "lines") and handle.lines else handle
    if hasattr(handle, "patches"):  # bars
        return to_rgba(handle.patches[0].get_facecolor())
    if hasattr(handle, "lines"):  # error bars: their data line
        artist = handle.lines[0] if handle.lines[0] is not None else handle
    return to_rgba(artist.get_color())


def test_figures_speak_in_words_and_name_train_size_seeds_and_eval_examples(built):
    _, _, figures = built
    titled = [fig for fig in figures if fig._suptitle]  # all but the forest plot (its axes title counts the verdicts)
    assert len(titled) == len(figures) - 1
    for fig in titled:
        title = fig._suptitle.get_text()
        assert "seed" in title and "eval example" in title, title
        if title.startswith(("sst2:", "e2e:")):  # a task's figure: its train size(s) in the title or its panels
            assert "train size" in title + " ".join(ax._left_title.get_text() for ax in fig.axes), title
        legends = [t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        for text in [title, *legends, *(ax._left_title.get_text() for ax in fig.axes)]:
            assert not re.search(r"\bn=", text), text  # "n" never stands for two things
        for text in legends:  # variants in words, not the grid's keys
            assert "full_ft" not in text and "prompt_tuning" not in text and "method=" not in text, text
    labels = {
        t.get_text() for fig in figures for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()
    }
    assert {"full fine-tuning", "LoRA", "prompt tuning"} <= labels


def test_shift_and_pareto_plots_show_every_model(built):
    _, _, figures = built
    by_title = {fig._suptitle.get_text(): fig for fig in figures if fig._suptitle}
    shift = next(f for t, f in by_title.items() if t.startswith("sst2: in-domain vs shifted"))
    assert sorted(ax._left_title.get_text() for ax in shift.axes) == [
        "smollm2-135m, train size 200",
        "smollm2-360m, train size 200",
    ]
    pareto = next(f for t, f in by_title.items() if t.startswith("e2e: score vs cost"))
    assert sorted(ax._left_title.get_text() for ax in pareto.axes if ax._left_title.get_text()) == [
        f"{m}, train size {n}" for m in ("smollm2-135m", "smollm2-360m") for n in (200, 50)
    ]


def test_variant_labels_are_words():
    from bench.report.plots import variant_label

    assert (
        variant_label(
            {
                "variant": "prompt_tuning-init-init=class_label",
                "method": "prompt_tuning",
                "num_virtual_tokens": 20.0,
                "init": "class_label",
            }
        )
        == "prompt tuning, 20 tokens, class-label init"
    )
    assert variant_label({"variant": "prompt_tuning-init-init=random"}) == "prompt tuning, random init"
    assert variant_label({"variant": "full_ft [study-e2e]", "method": "full_ft"}) == "full fine-tuning (study-e2e part)"
    assert variant_label({"variant": "lora-lr=0.001", "method": "lora"}) == "LoRA, lr 0.001"
