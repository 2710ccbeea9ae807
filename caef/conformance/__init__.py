"""``caef conformance --occse PATH --psa PATH [--json OUT]``: caef against the official code, component by component.

Why: nobody can rerun the paper's VOC protocol cheaply, so the strongest evidence that caef computes what OC-CSE and
PSA compute is to run both on the same seeded weights and inputs. The user provides local clones of the official
repositories (caef never ships their code); each component of :mod:`caef.conformance.components` is compared on the
CPU and the command prints ``component | metric | value | tolerance | PASS/FAIL``, the clones' commits and every
compatibility patch it applied in its own process, and writes the same as JSON (atomically). Exit status 0 when
every component passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import time
import traceback
import warnings
from collections.abc import Sequence
from typing import Any

from caef.conformance.components import COMPONENTS
from caef.conformance.harness import Context, Result
from caef.conformance.reference import Patches, check_clone, clone_commit
from caef.errors import CaefError


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="caef conformance",
        description="Compare caef with local clones of the official OC-CSE and PSA code (CPU, about two minutes).",
    )
    parser.add_argument("--occse", help="local clone of https://github.com/KAIST-vilab/OC-CSE")
    parser.add_argument("--psa", help="local clone of https://github.com/jiwoon-ahn/psa")
    parser.add_argument("--json", help="also write the table as JSON to this file (atomically)")
    parser.add_argument(
        "--only", help=f"comma-separated components (default: all): {', '.join(COMPONENTS)}", default=None
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and inputs (default 0)")
    return parser.parse_args(argv)


def selected(only: str | None) -> list[str]:
    if not only:
        return list(COMPONENTS)
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in COMPONENTS]
    if unknown:
        raise CaefError(f"--only: unknown component(s) {', '.join(unknown)}; choose from {', '.join(COMPONENTS)}")
    return names


def run(ctx: Context, names: Sequence[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows of every selected component and the patches applied. A component that raises is one FAIL row
    carrying the error (the reference code did not run as expected), not a crash of the whole command."""
    rows: list[dict[str, Any]] = []
    with Patches() as patches, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old code's deprecation warnings would bury the table
        for name in names:
            start = time.perf_counter()
            try:
                results = COMPONENTS[name](ctx)
            except Exception as exc:  # noqa: BLE001 -- any failure of either side is this component's FAIL
                where = traceback.extract_tb(exc.__traceback__)[-1]
                note = f"{type(exc).__name__}: {exc} ({where.filename}:{where.lineno})"
                results = [Result(name, "error", None, None, note)]
            seconds = time.perf_counter() - start
            rows += [{**row_of(result), "group": name, "seconds": round(seconds, 2)} for result in results]
    return rows, patches.applied


def row_of(result: Result) -> dict[str, Any]:
    passed = result.metric != "error" and result.passed
    return {
        "component": result.component,
        "metric": result.metric,
        "value": result.value,
        "tolerance": result.tolerance,
        "status": "PASS" if passed else "FAIL",
        "note": result.note,
    }


def format_value(row: dict[str, Any], key: str) -> str:
    value = row[key]
    if value is None:
        return "-"
    if row["metric"] == "label agreement":
        return f"{value:.2f} %"
    return f"{value:.2e}" if value else "0"


def table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| component | metric | value | tolerance | result |", "|---|---|---|---|---|"]
    for row in rows:
        tolerance = format_value(row, "tolerance")
        bound = (">= " if row["metric"] == "label agreement" else "<= ") + tolerance if tolerance != "-" else "-"
        metric = row["metric"] + (f" ({row['note']})" if row["status"] == "FAIL" and row["note"] else "")
        lines.append(f"| {row['component']} | {metric} | {format_value(row, 'value')} | {bound} | {row['status']} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    occse, psa = check_clone("occse", args.occse), check_clone("psa", args.psa)
    names = selected(args.only)
    ctx = Context(occse=occse, psa=psa, seed=args.seed)
    commits = {"occse": clone_commit(occse), "psa": clone_commit(psa)}
    rows, patches = run(ctx, names)
    print(f"OC-CSE {occse} @ {commits['occse']}\nPSA    {psa} @ {commits['psa']}\n")
    print(table(rows))
    print("\npatches applied in this process only:\n" + "\n".join(f"  - {p}" for p in patches))
    failed = [row["component"] for row in rows if row["status"] == "FAIL"]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} PASS" + (f"; FAIL: {', '.join(failed)}" if failed else ""))
    if args.json:
        from caef.io import write_json

        write_json(
            args.json,
            {
                "occse": {"path": str(occse), "commit": commits["occse"]},
                "psa": {"path": str(psa), "commit": commits["psa"]},
                "seed": args.seed,
                "rows": rows,
                "patches": patches,
                "passed": not failed,
            },
        )
    return 0 if not failed else 1
