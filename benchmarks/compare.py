"""Compare two result files: ``fastgan bench --compare A.json B.json [--threshold 0.05]``
(also ``python -m fastgan.benchmarks.compare A.json B.json``).

One line per (case, dtype, provider) present in either file: median ms in A, in B, and B/A
(above 1 = B is slower). A ratio above ``1 + threshold`` is flagged ``REGRESSION``, one below
``1 - threshold`` ``faster``. Records that errored show their error instead of a time; a key
present in one file only is listed as such. Exit status 0 whatever the ratios (this is a
report, not a gate); 2 with a one-line message for a missing file or a document that does
not follow the schema (DESIGN.md section 4).

Both files should come from the same kind of machine: a ratio between runs on different
GPUs or drivers measures the machines, not the code (the header prints both environments).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import harness


def load_result(path: str) -> dict:
    """Read and validate a result document; ValueError with a clear message otherwise."""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    try:
        with open(path) as f:
            doc = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc})") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a result document (top level is {type(doc).__name__}, expected an object)")
    try:
        harness.validate(doc)
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a valid result document: {exc}") from None
    return doc


def compare(a: dict, b: dict, threshold: float = 0.05) -> list[dict]:
    """Rows {case, dtype, provider, a_ms, b_ms, ratio, flag, note} in A's order, then B-only keys."""
    def index(doc):
        return {(r["case"], r["dtype"], r["provider"]): r for r in doc["records"]}

    ia, ib = index(a), index(b)
    keys = list(ia) + [k for k in ib if k not in ia]
    rows = []
    for key in keys:
        ra, rb = ia.get(key), ib.get(key)
        row = dict(case=key[0], dtype=key[1], provider=key[2], a_ms=ra and ra["median_ms"],
                   b_ms=rb and rb["median_ms"], ratio=None, flag="", note="")
        if ra is None:
            row["flag"], row["note"] = "only in B", (rb["error"] or "")
        elif rb is None:
            row["flag"], row["note"] = "only in A", (ra["error"] or "")
        elif row["a_ms"] and row["b_ms"]:
            row["ratio"] = row["b_ms"] / row["a_ms"]
            if row["ratio"] > 1 + threshold:
                row["flag"] = "REGRESSION"
            elif row["ratio"] < 1 - threshold:
                row["flag"] = "faster"
        else:
            row["note"] = "; ".join(f"{side}: {r['error']}" for side, r in (("A", ra), ("B", rb)) if r["error"])
            if ra["error"] and rb["error"]:
                row["flag"] = "error in both"
            elif rb["error"]:
                row["flag"] = "error in B"
            else:
                row["flag"] = "error in A"
        rows.append(row)
    return rows


def _env(doc: dict) -> str:
    return (f"{doc.get('gpu') or doc.get('device') or 'cpu'}, torch {doc.get('torch')}, triton {doc.get('triton')}, "
            f"commit {doc.get('commit')}, {doc.get('date')}")


def format_rows(rows: list[dict], a_path: str, b_path: str, a: dict, b: dict, threshold: float) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    width = max([len(r["case"]) for r in rows] + [4])
    lines = [f"A: {a_path} ({_env(a)})", f"B: {b_path} ({_env(b)})",
             f"B/A of the median time (> 1: B slower); flagged beyond +-{threshold:.0%}", "",
             f"{'case':<{width}}  {'dtype':<8}  {'provider':<14}  {'A ms':>10}  {'B ms':>10}  {'B/A':>6}  flag"]
    for r in rows:
        note = f"  ({r['note'][:80]})" if r["note"] else ""
        lines.append(f"{r['case']:<{width}}  {r['dtype']:<8}  {r['provider']:<14}  {fmt(r['a_ms'], '10.4f')}  "
                     f"{fmt(r['b_ms'], '10.4f')}  {fmt(r['ratio'], '6.3f')}  {r['flag']}{note}")
    n_reg = sum(r["flag"] == "REGRESSION" for r in rows)
    n_fast = sum(r["flag"] == "faster" for r in rows)
    n_cmp = sum(r["ratio"] is not None for r in rows)
    lines += ["", f"{n_cmp} compared: {n_reg} regression(s), {n_fast} faster, threshold {threshold:.0%}"]
    if (a.get("gpu"), a.get("torch")) != (b.get("gpu"), b.get("torch")):
        lines.append("note: A and B ran on different GPUs or torch versions; the ratios compare the machines too")
    return "\n".join(lines)


def compare_files(a_path: str, b_path: str, threshold: float = 0.05, out=None) -> int:
    out = out or sys.stdout
    if not threshold >= 0:
        print(f"error: --threshold must be >= 0, got {threshold}", file=sys.stderr)
        return 2
    try:
        a, b = load_result(a_path), load_result(b_path)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    rows = compare(a, b, threshold)
    print(format_rows(rows, a_path, b_path, a, b, threshold), file=out)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fastgan.benchmarks.compare", description=__doc__.split("\n")[0])
    p.add_argument("a", metavar="A.json")
    p.add_argument("b", metavar="B.json")
    p.add_argument("--threshold", type=float, default=0.05, help="regression threshold on B/A - 1 (default 0.05)")
    args = p.parse_args(argv)
    return compare_files(args.a, args.b, args.threshold)


if __name__ == "__main__":
    sys.exit(main())
