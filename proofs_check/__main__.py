"""``python -m proofs_check``: the table (or JSON) of claims x formalisations."""

from __future__ import annotations

import argparse
import json
import math
import sys

from synthmodel.cli import ArgumentParser
from synthmodel.population import ATTACKS, WEIGHTS, Formalisation, world_from

from .claims import check_claim2, check_formalisation, formalisations
from .derivations import first_order_condition, worst_case


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m proofs_check",
                       description="Verdicts on the paper's claims 1-3 per formalisation (attack, norm, "
                                   "weight constraint), computed by the exact population engine.")
    p.add_argument("--preset", default="paper3",
                   help="paper3 | all-but-one-K (any K >= 3; beyond K = 4 hard labels only: claim 3 not computed)")
    p.add_argument("--mu", type=float, default=1.0, help="feature mean (default %(default)s)")
    p.add_argument("--sigma", type=float, default=0.5, help="feature std (default %(default)s)")
    p.add_argument("--alpha", type=float, default=0.1, help="label smoothing for claim 3 (default %(default)s)")
    p.add_argument("--weight-decay", type=float, default=0.01, help="lambda of the weight-decay formalisation")
    p.add_argument("--weights", nargs="+", choices=list(WEIGHTS), default=None, help="constraints (default: all)")
    p.add_argument("--attacks", nargs="+", choices=list(ATTACKS), default=None, help="attacks (default: all)")
    p.add_argument("--teacher", nargs=3, type=float, default=None, metavar=("A1", "A2", "T"),
                   help="claim 3 with distillation from the tied teacher (A1, A2) at temperature T in place of "
                        "label smoothing (--alpha is then unused); a sharp teacher (|A|/T large) is slow")
    p.add_argument("--joint-l2-soft", action="store_true",
                   help="also compute claim 3 for joint l2 (the adversary's maximum is searched per quadrature "
                        "node and its ties located: about 2 min per weight constraint)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def run(args: argparse.Namespace) -> dict:
    from tqdm.auto import tqdm

    if not (math.isfinite(args.alpha) and 0 < args.alpha < 1):
        raise ValueError(f"alpha must be in (0, 1), got {args.alpha}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay > 0):
        raise ValueError(f"weight-decay must be > 0, got {args.weight_decay}")
    teacher = tuple(args.teacher) if args.teacher else None
    if teacher is not None:  # the same checks as the engine's, before any long computation
        Formalisation(loss="kd", teacher_w1=teacher[0], teacher_w2=teacher[1], temperature=teacher[2])
    world = world_from(args.preset, mu=args.mu, sigma=args.sigma)
    specs = formalisations(args.weight_decay, tuple(args.weights) if args.weights else None,
                           tuple(args.attacks) if args.attacks else None)
    claim2 = {norm: check_claim2(world, norm) for norm in ("linf", "l2")}
    rows = []
    for spec in tqdm(specs, disable=args.quiet, file=sys.stderr, desc="formalisations"):
        slow = spec["attack"] == "joint" and spec["norm"] == "l2" and teacher is None and not args.joint_l2_soft
        row = check_formalisation(world, spec, args.alpha, teacher=teacher,
                                  skip_soft="slow: pass --joint-l2-soft to compute it" if slow else None)
        if row["claims"].get("2") is None:
            row["claims"]["2"] = claim2[spec["norm"]]["verdict"]
        row["claims"] = {key: row["claims"][key] for key in ("1", "2", "3")}
        rows.append(row)
    wc = worst_case(world.k)
    return {"world": {"preset": args.preset, "k": world.k, "mu": world.mu, "sigma": world.sigma},
            "alpha": None if teacher else args.alpha, "teacher": list(teacher) if teacher else None,
            "symbolic": {"linf_radius": str(wc["linf_radius"]), "l2_radius": str(wc["l2_radius"]),
                         "linf_separable_joint_equals_logitwise": bool(wc["separable"]),
                         "dL_dw2_at_0_integrand_linf": str(first_order_condition(world.k)["integrand"])},
            "claim2": {norm: {k: v for k, v in c.items() if k != "slopes"} for norm, c in claim2.items()},
            "formalisations": rows}


def _table(result: dict) -> str:
    soft = (f"distillation from teacher (a1, a2, T) = {tuple(result['teacher'])}" if result["teacher"]
            else f"label smoothing alpha={result['alpha']}")
    lines = [f"world {result['world']}, claim 3 with {soft}",
             f"symbolic: {result['symbolic']}", ""]
    for row in result["formalisations"]:
        e0 = "none" if row["eps0"] is None else f"{row['eps0']:.6f}"
        e1 = "none" if row["eps1"] is None else f"{row['eps1']:.6f}"
        lines.append(f"{row['attack']:9s} {row['norm']:4s} {row['weights']:13s} eps0={e0:9s} eps1={e1:9s}")
        for key, verdict in row["claims"].items():
            lines.append(f"    claim {key}: {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1) if args.json else _table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
