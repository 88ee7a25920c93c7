"""Measure ``fastgan inpaint`` against two baselines on held-out embedded shapes.

    python scripts/inpaint_benchmark.py CHECKPOINT [--n 32] [--picture docs/inpaint_before_after.png]

Held-out images: ``make_shapes`` with seed 30000 (the run trained on seed 0). Each image gets one
random rectangular hole (side 8 to 14 px of 32, seeded). Error: the mean squared error over the
hole's pixels in [-1, 1] units, mean and standard deviation over images, for
- mean-image fill: the hole filled with the pixelwise mean of the run's training images,
- blurred fill: the hole filled with a normalised Gaussian blur (sigma 3 px) of the known pixels,
- GAN inversion: ``fastgan.apps.inpaint.inpaint`` with its defaults.
The picture's rows (3x enlarged): original, input (hole in grey), blurred fill, GAN inversion.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch


def main(argv=None) -> int:
    from fastgan.apps.inpaint import blurred_fill, inpaint
    from fastgan.apps.model import load_generator
    from fastgan.data import make_shapes
    from fastgan.train import save_image_grid

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--restarts", type=int, default=4)
    p.add_argument("--picture", default=None)
    args = p.parse_args(argv)
    G, cfg, state = load_generator(args.checkpoint, device="cpu")
    r = cfg.resolution
    x = make_shapes(args.n, r, seed=30000)
    g = torch.Generator().manual_seed(0)
    holes = torch.zeros(args.n, 1, r, r)
    for i in range(args.n):
        h, w = (int(v) for v in torch.randint(r // 4, r * 7 // 16 + 1, (2,), generator=g))
        y0, x0 = (int(v) for v in torch.randint(0, r - max(h, w) + 1, (2,), generator=g))
        holes[i, :, y0:y0 + h, x0:x0 + w] = 1
    mean_image = make_shapes(cfg.n_embedded, r, cfg.seed).mean(0, keepdim=True)
    t0 = time.time()
    repaired, _ = inpaint(G, x, holes, steps=args.steps, restarts=args.restarts)
    t_inpaint = time.time() - t0
    fills = {"mean-image fill": x * (1 - holes) + mean_image * holes, "blurred fill": blurred_fill(x, holes),
             "GAN inversion": repaired}
    hole = holes.expand_as(x)
    rows = {}
    for name, y in fills.items():
        per_image = ((y - x) ** 2 * hole).sum((1, 2, 3)) / hole.sum((1, 2, 3))
        rows[name] = {"mse_mean": float(per_image.mean()), "mse_std": float(per_image.std())}
    print(f"checkpoint {args.checkpoint} (step {state['step']}), {args.n} held-out images, inversion "
          f"{args.steps} steps x {args.restarts} restarts in {t_inpaint:.0f} s")
    print("| fill | hole MSE (mean +- std over images) |\n|---|---|")
    for name, v in rows.items():
        print(f"| {name} | {v['mse_mean']:.4f} +- {v['mse_std']:.4f} |")
    errs = {name: ((y - x) ** 2 * hole).sum((1, 2, 3)) / hole.sum((1, 2, 3)) for name, y in fills.items()}
    for base in ("mean-image fill", "blurred fill"):
        wins = int((errs["GAN inversion"] < errs[base]).sum())
        rows[f"inversion better than {base}"] = f"{wins} of {args.n} images"
        print(f"GAN inversion has the lower hole error than the {base} on {wins} of {args.n} images")
    print(json.dumps(rows))
    if args.picture:
        k = min(8, args.n)
        shown = x[:k] * (1 - holes[:k]) + 0.0 * holes[:k]
        grid = torch.cat([x[:k], shown, fills["blurred fill"][:k], repaired[:k]])
        save_image_grid(torch.nn.functional.interpolate(grid, scale_factor=3, mode="nearest"), args.picture, nrow=k)
        print(f"wrote {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
