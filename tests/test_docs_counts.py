"""The counts the documentation states agree with the code that produces them.

Each count of points, rows, trainings or tests in README.md, docs/*.md and the packages' READMEs is read out of
the text and compared with what the code computes (the preset grids, proofs_check's pinned table, the test
files); and every number followed by such a word in README.md and docs/*.md is either one of those counts or
listed below as not being one, so a new typed count cannot slip in unchecked.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

from synthmodel.sweep import load_plugins, preset_grid

ROOT = Path(__file__).resolve().parents[1]


def _grid_points(name: str) -> list[dict]:
    load_plugins()
    return [point.params for point in preset_grid(name).points]


def theory_points() -> int:
    return len(_grid_points("paper-theory"))


def theory_eps_values() -> int:
    return len({point["eps"] for point in _grid_points("paper-theory")})


def dynamics_points() -> int:
    return len(_grid_points("paper-dynamics"))


def dynamics_trainings() -> int:
    """One training per point, two for a distillation point (it trains its own teacher first)."""
    return sum(2 if point.get("teacher_from") == "at_best" else 1 for point in _grid_points("paper-dynamics"))


def distillation_points() -> int:
    return sum(point.get("teacher_from") == "at_best" for point in _grid_points("paper-dynamics"))


def fmnist_points() -> int:
    return len(_grid_points("paper-fmnist"))


def proofs_check_rows() -> int:
    return len(json.loads((ROOT / "proofs_check" / "expected.json").read_text())["formalisations"])


def cuda_tests() -> int:
    """Test cases of tests/test_real_data_cuda.py: each test function times its parametrize lists' lengths."""
    tree = ast.parse((ROOT / "tests" / "test_real_data_cuda.py").read_text())
    total = 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
            cases = 1
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "attr", "") == "parametrize":
                    cases *= len(decorator.args[1].elts)  # the cases: a list literal
            total += cases
    return total


# (file, pattern whose group 1 is the count, what computes it)
COUNTS = [
    ("README.md", r"theory sweep \((\d+) points", theory_points),
    ("README.md", r"`python -m proofs_check`, (\d+) formalisations", proofs_check_rows),
    ("README.md", r"runs all three experiments \((\d+) points", dynamics_points),
    ("docs/EXPERIMENTS.md", r"all seeds; (\d+) points", dynamics_points),
    ("docs/EXPERIMENTS.md", r"(\d+) trainings because", dynamics_trainings),
    ("docs/EXPERIMENTS.md", r"each of\s+the (\d+) distillation points", distillation_points),
    ("docs/SWEEP.md", r"eps on (\d+) values", theory_eps_values),
    ("docs/EXPERIMENTS.md", r"`paper-fmnist` \((\d+) points", fmnist_points),
    ("README.md", r"paper-fmnist` \((\d+) points", fmnist_points),
    ("docs/dynamics_tables.md", r"# dynamics: all, (\d+) points", dynamics_points),
    ("proofs_check/README.md", r"the default table, (\d+) rows", proofs_check_rows),
    ("real_data/README.md", r"test_real_data_cuda.py` \((\d+) tests", cuda_tests),
]

# numbers before these words in README.md and docs/*.md that are not counts of the code's objects
NOT_COUNTS = [
    "sampled (1e5 points)",          # a baseline's sample size, in a benchmark line
    "1-5 points above",               # accuracy percentage points
    "1-5 points, but",                # accuracy percentage points
    "ring-10 rows",                   # the name of a world
]
COUNT_WORDS = r"(\d[\d.e]*) (points|point|rows|formalisations|tests|figures|grids|presets|trainings)\b"


@pytest.mark.parametrize("doc, pattern, count", COUNTS, ids=[f"{d}:{c.__name__}" for d, _, c in COUNTS])
def test_a_stated_count_is_the_codes(doc, pattern, count):
    text = (ROOT / doc).read_text()
    found = re.findall(pattern, text)
    assert found, f"{doc} no longer says {pattern!r}: update COUNTS with the text"
    assert {int(n) for n in found} == {count()}, f"{doc}: {pattern!r} says {found}, the code gives {count()}"


def test_every_count_in_the_docs_is_checked():
    checked = {(doc, m.start(1)) for doc, pattern, _ in COUNTS for m in re.finditer(pattern, (ROOT / doc).read_text())}
    unchecked = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        doc = str(path.relative_to(ROOT))
        text = path.read_text()
        for match in re.finditer(COUNT_WORDS, text):
            context = text[max(0, match.start() - 20):match.end() + 15].replace("\n", " ")
            if (doc, match.start(1)) in checked or any(phrase in " ".join(context.split()) for phrase in NOT_COUNTS):
                continue
            unchecked.append(f"{doc}: ...{context}...")
    assert not unchecked, "typed counts not checked against the code (add them to COUNTS):\n" + "\n".join(unchecked)
