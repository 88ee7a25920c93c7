"""`fastgan bench` (also `python -m benchmarks`): run the suite, print a table, write JSON.

    fastgan bench --quick --device cuda --json out.json
    fastgan bench --cases bias_act.lrelu --providers eager,fastgan
"""
from __future__ import annotations

import argparse
import fnmatch
import sys

import torch

from . import harness


def all_cases(quick: bool, device_type: str) -> list:
    """Every case family the suite knows; families written later register here."""
    from .cases_bias_act import bias_act_cases

    cases = list(bias_act_cases(quick, device_type))
    for module, fn in (("cases_conv", "conv_cases"), ("cases_losses", "loss_cases")):
        try:
            mod = __import__(f"{__package__}.{module}", fromlist=[fn])
        except ModuleNotFoundError:
            continue
        for c in getattr(mod, fn)(quick):
            cases.append(c if isinstance(c, harness.Case) else harness.Case(**c))
    return cases


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True,
                      help="few sizes and short timing loops (default; fits inside 3 minutes on an H200)")
    mode.add_argument("--full", action="store_true", help="all sizes and longer timing loops")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="where to run (default: cuda when available, else cpu)")
    p.add_argument("--json", metavar="PATH", help="write the result document (DESIGN.md section 4) here")
    p.add_argument("--markdown", metavar="PATH", help="also write the Markdown table here")
    p.add_argument("--cases", metavar="PATTERNS", default="*",
                   help="comma-separated glob patterns over case names (e.g. 'bias_act.lrelu.*'); "
                        "a pattern without '*' matches as a prefix")
    p.add_argument("--providers", metavar="NAMES", default="eager,compile,fastgan",
                   help=f"comma-separated subset of {','.join(harness.PROVIDERS)}")
    p.add_argument("--dtypes", metavar="NAMES", default="float32,bfloat16", help="comma-separated dtypes")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")


def _select(cases, patterns: str, dtypes: str):
    pats = [p if "*" in p else p + "*" for p in patterns.split(",") if p]
    keep = set(d.strip() for d in dtypes.split(",") if d.strip())
    return [c for c in cases if any(fnmatch.fnmatch(c.case, p) for p in pats) and c.dtype in keep]


def main_with_args(args) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    bad = [p for p in providers if p not in harness.PROVIDERS]
    if bad:
        print(f"error: unknown provider(s) {bad}; choose from {harness.PROVIDERS}", file=sys.stderr)
        return 2
    quick = not args.full
    cases = _select(all_cases(quick, device.type), args.cases, args.dtypes)
    if args.list:
        for c in cases:
            print(f"{c.case:<45} {c.family:<7} {c.dtype:<9} {c.shape}")
        return 0
    if not cases:
        print(f"error: no case matches --cases {args.cases!r} --dtypes {args.dtypes!r}", file=sys.stderr)
        return 2
    if device.type != "cuda":
        print("note: running on the CPU: fastgan's Triton path needs CUDA, so only eager and compile are "
              "timed, on one small size (a smoke run of the harness, not a measurement)")
    doc = harness.run(cases, providers, device, quick=quick)
    harness.validate(doc)
    table = harness.to_markdown(doc)
    if args.json:
        harness.write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    print(table)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastgan bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    return main_with_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
