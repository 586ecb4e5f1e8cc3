"""Scoring speed: a 149,394-row iNat2018 submission (3 labels, 8,142 classes) scored in ≤ 1 s, ≥ 10× faster
than a plain pandas row-by-row scorer run side by side in the same process, and ``inatcomp score`` as a whole
process (interpreter start, imports, parsing, scoring, printing) in ≤ 1.5× the in-process scoring time.

Both scorers read the same two CSVs from disk (submission and solution) and compute the Public, Private and
overall top-3 error; the figures are checked to agree before the times count. The whole-process runs alternate
with in-process runs, so both see the same machine.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import Result, run_script
from inatcomp.score.scoring import score_file

ROWS = 149_394
CLASSES = 8_142
LABELS = 3


def write_files(folder: Path, rows: int, *, seed: int = 0) -> tuple[Path, Path]:
    """Write a random solution and a submission (about 70 % top-3 hits) of ``rows`` images; returns their paths."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(rows)
    expected = rng.integers(0, CLASSES, rows)
    # three distinct labels per row: a random start and two random non-zero steps modulo CLASSES
    first = rng.integers(0, CLASSES, rows)
    step = rng.integers(1, CLASSES // 2, rows)
    labels = np.stack([first, (first + step) % CLASSES, (first + 2 * step) % CLASSES], axis=1)
    hit = rng.random(rows) < 0.7
    column = rng.integers(0, LABELS, rows)
    clash = (labels == expected[:, None]).any(axis=1)
    put = hit & ~clash
    labels[put, column[put]] = expected[put]
    usage = np.where(rng.random(rows) < 0.3, "Public", "Private")
    solution = folder / "solution.csv"
    pd.DataFrame({"id": ids, "expected": expected, "usage": usage}).to_csv(solution, index=False)
    submission = folder / "submission.csv"
    predicted = [" ".join(map(str, row)) for row in labels.tolist()]
    pd.DataFrame({"id": ids, "predicted": predicted}).to_csv(submission, index=False)
    return submission, solution


def baseline_score(submission: Path, solution: Path, k: int = LABELS) -> dict[str, float]:
    """The plain scorer: pandas reads, then ``iterrows`` splitting each row's labels."""
    sub = pd.read_csv(submission)
    sol = pd.read_csv(solution)
    expected = dict(zip(sol["id"], sol["expected"]))
    usage = dict(zip(sol["id"], sol["usage"]))
    errors: dict[str, list[int]] = {"Public": [], "Private": []}
    for _, row in sub.iterrows():
        labels = [int(label) for label in row["predicted"].split(" ")][:k]
        errors[usage[row["id"]]].append(0 if expected[row["id"]] in labels else 1)
    every = errors["Public"] + errors["Private"]
    return {
        "public": float(np.mean(errors["Public"])),
        "private": float(np.mean(errors["Private"])),
        "all": float(np.mean(every)),
    }


def inatcomp_command() -> list[str]:
    """The ``inatcomp`` console script beside this interpreter (what a user runs), else ``python -m``."""
    script = Path(sys.executable).with_name("inatcomp")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "inatcomp.cli"]


def whole_process_seconds(submission: Path, solution: Path, expected: dict[str, float]) -> float:
    """Wall time of one ``inatcomp score --json`` process; its printed errors must equal ``expected``."""
    start = time.perf_counter()
    done = subprocess.run(
        [*inatcomp_command(), "score", str(submission), "--solution", str(solution), "--json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    printed = json.loads(done.stdout)["official"]
    if any(abs(printed[key] - value) > 1e-12 for key, value in expected.items()):
        raise AssertionError(f"inatcomp score printed {printed}, in-process scoring gave {expected}")
    return seconds


def import_seconds(code: str) -> float:
    """Wall time of an interpreter that runs ``code`` and exits (the floor under any whole-process figure)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def run(*, quick: bool = False) -> list[Result]:
    """Measure the goal; ``quick`` uses 20,000 rows (for smoke runs, not for the record)."""
    rows = 20_000 if quick else ROWS
    with tempfile.TemporaryDirectory() as tmp:
        submission, solution = write_files(Path(tmp), rows)
        score_file(submission, solution)  # warm-up (imports, page cache)
        ours = []
        for _ in range(3):
            start = time.perf_counter()
            result = score_file(submission, solution)
            ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = baseline_score(submission, solution)
        baseline_seconds = time.perf_counter() - start
        expected = {key: result.error(key) for key in ("public", "private", "all")}
        whole_process_seconds(submission, solution, expected)  # warm-up: the interpreter's files in the cache
        process, inner, numpy_floor, imports = [], [], [], []
        for _ in range(5):
            numpy_floor.append(import_seconds("import numpy"))
            imports.append(import_seconds("import inatcomp.cli, inatcomp.score.report"))
            process.append(whole_process_seconds(submission, solution, expected))
            start = time.perf_counter()
            score_file(submission, solution)
            inner.append(time.perf_counter() - start)
    for key, value in reference.items():
        if abs(result.error(key) - value) > 1e-12:
            raise AssertionError(f"scores differ on {key}: {result.error(key)} vs baseline {value}")
    seconds = min(ours)
    speedup = baseline_seconds / seconds
    return [
        Result(
            goal=f"score a {rows:,}-row 3-label submission (with its solution) in ≤ 1 s",
            figure=f"{seconds:.3f} s (best of 3; {rows / seconds:,.0f} rows/s)",
            ratio=seconds / 1.0,
            met=seconds <= 1.0,
        ),
        Result(
            goal="scoring ≥ 10× faster than a pandas iterrows scorer",
            figure=f"{seconds:.3f} s against {baseline_seconds:.2f} s (speed-up {speedup:.0f}×)",
            ratio=speedup,
            met=speedup >= 10.0,
        ),
        Result(
            goal="whole-process `inatcomp score` ≤ 1.5× the in-process scoring time",
            figure=f"process {min(process):.3f} s, in-process {min(inner):.3f} s (best of 5 each, alternating); "
            f"an interpreter importing numpy alone takes {min(numpy_floor):.3f} s, importing the command's "
            f"modules {min(imports):.3f} s",
            ratio=min(process) / min(inner),
            met=min(process) <= 1.5 * min(inner),
        ),
    ]


def main() -> None:
    """Print the results."""
    run_script(run, __doc__)


if __name__ == "__main__":
    main()
