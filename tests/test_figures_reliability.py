"""The figures a person reads: skipped figures name the command that makes their data, the theory data computed
without a store show progress on a terminal and are computed once, and no legend covers an axis label."""

from __future__ import annotations

import io

import numpy as np
import pytest

from figures import FIGURES, Sources, render, theory
from figures import style as style_module


def test_every_skipped_figure_names_the_command_that_makes_its_data(tmp_path):
    lines: list[str] = []
    made = render(Sources(stores=[], real=[], compute_missing=False), tmp_path, log=lines.append)
    skipped = [line for line in lines if line.startswith("skipped ")]
    assert {line.split(":")[0].removeprefix("skipped ") for line in skipped} == set(FIGURES) - set(made)
    for line in skipped:
        assert "; its data: python -m " in line, line


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_theory_data_show_progress_on_a_terminal_and_are_computed_once(monkeypatch):
    calls = []
    real = theory.compute_theory

    def counted(*args, **kwargs):
        calls.append(kwargs.get("progress"))
        return real(theory.DEFAULT_WORLD, [("logitwise", "linf", "unconstrained")], (0.0, 0.2),
                    np.array([0.1, 0.2]), progress=kwargs.get("progress", False))

    monkeypatch.setattr(theory, "compute_theory", counted)
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    sources = Sources(progress=True)
    first, _ = theory.theory_frame(sources)
    second, _ = theory.theory_frame(sources)
    assert calls == [True] and first is second
    assert "theory curves (population engine)" in terminal.getvalue()
    quiet = io.StringIO()  # not a terminal: no bar even when asked for
    monkeypatch.setattr("sys.stderr", quiet)
    real(theory.DEFAULT_WORLD, [("logitwise", "linf", "unconstrained")], (0.0,), np.array([0.1]), progress=True)
    assert quiet.getvalue() == ""


def _drawn(monkeypatch, function, sources, tmp_path):
    """The figure ``function`` draws, laid out as it is saved."""
    captured = {}

    def keep(fig, out_dir, name):
        captured["fig"] = fig
        return []

    monkeypatch.setattr(style_module, "save", keep)
    function(sources, tmp_path)
    fig = captured["fig"]
    fig.canvas.draw()
    return fig


def _overlaps(a, b) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


@pytest.mark.parametrize("name", ["claim2_accuracy", "theory_cas"])
def test_no_legend_covers_an_axis_label_or_a_panel(name, monkeypatch, tmp_path):
    sources = Sources()
    sources.computed["theory"] = theory.compute_theory(
        theory.DEFAULT_WORLD, [("logitwise", "linf", "unconstrained")], (0.0, 0.2), np.array([0.1, 0.2]))
    fig = _drawn(monkeypatch, FIGURES[name][1], sources, tmp_path)
    renderer = fig.canvas.get_renderer()
    legends = fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None]
    assert legends
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not _overlaps(box, ax.get_window_extent(renderer)), f"{name}: a legend covers a panel"
            for label in (ax.xaxis.label, ax.yaxis.label):
                if label.get_text():
                    assert not _overlaps(box, label.get_window_extent(renderer)), f"{name}: covers {label.get_text()}"
    import matplotlib.pyplot as plt

    plt.close(fig)


def test_theory_cas_says_its_range_and_why_adversarial_curves_coincide(monkeypatch, tmp_path):
    sources = Sources()
    sources.computed["theory"] = theory.compute_theory(
        theory.DEFAULT_WORLD, [("logitwise", "linf", "unconstrained")], (0.0,), np.array([0.1, 0.2]))
    frame = sources.computed["theory"]
    # the reason stated on the figure, checked: with w1, w2 of one sign the l_inf worst case leaves CAS unchanged
    assert (np.sign(frame["w1"]) == np.sign(frame["w2"])).all()
    assert np.allclose(frame["cas"], frame["cas_adv"])
    fig = _drawn(monkeypatch, theory.cas_vs_eps, sources, tmp_path)
    assert "range 0 to K(K-1) = 6" in fig.axes[0].get_ylabel()
    title = fig.get_suptitle()
    assert "share a sign" in title and "unchanged" in title
    import matplotlib.pyplot as plt

    plt.close(fig)
