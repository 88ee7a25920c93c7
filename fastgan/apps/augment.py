"""``fastgan augment-eval``: does a conditional generator's output help a classifier that has few
labelled images?

For each seed s and each K (real labelled images per class), on the embedded shapes dataset:
  real   K images per class: the first K of each class in ``make_shapes(pool, seed=POOL_SEED + s)``
         (a draw independent of the GAN's training set, which is ``make_shapes(n_embedded, seed)``);
  gen    M images per class from the checkpoint's G (its EMA by default), latents seeded with
         GEN_SEED + s (``model.generate_batch``), image i of class i // M;
  test   ``n_test`` held-out real images, ``make_shapes(n_test, seed=TEST_SEED)``, the same for every run.
Arms: (i) "real" trains on the K real images per class; (ii) "real+gen" on the same K real plus
the M generated per class; optionally (iii) "gen" on the M generated alone (one classifier per
seed, reported in every K's row). Every arm trains the
same classifier (``features.ShapesFeatureNet``'s architecture, its class head only) from the same
initialisation (seed s) for the same number of steps with the same minibatch size: Adam, cosine
decay, cross-entropy, minibatches drawn uniformly from the arm's training set. The reported number
is the held-out test accuracy; per K and arm, the mean and the standard deviation (n - 1) over the
seeds, and the paired difference (ii) - (i).
"""
from __future__ import annotations

import math
import statistics
import time

import torch
import torch.nn.functional as F

from .features import ShapesFeatureNet
from .model import file_sha256, generate_batch, load_generator, resolve_device

SCHEMA = 1
POOL_SEED, GEN_SEED, TEST_SEED = 100_000, 200_000, 300_000
ARMS = ("real", "real+gen", "gen")


class AugmentError(ValueError):
    """augment-eval cannot run as asked (bad arguments, a checkpoint that does not fit)."""


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise AugmentError(f"{name} must be a positive integer, got {v!r}")
    return v


def real_per_class(k: int, n_classes: int, resolution: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``k`` images of each class in a fresh draw of the embedded shapes (seed ``seed``):
    (images [k * n_classes, 3, R, R], labels), class by class."""
    from ..data import make_shapes

    n = max(64, 4 * k * n_classes)
    while True:
        images, attrs = make_shapes(n, resolution, seed, return_attributes=True)
        idx = [torch.nonzero(attrs["label"] == c).flatten()[:k] for c in range(n_classes)]
        if all(len(i) == k for i in idx):
            idx = torch.cat(idx)
            return images[idx], attrs["label"][idx]
        n *= 2


def train_classifier(images: torch.Tensor, labels: torch.Tensor, steps: int, batch_size: int, seed: int,
                     lr: float = 3e-3, n_classes: int = 3, width: int = 16) -> ShapesFeatureNet:
    """A ``ShapesFeatureNet`` trained on its class head only: ``steps`` Adam steps (cosine decay) on
    minibatches of min(batch_size, N) drawn uniformly from the set (generator seeded with ``seed``);
    the initial weights come from ``seed`` too, so two sets trained with one seed start alike."""
    torch.manual_seed(seed)
    net = ShapesFeatureNet(width=width, n_classes=n_classes)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    b = min(batch_size, images.shape[0])
    net.train()
    for _ in range(steps):
        idx = torch.randint(images.shape[0], (b,), generator=g)
        loss = F.cross_entropy(net(images[idx])[0], labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: ShapesFeatureNet, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 512) -> float:
    pred = torch.cat([net(images[i:i + batch_size])[0].argmax(1) for i in range(0, images.shape[0], batch_size)])
    return float((pred == labels).double().mean())


def _mean_std(values: list[float]) -> tuple[float, float | None]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def augment_eval(checkpoint: str, k: int | list[int] = 10, m: int = 100, seeds: int = 5, steps: int = 300,
                 batch_size: int = 64, n_test: int = 2048, ema: bool = True, truncation: float = 1.0,
                 generated_only: bool = False, device="cpu", progress: bool = False, log=None) -> dict:
    """Run the experiment of the module doc; returns the result document (``schema``, the checkpoint
    and its SHA-256, step, classes, settings, ``runs``: one record per seed, K and arm, ``summary``:
    per K and arm the mean and std of the test accuracy, and the paired gain of real+gen over real)."""
    from ..data import SHAPE_CLASSES, make_shapes

    ks = [k] if isinstance(k, int) and not isinstance(k, bool) else list(k)
    if not ks:
        raise AugmentError("--k needs at least one value")
    for v in ks:
        _positive("--k", v)
    for name, v in (("--m", m), ("--seeds", seeds), ("--steps", steps), ("--batch-size", batch_size),
                    ("--n-test", n_test)):
        _positive(name, v)
    if isinstance(truncation, bool) or not isinstance(truncation, (int, float)) or not 0 < truncation <= 1:
        raise AugmentError(f"--truncation must lie in (0, 1], got {truncation!r}")
    t0 = time.time()
    device = resolve_device(device)
    G, cfg, state = load_generator(checkpoint, ema=ema, device=device)
    if not G.classes:
        raise AugmentError(f"{checkpoint}: augment-eval needs a class-conditional checkpoint (fastgan train "
                           "--conditional); this one is unconditional")
    if cfg.data is not None or tuple(G.classes) != SHAPE_CLASSES:
        raise AugmentError(f"{checkpoint}: augment-eval measures on the embedded shapes, but this model was trained "
                           f"on {cfg.data} (classes {list(G.classes)})")
    n_classes, res = len(G.classes), cfg.resolution
    test_x, test_attrs = make_shapes(n_test, res, TEST_SEED, return_attributes=True)
    test_y = test_attrs["label"]
    arms = ARMS if generated_only else ARMS[:2]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=seeds * len(ks) * len(arms), desc="fastgan augment-eval", unit="run")
    runs = []
    try:
        for s in range(seeds):
            gen_y = torch.arange(m * n_classes) // m
            gen_x = torch.cat([generate_batch(G, GEN_SEED + s, i, min(i + 256, m * n_classes), truncation,
                                              labels=gen_y[i:i + 256]) for i in range(0, m * n_classes, 256)])
            for kk in ks:
                real_x, real_y = real_per_class(kk, n_classes, res, POOL_SEED + s)
                sets = {"real": (real_x, real_y), "real+gen": (torch.cat([real_x, gen_x]), torch.cat([real_y, gen_y])),
                        "gen": (gen_x, gen_y)}
                for arm in arms:
                    x, y = sets[arm]
                    if arm == "gen" and kk != ks[0]:  # the same set for every K: trained once per seed
                        acc = next(r["test_accuracy"] for r in runs if r["seed"] == s and r["arm"] == "gen")
                    else:
                        net = train_classifier(x, y, steps, batch_size, seed=s, n_classes=n_classes)
                        acc = accuracy(net, test_x, test_y)
                    runs.append({"seed": s, "k": kk, "m": m, "arm": arm, "train_images": int(x.shape[0]),
                                 "test_accuracy": acc})
                    if log:
                        log(f"seed {s} K {kk} {arm}: test accuracy {acc:.4f} ({x.shape[0]} training images)")
                    if bar:
                        bar.update(1)
    finally:
        if bar:
            bar.close()
    summary = []
    for kk in ks:
        row = {"k": kk, "m": m}
        for arm in arms:
            mean, std = _mean_std([r["test_accuracy"] for r in runs if r["k"] == kk and r["arm"] == arm])
            row[arm] = {"mean": mean, "std": std}
        by_seed = {(r["seed"], r["arm"]): r["test_accuracy"] for r in runs if r["k"] == kk}
        gains = [by_seed[(s, "real+gen")] - by_seed[(s, "real")] for s in range(seeds)]
        mean, std = _mean_std(gains)
        row["gain"] = {"mean": mean, "std": std, "seeds_better": sum(g > 0 for g in gains), "seeds": seeds}
        summary.append(row)
    return {"schema": SCHEMA, "checkpoint": checkpoint, "checkpoint_sha256": file_sha256(checkpoint),
            "step": state["step"], "weights": "G_ema" if ema else "G", "classes": list(G.classes),
            "settings": {"k": ks, "m": m, "seeds": seeds, "steps": steps, "batch_size": batch_size, "n_test": n_test,
                         "truncation": float(truncation), "pool_seed": POOL_SEED, "gen_seed": GEN_SEED,
                         "test_seed": TEST_SEED, "classifier": "ShapesFeatureNet(width=16), class head, Adam 3e-3 "
                                                               "cosine"},
            "runs": runs, "summary": summary, "elapsed_s": time.time() - t0}


def _pm(d: dict, digits: int = 3) -> str:
    if d["std"] is None or (isinstance(d["std"], float) and math.isnan(d["std"])):
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} ± {d['std']:.{digits}f}"


def format_table(doc: dict) -> str:
    """The summary as a Markdown table: test accuracy (mean ± std over seeds) per K and arm."""
    arms = [a for a in ARMS if a in doc["summary"][0]]
    m, seeds = doc["settings"]["m"], doc["settings"]["seeds"]
    head = ["K real / class"] + [{"real": "(i) real", "real+gen": f"(ii) real + {m} gen / class",
                                  "gen": f"(iii) {m} gen / class only"}[a] for a in arms]
    head += ["gain (ii) - (i)", "seeds where (ii) > (i)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in doc["summary"]:
        cells = [str(row["k"])] + [_pm(row[a]) for a in arms]
        cells += [("+" if row["gain"]["mean"] >= 0 else "") + _pm(row["gain"]),
                  f"{row['gain']['seeds_better']} of {seeds}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
