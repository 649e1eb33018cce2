"""Figures of the population theory: optimal weights, thresholds, CAS, and Claim 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from . import style
from .data import THEORY_COMMAND, MissingData, Sources, finite

FORMALISATION = ["attack", "norm", "weights"]
ZERO_WEIGHT = 1e-6  # |w1|, |w2| below this: the optimum is the zero model

# what the figures compute themselves when no store holds theory points: the paper's world
DEFAULT_WORLD = {"preset": "paper3", "mu": 1.0, "sigma": 0.5}
DEFAULT_FORMS = [("joint", "linf", "unconstrained"), ("logitwise", "linf", "unconstrained"),
                 ("pgd", "linf", "unconstrained")]
DEFAULT_ALPHAS = (0.0, 0.2)
# claim2_accuracy: the radii, as fractions of each norm's largest (mu / 2 for l_inf, mu / sqrt(2) for l2)
CLAIM2_FRACTIONS = (0.1, 0.3, 0.5, 0.7)


def compute_theory(world: dict, forms, alphas, eps: np.ndarray, progress: bool = False) -> pd.DataFrame:
    """Optimal weights, thresholds and CAS by the population engine, in the sweep's theory-point columns.

    ``progress``: a bar over the (formalisation, alpha) curves on stderr, shown on a terminal only.
    """
    import sys

    from tqdm.auto import tqdm

    from synthmodel import population as pop

    model = pop.world_from(world["preset"], mu=world["mu"], sigma=world["sigma"])
    rows = []
    bar = tqdm(total=len(forms) * len(alphas), desc="theory curves (population engine)", unit="curve",
               file=sys.stderr, disable=None if progress else True, leave=False)
    for attack, norm, weights in forms:
        eps0 = pop.threshold(model, pop.Formalisation(attack=attack, norm=norm, weights=weights)).eps
        for alpha in alphas:
            bar.set_postfix_str(f"{attack} {norm} alpha={alpha:g}")
            form = pop.Formalisation(attack=attack, norm=norm, alpha=float(alpha), weights=weights)
            opt = pop.optimal_weights(model, form, eps)
            eps1 = pop.threshold(model, form).eps if alpha else None
            acc = pop.robust_accuracy(model, opt["w1"], opt["w2"], eps, norm).value
            for i, e in enumerate(eps):
                w1, w2 = float(opt["w1"][i]), float(opt["w2"][i])
                rows.append({**world, "eps": float(e), "alpha": float(alpha), "attack": attack, "norm": norm,
                             "weights": weights, "w1": w1, "w2": w2, "ratio": w2 / w1 if w1 else None,
                             "robust_acc": float(acc[i]), "cas": pop.population_cas(model, w1, w2),
                             "cas_adv": pop.population_cas(model, w1, w2, float(e), norm), "eps0": eps0, "eps1": eps1})
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def theory_frame(sources: Sources) -> tuple[pd.DataFrame, str]:
    """Theory points of the stores, or the paper's world computed here when there are none."""
    frame = sources.kind("theory")
    if not frame.empty:
        from synthmodel.population import THEORY_DEFAULTS

        for key, default in THEORY_DEFAULTS.items():  # keys a grid left out took the engine's defaults
            frame[key] = frame[key].fillna(default) if key in frame else default
        return frame, "sweep store"
    if not sources.compute_missing:
        raise MissingData("no theory points in the stores", THEORY_COMMAND)
    try:
        if "theory" not in sources.computed:  # computed once for every figure of this run
            eps = np.linspace(0.0, 0.48, 25) * DEFAULT_WORLD["mu"]
            sources.computed["theory"] = compute_theory(DEFAULT_WORLD, DEFAULT_FORMS, DEFAULT_ALPHAS, eps,
                                                        progress=sources.progress)
        return sources.computed["theory"], "population engine (no theory store)"
    except ImportError as exc:  # pragma: no cover - the engine ships with the package
        raise MissingData(f"no theory points in the stores and no population engine ({exc})") from None


def _classes(preset: str) -> int:
    """K of a theory preset (paper3 or all-but-one-K)."""
    return 3 if preset == "paper3" else int(str(preset).removeprefix("all-but-one-"))


def _form_label(key) -> str:
    attack, norm, weights = key
    return f"{attack}, {norm}, {weights}"


def _alpha_colour(alphas) -> dict[float, str]:
    return {a: style.PALETTE[i % len(style.PALETTE)] for i, a in enumerate(sorted(alphas))}


def weights_vs_eps(sources: Sources, out: Path) -> list[Path]:
    """Optimal w1, w2 (top) and w2/w1 (bottom) against eps for each formalisation; eps0 / eps1 marked."""
    frame, origin = theory_frame(sources)
    forms = list(frame.groupby(FORMALISATION, sort=True))
    colours = _alpha_colour(frame["alpha"].unique())
    fig, axes = style.figure(ncols=len(forms), nrows=2, width=3.0, height=2.4, sharex="col")
    for col, (key, group) in enumerate(forms):
        top, bottom = axes[0, col], axes[1, col]
        for alpha, curve in group.groupby("alpha"):
            curve = curve.sort_values("eps")
            colour = colours[alpha]
            label = "AT" if alpha == 0 else f"AT + LS $\\alpha$={alpha:g}"
            top.plot(curve["eps"], curve["w1"], color=colour, ls="-")
            top.plot(curve["eps"], curve["w2"], color=colour, ls="--")
            bottom.plot(curve["eps"], finite(curve["ratio"]), color=colour, label=label)
            threshold = curve["eps0"].iloc[0] if alpha == 0 else curve["eps1"].iloc[0]
            if threshold is not None and np.isfinite(float(threshold)):
                for ax in (top, bottom):
                    ax.axvline(float(threshold), color=colour, ls=":", lw=1)
                name = "$\\epsilon_0$" if alpha == 0 else "$\\epsilon_1$"
                bottom.annotate(f"{name}={float(threshold):.3f}", (float(threshold), 0.02), color=colour,
                                xycoords=("data", "axes fraction"), fontsize=7, rotation=90, ha="right", va="bottom")
        top.axhline(0, color="0.5", lw=0.6)
        bottom.axhline(0, color="0.5", lw=0.6)
        top.set_title(_form_label(key))
        top.set_ylabel("optimal weight")
        bottom.set_ylabel("$w_2 / w_1$")
        bottom.set_xlabel("$\\epsilon$ (input units)")
    from matplotlib.lines import Line2D

    handles, labels = axes[1, 0].get_legend_handles_labels()
    handles += [Line2D([], [], color="0.3", ls="-"), Line2D([], [], color="0.3", ls="--"),
                Line2D([], [], color="0.3", ls=":")]
    labels += ["$w_1$ (top)", "$w_2$ (top)", "threshold $\\epsilon_0$ / $\\epsilon_1$"]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=4)
    fig.suptitle(f"Optimal weights of the tied model ({origin})", fontsize=9)
    return style.save(fig, out, "theory_weights")


def cas_vs_eps(sources: Sources, out: Path) -> list[Path]:
    """Population CAS of the optimal tied model on clean and l_inf adversarial inputs against eps."""
    frame, origin = theory_frame(sources)
    forms = list(frame.groupby(FORMALISATION, sort=True))
    colours = _alpha_colour(frame["alpha"].unique())
    fig, axes = style.figure(ncols=len(forms), width=3.0, height=2.8, sharey=True)
    for col, (key, group) in enumerate(forms):
        ax = axes[0, col]
        for alpha, curve in group.groupby("alpha"):
            curve = curve.sort_values("eps")
            label = "AT" if alpha == 0 else f"AT + LS $\\alpha$={alpha:g}"
            # CAS is undefined at the zero model (no attribution direction): leave those eps out
            zero = np.maximum(np.abs(finite(curve["w1"])), np.abs(finite(curve["w2"]))) < ZERO_WEIGHT
            clean = np.where(zero, np.nan, finite(curve["cas"]))
            ax.plot(curve["eps"], clean, color=colours[alpha], label=label)
            if "cas_adv" in curve:
                adversarial = np.where(zero, np.nan, finite(curve["cas_adv"]))
                if not np.allclose(adversarial, clean, equal_nan=True):  # l_inf on this world: identical
                    ax.plot(curve["eps"], adversarial, color=colours[alpha], ls="--", label=f"{label}, adversarial")
        ax.set_title(_form_label(key))
        ax.set_xlabel("$\\epsilon$ (input units)")
    classes = sorted({_classes(preset) for preset in frame["preset"]})
    axes[0, 0].set_ylabel("population CAS\n(range 0 to K(K-1)"
                          + (f" = {classes[0] * (classes[0] - 1)})" if len(classes) == 1 else ")"))
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)))
    # why the adversarial curves coincide (synthmodel.population.population_cas): the l_inf worst case moves
    # every feature by -eps sign(w); with w1, w2 of one sign both attribution entries scale by (mu - eps) / mu,
    # and C is a ratio of their squares
    fig.suptitle(f"CAS of the optimal tied model ({origin}), clean inputs. On $\\ell_\\infty$ adversarial inputs "
                 "every feature mean moves to $\\mu - \\epsilon$ when $w_1, w_2$ share a sign;\nC, a ratio, is then "
                 "unchanged and the adversarial curve is the clean one (drawn dashed only where $w_1, w_2$ differ in "
                 "sign)", fontsize=8)
    return style.save(fig, out, "theory_cas")


def claim2_accuracy(sources: Sources, out: Path) -> list[Path]:
    """Robust accuracy against w2/w1 at fixed eps, pairwise and scorewise adversary (Claim 2: it rises on [0, 1])."""
    from synthmodel import population as pop

    frame = sources.kind("theory")
    if frame.empty and not sources.compute_missing:
        raise MissingData("no theory points in the stores", THEORY_COMMAND)
    world = dict(DEFAULT_WORLD)
    if not frame.empty:
        first = frame.iloc[0]
        world = {"preset": first["preset"], "mu": float(first["mu"]), "sigma": float(first["sigma"])}
    model = pop.world_from(world["preset"], mu=world["mu"], sigma=world["sigma"])
    ratios = np.linspace(0.0, 1.5, 61)
    fig, axes = style.figure(ncols=2, nrows=2, width=3.2, height=2.5, sharex=True)
    for row, adversary in enumerate(("pairwise", "scorewise")):
        for i, norm in enumerate(("linf", "l2")):
            ax = axes[row, i]
            top = 0.5 if norm == "linf" else 0.5 * np.sqrt(2)
            for j, fraction in enumerate(CLAIM2_FRACTIONS):
                eps = fraction * top * world["mu"]
                acc = pop.robust_accuracy(model, np.ones_like(ratios), ratios, np.full_like(ratios, eps), norm,
                                          adversary=adversary).value
                ax.plot(ratios, acc, color=style.PALETTE[j], marker=style.MARKERS[j], markevery=10, ms=3)
            ax.axvspan(0, 1, color="0.9", zorder=0)
            if row == 1:
                ax.set_xlabel("$w_2 / w_1$")
            ax.set_ylabel("robust accuracy")
            who = "joint / logitwise / pgd" if adversary == "pairwise" else "scorewise"
            ax.set_title(f"{who}, {norm}", fontsize=8)
    # one legend below the panels (inside one it hid curves and the x label): colour = the same fraction of
    # each norm's largest radius, both radii named
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=style.PALETTE[j], marker=style.MARKERS[j], ms=3)
               for j in range(len(CLAIM2_FRACTIONS))] + [Patch(color="0.9")]
    labels = [f"$\\epsilon$ = {f * 0.5 * world['mu']:.3g} ($\\ell_\\infty$), {f * 0.5 * np.sqrt(2) * world['mu']:.3g} "
              "($\\ell_2$)" for f in CLAIM2_FRACTIONS] + ["Claim 2 range $[0, w_1]$"]
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle(f"{world['preset']}, $\\mu$={world['mu']:g}, $\\sigma$={world['sigma']:g}: exact robust accuracy "
                 "of the tied model (grey: Claim 2's range $[0, w_1]$)", fontsize=9)
    return style.save(fig, out, "claim2_accuracy")


_VERDICT_MARK = {"holds": ("o", "#009E73"), "holds in a weaker form": ("o", "#E69F00"), "fails": ("x", "#D55E00"),
                 "undecided": ("$?$", "0.4"), "not computed": ("", "0.6")}


def proofs_check_table(path: Path | None = None) -> dict:
    """The default table of ``python -m proofs_check`` (``proofs_check/expected.json``, its ``--summary``)."""
    import json

    path = path or Path(__file__).resolve().parents[1] / "proofs_check" / "expected.json"
    if not path.exists():
        raise MissingData(f"no proofs_check table at {path}", f"python -m proofs_check --summary > {path}")
    return json.loads(path.read_text())


def thresholds(sources: Sources, out: Path) -> list[Path]:
    """eps0 and eps1 of every formalisation of the default proofs_check table, with the three claims' verdicts."""
    table = proofs_check_table()
    rows = table["formalisations"]
    half = table["world"]["mu"] / 2
    fig, axes = style.figure(ncols=2, width=4.2, height=0.16 * len(rows) + 1.2, sharey=True,
                             gridspec_kw={"width_ratios": [3, 1]})
    ax, verdict_ax = axes[0, 0], axes[0, 1]
    labels = []
    for i, row in enumerate(rows):
        y = len(rows) - 1 - i
        labels.append(f"{row['attack']} {row['norm']} {row['weights']}" + (" 0-1" if row["objective"] == "zero-one"
                                                                             else ""))
        ax.axhline(y, color="0.92", lw=0.6, zorder=0)
        if row["eps0"] is not None:
            ax.plot(row["eps0"], y, "o", color=style.PALETTE[0], ms=4)
        if row["eps1"] is not None:
            ax.plot(row["eps1"], y, "^", color=style.PALETTE[1], ms=4, mfc="none")
        for j, claim in enumerate(("1", "2", "3")):
            marker, colour = _VERDICT_MARK[row["claims"][claim]["verdict"]]
            if marker:
                verdict_ax.plot(j, y, ls="", marker=marker, color=colour, ms=3.5)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels[::-1], fontsize=5)
    ax.set_xlim(0, half)
    ax.set_xlabel("$\\epsilon$ (input units)")
    ax.set_title("thresholds ($\\circ$ $\\epsilon_0$ hard labels, $\\triangle$ $\\epsilon_1$ label smoothing)",
                 fontsize=7)
    verdict_ax.set_xticks([0, 1, 2])
    verdict_ax.set_xticklabels(["claim 1", "claim 2", "claim 3"], fontsize=6)
    verdict_ax.set_xlim(-0.6, 2.6)
    verdict_ax.set_title("verdicts", fontsize=7)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker=m or "s", color=c, mfc=c if m else "none") for m, c in
               _VERDICT_MARK.values()]
    fig.legend(handles, list(_VERDICT_MARK), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=5, fontsize=6)
    world = table["world"]
    fig.suptitle(f"proofs_check default table: {world['preset']}, $\\mu$={world['mu']:g}, "
                 f"$\\sigma$={world['sigma']:g}, "
                 f"label smoothing $\\alpha$={table['alpha']}", fontsize=8)
    return style.save(fig, out, "theory_thresholds")
