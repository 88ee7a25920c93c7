"""A PNG of one run: ``fastgan bench ... --plot out.png`` or
``python -m fastgan.benchmarks.plot result.json out.png``.

Top panel: speedup over eager (eager median / provider median, same run) per case and dtype,
one bar per provider. Bottom panel: energy per call (J, NVML) per case and provider, or a
line saying why there is none (no NVML on a CPU run). matplotlib is optional
(``pip install 'fastgan[plot]'``); without it the plot is refused with that advice.
"""
from __future__ import annotations

import sys

from . import harness

COLORS = {"eager": "#9e9e9e", "compile": "#1f77b4", "fastgan": "#d62728", "fastgan+graphs": "#ff7f0e"}


def matplotlib_missing() -> str | None:
    """None when matplotlib imports, else why not."""
    try:
        import matplotlib  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def plot_result(doc: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = harness.speedups(doc)
    keys = []  # (case, dtype) in run order
    for r in doc["records"]:
        if (r["case"], r["dtype"]) not in keys:
            keys.append((r["case"], r["dtype"]))
    providers = [p for p in harness.PROVIDERS if any(r["provider"] == p for r in doc["records"])]
    by_key = {(r["case"], r["dtype"], r["provider"]): r for r in doc["records"]}
    labels = [f"{c} ({harness.short_dtype(d)})" for c, d in keys]
    n = max(1, len(keys))
    width = 0.8 / max(1, len(providers))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8.0, 0.45 * n * max(1, len(providers)) + 3), 9),
                                   constrained_layout=True)
    for i, prov in enumerate(providers):
        xs = [k + (i - (len(providers) - 1) / 2) * width for k in range(len(keys))]
        speed = [ratios.get((c, d, prov), (None, None))[0] for c, d in keys]
        ax1.bar(xs, [s or 0.0 for s in speed], width, label=prov, color=COLORS.get(prov))
        energy = [(by_key.get((c, d, prov)) or {}).get("energy_j") for c, d in keys]
        ax2.bar(xs, [e or 0.0 for e in energy], width, label=prov, color=COLORS.get(prov))
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.legend(fontsize=8)
    ax1.axhline(1.0, color="black", linewidth=0.8)
    ax1.set_ylabel("speedup vs eager (x)")
    where = doc.get("gpu") or doc.get("device")
    ax1.set_title(f"{where}, torch {doc.get('torch')}, commit {(doc.get('commit') or '?')[:12]}  "
                  f"(missing bar: the provider did not run; see the JSON)", fontsize=9)
    ax2.set_ylabel("energy per call (J)")
    if any(r.get("energy_j") for r in doc["records"]):
        ax2.set_yscale("log")  # op cases and whole steps differ by orders of magnitude
    else:
        import textwrap

        reason = (doc.get("nvml") or {}).get("reason") or "no energy readings in this run"
        ax2.text(0.5, 0.5, textwrap.fill(f"no energy data: {reason}", 100), transform=ax2.transAxes, ha="center",
                 va="center", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print("usage: python -m fastgan.benchmarks.plot RESULT.json OUT.png", file=sys.stderr)
        return 2
    why = matplotlib_missing()
    if why:
        print(f"error: plotting needs matplotlib ({why}); pip install 'fastgan[plot]'", file=sys.stderr)
        return 2
    from .compare import load_result

    try:
        doc = load_result(argv[0])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    plot_result(doc, argv[1])
    print(f"wrote {argv[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
