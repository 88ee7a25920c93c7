"""A run's curves: ``fastgan plot RUN`` (and ``fastgan train`` at its end) reads ``RUN/log.jsonl``
and writes ``RUN/curves.png``.

Panels: D's and G's losses vs step; the penalty at the steps that computed it (``penalty_step``;
StyleGAN2's path-length penalty too); then, when the run evaluated (``--eval-every``: records
with ``"kind": "eval"``), FID, KID (± its spread over subsets) and precision/recall vs step.
matplotlib is optional (``pip install 'fastgan[plot]'``); without it the plot is refused with
that advice. The PNG is written atomically.
"""
from __future__ import annotations

import io
import json
import math
import os

from ..atomic import atomic_write

LOG = "log.jsonl"
CURVES = "curves.png"


class PlotError(ValueError):
    """A run folder that cannot be plotted (no log, a corrupt log, no matplotlib)."""


def matplotlib_missing() -> str | None:
    """None when matplotlib imports, else why not."""
    try:
        import matplotlib  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def read_log(run: str) -> tuple[list[dict], list[dict]]:
    """(training records, evaluation records) of ``run/log.jsonl`` (or of a log file given
    directly), each in file order. A last line that does not parse is skipped (a write cut short,
    as the trainer's resume does); any other bad line, or a log with no record, is a PlotError
    naming the file and the line."""
    path = os.path.join(run, LOG) if os.path.isdir(run) else run
    if not os.path.exists(path):
        raise PlotError(f"{path}: no such file (RUN must be a fastgan train output folder, which holds {LOG})")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise PlotError(f"{path}: cannot be read ({type(exc).__name__}: {exc})") from None
    train, evals = [], []
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    for k, (no, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
            step = rec["step"]
            if isinstance(step, bool) or not isinstance(step, (int, float)):
                raise TypeError(f"step is {step!r}")
        except (ValueError, KeyError, TypeError) as exc:
            if k == len(numbered) - 1 and k > 0:
                continue  # the last line cut short by an interrupted write
            raise PlotError(f"{path}:{no}: not a log record ({type(exc).__name__}: {exc}); is this a fastgan "
                            "train log?") from None
        (evals if rec.get("kind") == "eval" else train).append(rec)
    if not train and not evals:
        raise PlotError(f"{path}: no records yet (the run logs every --log-every steps)")
    return train, evals


def _series(records: list[dict], key: str, step_key: str = "step") -> tuple[list, list]:
    pts = [(r.get(step_key, r["step"]), r[key]) for r in records
           if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_run(run: str, out: str | None = None, title: str | None = None) -> str:
    """Write the curves of ``run`` (a folder with ``log.jsonl``) to ``out`` (default
    ``run/curves.png``) atomically; returns the path. PlotError without matplotlib."""
    train, evals = read_log(run)
    why = matplotlib_missing()
    if why:
        raise PlotError(f"plotting needs matplotlib ({why}); pip install 'fastgan[plot]'")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder = run if os.path.isdir(run) else os.path.dirname(run) or "."
    out = out or os.path.join(folder, CURVES)
    metric_panels = [keys for keys in (("fid",), ("kid",), ("precision", "recall"))
                     if any(_series(evals, k)[0] for k in keys)]
    n = 2 + len(metric_panels)
    fig, axes = plt.subplots(n, 1, figsize=(8, 2.4 * n + 0.6), sharex=True, constrained_layout=True)
    ax_loss, ax_pen = axes[0], axes[1]
    for key, label in (("d_loss", "D loss"), ("g_loss", "G loss")):
        xs, ys = _series(train, key)
        if xs:
            ax_loss.plot(xs, ys, label=label, linewidth=1)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    drew = False
    for key, step_key, label in (("penalty", "penalty_step", "penalty (D)"), ("pl_penalty", "step", "path length")):
        xs, ys = _series(train, key, step_key)
        if xs:
            ax_pen.plot(xs, ys, label=label, linewidth=1, marker="." if len(xs) < 50 else None)
            drew = True
    ax_pen.set_ylabel("penalty")
    if drew:
        ax_pen.legend(fontsize=8)
    else:
        ax_pen.text(0.5, 0.5, "no penalty computed in this run", transform=ax_pen.transAxes, ha="center",
                    va="center", fontsize=9)
    features = next((r.get("features") for r in evals if r.get("features")), None)
    for ax, keys in zip(axes[2:], metric_panels):
        for key in keys:
            xs, ys = _series(evals, key)
            ax.plot(xs, ys, marker="o", markersize=3, label=key)
            if key == "kid":
                spread = [(r["step"], r["kid"], r["kid_std"]) for r in evals
                          if isinstance(r.get("kid"), (int, float)) and isinstance(r.get("kid_std"), (int, float))]
                if spread:
                    ax.fill_between([s for s, _, _ in spread], [m - d for _, m, d in spread],
                                    [m + d for _, m, d in spread], alpha=0.2, label="± std over subsets")
        ax.set_ylabel("/".join(keys) if len(keys) > 1 else keys[0].upper())
        if len(keys) > 1 or key == "kid":
            ax.legend(fontsize=8)
    axes[-1].set_xlabel("step")
    name = os.path.basename(os.path.abspath(folder))
    note = f"; metrics on {features} features" + (" (not comparable with Inception-FID)" if features == "shapes"
                                                   else "") if features else ""
    fig.suptitle(title or f"{name}: {len(train)} training records, {len(evals)} evaluations{note}", fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    atomic_write(out, lambda f: f.write(buf.getvalue()), binary=True)
    return out
