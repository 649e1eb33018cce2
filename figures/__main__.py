"""CLI: ``python -m figures [--out DIR] [--store DIR ...] [--real DIR ...] [--only NAME ...]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from synthmodel.atomic import check_output_dir
from synthmodel.cli import ArgumentParser

from .catalog import FIGURES, render
from .data import Sources, discover_stores


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(prog="python -m figures",
                       description="Regenerate every figure (PNG and PDF) from sweep stores and real-data CAS "
                                   "folders; figures whose data is absent are skipped with a notice.")
    p.add_argument("--out", default="results/figures", help="output folder (default %(default)s)")
    p.add_argument("--store", nargs="+", default=None, metavar="DIR",
                   help="sweep output folders (default: every folder under results/ holding sweep.sqlite)")
    p.add_argument("--real", nargs="+", default=[], metavar="DIR",
                   help="folders written by python -m real_data.cas --out DIR")
    p.add_argument("--only", nargs="+", default=None, metavar="NAME", help="render only these figures")
    p.add_argument("--list", action="store_true", help="list the figures and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar (there is none when stderr is no terminal)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.list:
        for name, (description, _) in FIGURES.items():
            print(f"{name:22s} {description}")
        return 0
    unknown = sorted(set(args.only or []) - set(FIGURES))
    if unknown:
        print(f"error: unknown figure {unknown[0]!r}; choose from {', '.join(FIGURES)}", file=sys.stderr)
        return 2
    out = Path(args.out)
    try:
        check_output_dir(out, "--out")
        out.mkdir(parents=True, exist_ok=True)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stores: list[Path] = []
    for folder in args.store if args.store is not None else ["results"]:
        found = discover_stores(Path(folder))
        if not found and args.store is not None:
            print(f"notice: no sweep store in {folder}", file=sys.stderr)
        stores += found
    made = render(Sources(stores=stores, real=[Path(r) for r in args.real], progress=not args.quiet), out, args.only,
                  log=lambda line: print(line, file=sys.stderr))
    for name, files in made.items():
        print(f"{name}: {', '.join(str(f) for f in files)}")
    print(f"{len(made)} figures in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
