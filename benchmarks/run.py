"""`fastgan bench` (also `python -m benchmarks`): run the suite, print a table, write JSON.

    fastgan bench --quick --device cuda --json out.json --plot out.png
    fastgan bench --cases bias_act.lrelu --providers eager,fastgan
    fastgan bench --families steps --full
    fastgan bench --compare old.json new.json --threshold 0.05
    fastgan bench --summary out.json
"""
from __future__ import annotations

import argparse
import fnmatch
import sys

import torch

from . import harness

FAMILIES = ("steps", "layers", "ops")  # run order: the headline cases first, so that a run cut
# short by --time-budget loses op cases (cheap to rerun alone) before step cases


def all_cases(quick: bool, device_type: str) -> list:
    """Every case the suite knows, in run order (families in FAMILIES order). On the CPU every
    factory shrinks its cases to tiny sizes (a smoke run of the machinery)."""
    from .cases_bias_act import bias_act_cases
    from .cases_conv import conv_cases
    from .cases_losses import loss_cases
    from .cases_steps import step_cases
    from .cases_stylegan import stylegan_cases, stylegan_step_cases

    cases = [c for factory in (bias_act_cases, conv_cases, loss_cases, stylegan_cases, step_cases,
                               stylegan_step_cases)
             for c in factory(quick, device_type)]
    order = {f: i for i, f in enumerate(FAMILIES)}
    return sorted(cases, key=lambda c: order.get(c.family, len(order)))  # stable within a family


def add_arguments(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", default=True,
                      help="few sizes and short timing loops (default; sized for 3 minutes on an H200, "
                           "torch.compile's compile times included)")
    mode.add_argument("--full", action="store_true",
                      help="the whole grid (steps at 32/64 px, batch 64/256, float32/bf16) and longer timing loops")
    p.add_argument("--device", choices=["cuda", "cpu"], default=None,
                   help="where to run (default: cuda when available, else cpu; the CPU runs tiny sizes)")
    p.add_argument("--json", metavar="PATH",
                   help="write the result document (DESIGN.md section 4) here; rewritten after every case")
    p.add_argument("--markdown", metavar="PATH", help="also write the Markdown table here")
    p.add_argument("--plot", metavar="PATH", help="write a PNG: speedups vs eager and energy per provider "
                                                  "(needs matplotlib: pip install 'fastgan[plot]')")
    p.add_argument("--cases", metavar="PATTERNS", default="*",
                   help="comma-separated glob patterns over case names (e.g. 'bias_act.lrelu.*'); "
                        "a pattern without '*' matches as a prefix")
    p.add_argument("--exclude", metavar="PATTERNS", default="",
                   help="comma-separated glob patterns (or prefixes) of cases to leave out")
    p.add_argument("--families", metavar="NAMES", default=",".join(FAMILIES),
                   help="comma-separated subset of " + ",".join(FAMILIES))
    p.add_argument("--providers", metavar="NAMES", default=",".join(harness.PROVIDERS),
                   help=f"comma-separated subset of {','.join(harness.PROVIDERS)}")
    p.add_argument("--dtypes", metavar="NAMES", default="float32,bfloat16", help="comma-separated dtypes")
    p.add_argument("--list", action="store_true", help="list the selected cases and exit")
    p.add_argument("--compile-backend", default="inductor", metavar="NAME",
                   help="torch.compile backend of the 'compile' provider (default inductor, torch.compile's "
                        "default; 'aot_eager' exercises the machinery without code generation)")
    p.add_argument("--compile-penalty", choices=["func", "split"], default="func",
                   help="the torch.compile configuration tried first for penalty steps, where the default "
                        "cannot double-backward (see benchmarks/cases_steps.py); the other is the fallback")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop starting new cases after this many seconds; the rest are recorded as skipped")
    p.add_argument("--compare", nargs=2, metavar=("A.json", "B.json"),
                   help="print the ratio table B/A of two result files and exit (see --threshold)")
    p.add_argument("--threshold", type=float, default=0.05,
                   help="with --compare: flag B/A above 1 + THRESHOLD as a regression (default 0.05)")
    p.add_argument("--summary", metavar="PATH", help="print the compact speedup summary of a result file and exit")
    p.add_argument("--count-launches", action="store_true",
                   help="count device launches (aten ops that launch work + Triton launches) per D step, G step and "
                        "full iteration of the headline WGAN-GP case, eager and fastgan, and exit (runs on the CPU; "
                        "with --json: write it; with --cuda-graphs on a GPU: also graph replays)")
    p.add_argument("--cuda-graphs", action="store_true", help="with --count-launches: also count fastgan+graphs")
    p.add_argument("--static", action="store_true",
                   help="the static sm_90 report: compile every Triton launch of one DCGAN-64 WGAN-GP iteration "
                        "(float32, bf16) for the H200 without a GPU: registers, spills, smem, wgmma, cp.async/TMA, "
                        "CTAs vs 132 SMs, roofline (with --json: write it) and exit")
    p.add_argument("--host-overhead", action="store_true",
                   help="measure the host time per call of a fused op as autograd.Function and as torch.library "
                        "custom op (CPU; with --json: write it) and exit")


def _select(cases, patterns: str, dtypes: str, families: str = ",".join(FAMILIES), exclude: str = ""):
    def globs(text):
        return [p if "*" in p else p + "*" for p in text.split(",") if p]
    pats, skip = globs(patterns), globs(exclude)
    keep = set(d.strip() for d in dtypes.split(",") if d.strip())
    fams = set(f.strip() for f in families.split(",") if f.strip())
    return [c for c in cases if any(fnmatch.fnmatch(c.case, p) for p in pats) and c.dtype in keep
            and c.family in fams and not any(fnmatch.fnmatch(c.case, p) for p in skip)]


def main_with_args(args) -> int:
    if args.static:
        from .static import run as static_report, to_markdown

        doc = static_report()
        print(to_markdown(doc))
        if args.json:
            from fastgan.atomic import atomic_write_json

            atomic_write_json(args.json, doc)
            print(f"wrote {args.json}")
        return 0
    if args.count_launches:
        from .launches import run as count_launches, to_markdown

        doc = count_launches(args.device, graphs=args.cuda_graphs)
        print(to_markdown(doc))
        if args.json:
            from fastgan.atomic import atomic_write_json

            atomic_write_json(args.json, doc)
            print(f"wrote {args.json}")
        return 0
    if args.host_overhead:
        from .host_overhead import main as host_overhead

        return host_overhead(args.json)
    if args.compare:
        from .compare import compare_files

        return compare_files(args.compare[0], args.compare[1], args.threshold)
    if args.summary:
        from .compare import load_result

        try:
            doc = load_result(args.summary)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(harness.to_summary(doc))
        return 0
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    bad = [p for p in providers if p not in harness.PROVIDERS]
    if bad:
        print(f"error: unknown provider(s) {bad}; choose from {harness.PROVIDERS}", file=sys.stderr)
        return 2
    bad = [f.strip() for f in args.families.split(",") if f.strip() and f.strip() not in FAMILIES]
    if bad:
        print(f"error: unknown famil(ies) {bad}; choose from {FAMILIES}", file=sys.stderr)
        return 2
    if args.plot:
        from .plot import matplotlib_missing

        why = matplotlib_missing()
        if why:
            print(f"error: --plot needs matplotlib ({why}); install it with: pip install 'fastgan[plot]' "
                  "(or pip install matplotlib), or drop --plot", file=sys.stderr)
            return 2
    from fastgan.atomic import check_writable, write_error

    for flag in ("json", "markdown", "plot"):  # before any timing, not after it
        if getattr(args, flag):
            try:
                check_writable(getattr(args, flag))
            except OSError as exc:
                print(f"error: --{flag}: {write_error(exc)}", file=sys.stderr)
                return 2
    quick = not args.full
    cases = _select(all_cases(quick, device.type), args.cases, args.dtypes, args.families, args.exclude)
    if args.list:
        for c in cases:
            print(f"{c.case:<45} {c.family:<7} {c.dtype:<9} {c.shape}")
        return 0
    if not cases:
        print(f"error: no case matches --cases {args.cases!r} --dtypes {args.dtypes!r} --families "
              f"{args.families!r}", file=sys.stderr)
        return 2
    if device.type != "cuda":
        print("note: running on the CPU: fastgan's Triton path needs CUDA, so only eager and compile are "
              "timed, on tiny sizes (a smoke run of the harness, not a measurement)")
    from . import cases_steps

    harness.COMPILE["backend"] = args.compile_backend
    cases_steps.COMPILE_PENALTY["first"] = args.compile_penalty
    with harness.sigint_guard() as sigint:  # a Ctrl-C while the results are written is recorded, not raised
        return _run_and_report(args, cases, providers, device, quick, sigint)


def _run_and_report(args, cases, providers, device, quick: bool, sigint) -> int:
    on_progress = (lambda doc: harness.write_json(doc, args.json)) if args.json else None
    doc = harness.run(cases, providers, device, quick=quick, budget_s=args.time_budget, on_progress=on_progress,
                      sigint=sigint)
    harness.validate(doc)
    table = harness.to_markdown(doc)
    if args.json:
        harness.write_json(doc, args.json)
        print(f"wrote {args.json}")
    if args.markdown:
        from fastgan.atomic import atomic_write

        atomic_write(args.markdown, lambda f: f.write(table + "\n"))
    print(table)
    print()
    print(harness.to_summary(doc))
    if args.plot:
        from .plot import plot_result

        plot_result(doc, args.plot)
        print(f"wrote {args.plot}")
    # Ctrl-C: the document is complete, the run is not
    return 130 if doc.get("interrupted") or sigint.requested.is_set() else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastgan bench", description=__doc__.split("\n")[0])
    add_arguments(p)
    return main_with_args(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
