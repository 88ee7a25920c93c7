"""Reference values of fastgan's metrics on the shapes feature net (not comparable with
Inception-FID): real vs real, real vs noise, and optionally checkpoints.

    python scripts/metric_reference_values.py [--n 2048] [CHECKPOINT ...]

Real images are the embedded shapes of the default run (8192 images, data seed 0); "real vs real"
compares a subset of them with an independent draw of the dataset (data seed 1).
"""
from __future__ import annotations

import argparse
import json
import sys

import torch


def main(argv=None) -> int:
    from fastgan.apps.evaluate import evaluate, evaluate_images, real_images
    from fastgan.apps.features import get_extractor

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("checkpoints", nargs="*")
    args = p.parse_args(argv)
    ext = get_extractor()
    real = real_images(None, 32, args.n, args.seed, 8192, data_seed=0)
    rows = {
        "real vs real (independent draw)": evaluate_images(real, real_images(None, 32, args.n, args.seed, 8192, 1),
                                                           extractor=ext, seed=args.seed),
        "real vs uniform noise": evaluate_images(
            real, torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(args.seed)) * 2 - 1,
            extractor=ext, seed=args.seed),
    }
    for c in args.checkpoints:
        doc = evaluate(c, n=args.n, seed=args.seed, device="cpu")
        rows[f"{c} (step {doc['step']})"] = doc["metrics"]
    print("| compared | FID | KID | precision | recall |\n|---|---|---|---|---|")
    for name, m in rows.items():
        print(f"| {name} | {m['fid']:.3f} | {m['kid']:.5f} +- {m['kid_std']:.5f} | {m['precision']:.3f} | "
              f"{m['recall']:.3f} |")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
