"""``python -m proofs_check``: the table (or JSON) of claims x formalisations."""

from __future__ import annotations

import argparse
import json
import math
import sys

from synthmodel.cli import ArgumentParser
from synthmodel.population import FORMALISATION_ATTACKS, WEIGHTS, Formalisation, world_from
from synthmodel.population.formalisation import scale_problem

from .claims import check_claim2, check_formalisation, formalisations
from .derivations import first_order_condition, worst_case
from .verdicts import to_json

DEFAULT_ALPHA = 0.1


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m proofs_check",
                       description="Verdicts on the paper's claims 1-3 per formalisation (attack, norm, "
                                   "weight constraint, objective), computed by the exact population engine.")
    p.add_argument("--preset", default="paper3",
                   help="paper3 | all-but-one-K (any K >= 3; rows the engine cannot compute say 'not computed')")
    p.add_argument("--mu", type=float, default=1.0, help="feature mean, in [0.001, 1000] (default %(default)s)")
    p.add_argument("--sigma", type=float, default=0.5, help="feature std, in [0.001, 1000] (default %(default)s)")
    p.add_argument("--alpha", type=float, default=None,
                   help=f"label smoothing for claim 3, in (0, 1) (default {DEFAULT_ALPHA}; not with --teacher)")
    p.add_argument("--weight-decay", type=float, default=0.01,
                   help="lambda of the weight-decay formalisation (default %(default)s)")
    p.add_argument("--weights", nargs="+", choices=list(WEIGHTS), default=None, help="constraints (default: all)")
    p.add_argument("--attacks", nargs="+", choices=list(FORMALISATION_ATTACKS), default=None,
                   help="attacks (default: all)")
    p.add_argument("--teacher", nargs=3, type=float, default=None, metavar=("A1", "A2", "T"),
                   help="claim 3 with distillation from the tied teacher (A1, A2) at temperature T in place of "
                        "label smoothing (not with --alpha); a sharp teacher (|A|/T large) is slow")
    p.add_argument("--joint-l2-soft", action="store_true",
                   help="also compute claim 3 for joint l2 (the adversary's maximum is searched per quadrature "
                        "node and its ties located: about 2 min per weight constraint)")
    p.add_argument("--no-zero-one", action="store_true", help="leave out the rows of the robust 0-1 objective")
    p.add_argument("--json", action="store_true", help="print JSON (with every claim's evidence) instead of a table")
    p.add_argument("--summary", action="store_true",
                   help="print the compact JSON of verdicts, reasons and thresholds (proofs_check/expected.json)")
    p.add_argument("--markdown", action="store_true", help="print the verdicts as a Markdown table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def check_args(args: argparse.Namespace) -> None:
    """Every impossible or contradictory option, before any computation (ValueError)."""
    for name in ("mu", "sigma"):
        value = getattr(args, name)
        if not (math.isfinite(value) and value > 0):
            raise ValueError(f"--{name} must be finite and > 0, got {value}")
    problem = scale_problem(args.mu, args.sigma)
    if problem:
        raise ValueError(f"--{problem}")
    if args.teacher is not None and args.alpha is not None:
        raise ValueError("--alpha and --teacher both set claim 3's soft targets: give one of them")
    if args.alpha is not None and not (math.isfinite(args.alpha) and 0 < args.alpha < 1):
        raise ValueError(f"--alpha must be in (0, 1), got {args.alpha}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay > 0):
        raise ValueError(f"--weight-decay must be > 0, got {args.weight_decay}")
    if args.teacher is not None:  # the same checks as the engine's
        Formalisation(loss="kd", teacher_w1=args.teacher[0], teacher_w2=args.teacher[1], temperature=args.teacher[2])
    world_from(args.preset, mu=args.mu, sigma=args.sigma)


def run(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    check_args(args)
    alpha = DEFAULT_ALPHA if args.alpha is None else args.alpha
    teacher = tuple(args.teacher) if args.teacher else None
    world = world_from(args.preset, mu=args.mu, sigma=args.sigma)
    specs = formalisations(args.weight_decay, tuple(args.weights) if args.weights else None,
                           tuple(args.attacks) if args.attacks else None, zero_one=not args.no_zero_one)
    claim2: dict[tuple[str, str], object] = {}
    rows = []
    for spec in tqdm(specs, disable=args.quiet, file=sys.stderr, desc="formalisations"):
        slow = spec["attack"] == "joint" and spec["norm"] == "l2" and teacher is None and not args.joint_l2_soft
        row = check_formalisation(world, spec, alpha, teacher=teacher,
                                  skip_soft="slow: pass --joint-l2-soft to compute it" if slow else None)
        adversary = "scorewise" if spec["attack"].startswith("scorewise") else "pairwise"
        key = (adversary, spec["norm"])
        if key not in claim2:
            claim2[key] = check_claim2(world, spec["norm"], adversary)
        row["claims"] = {"1": row["claims"]["1"], "2": claim2[key], "3": row["claims"]["3"]}
        rows.append(row)
    wc = worst_case(world.k)
    return {"world": {"preset": args.preset, "k": world.k, "mu": world.mu, "sigma": world.sigma},
            "alpha": None if teacher else alpha, "teacher": list(teacher) if teacher else None,
            "symbolic": {"linf_radius": str(wc["linf_radius"]), "l2_radius": str(wc["l2_radius"]),
                         "scorewise_linf_radius": str(wc["scorewise_linf_radius"]),
                         "scorewise_l2_radius": str(wc["scorewise_l2_radius"]),
                         "linf_separable_joint_equals_logitwise": bool(wc["separable"]),
                         "dL_dw2_at_0_integrand_linf": str(first_order_condition(world.k)["integrand"])},
            "formalisations": rows}


def as_json(result: dict) -> dict:
    """The result as plain JSON (claims as {verdict, reason, evidence})."""
    out = dict(result)
    out["formalisations"] = [{**row, "claims": {k: c.to_dict() for k, c in row["claims"].items()}}
                             for row in result["formalisations"]]
    return to_json(out)


def summary(result: dict) -> dict:
    """Verdicts, reasons and thresholds of every row, without evidence (what proofs_check/expected.json pins)."""
    keys = ("attack", "norm", "weights", "objective", "loss", "alpha", "eps0", "eps1")
    return to_json({"world": result["world"], "alpha": result["alpha"], "teacher": result["teacher"],
                    "formalisations": [{**{k: row.get(k) for k in keys},
                                        "claims": {k: {"verdict": c.verdict, "reason": c.reason}
                                                   for k, c in row["claims"].items()}}
                                       for row in result["formalisations"]]})


def markdown(result: dict) -> str:
    """One Markdown row per formalisation: thresholds and the three verdicts (reasons: ``--json``)."""
    fmt = lambda e: "none" if e is None else f"{e:.4g}"  # noqa: E731
    lines = ["| attack | norm | weights | objective | eps0 | eps1 | claim 1 | claim 2 | claim 3 |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in result["formalisations"]:
        c = row["claims"]
        lines.append(f"| {row['attack']} | {row['norm']} | {row['weights']} | {row['objective']} | {fmt(row['eps0'])} "
                     f"| {fmt(row['eps1'])} | " + " | ".join(c[k].verdict.value for k in ("1", "2", "3")) + " |")
    return "\n".join(lines)


def _table(result: dict) -> str:
    soft = (f"distillation from teacher (a1, a2, T) = {tuple(result['teacher'])}" if result["teacher"]
            else f"label smoothing alpha={result['alpha']}")
    lines = [f"world {result['world']}, claim 3 with {soft}", f"symbolic: {result['symbolic']}", ""]
    for row in result["formalisations"]:
        e0 = "none" if row["eps0"] is None else f"{row['eps0']:.6f}"
        e1 = "none" if row["eps1"] is None else f"{row['eps1']:.6f}"
        lines.append(f"{row['attack']:18s} {row['norm']:4s} {row['weights']:13s} {row['objective']:13s} "
                     f"eps0={e0:9s} eps1={e1:9s}")
        for key, claim in row["claims"].items():
            lines.append(f"    claim {key}: {claim.line()}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.markdown:
        print(markdown(result))
    elif args.summary:
        print(json.dumps(summary(result), indent=1))
    elif args.json:
        print(json.dumps(as_json(result), indent=1))
    else:
        print(_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
