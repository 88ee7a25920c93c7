"""Train the shapes feature net that fastgan's metrics use by default and ship its weights.

    python scripts/train_feature_net.py            # writes fastgan/apps/feature_net.pt and .json

Deterministic: seeded data (``make_shapes`` with seeds of its own, not the GAN's default data
seed 0), seeded initialisation and minibatches, a fixed number of CPU threads. The JSON next to
the weights records the seed, the commit of this script, the held-out test accuracy, the
weights' SHA-256 and what the features are not: comparable with Inception-FID.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args) -> str | None:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except Exception:
        return None


def main(argv=None) -> int:
    from fastgan.apps import features as FE
    from fastgan.atomic import atomic_write, atomic_write_json
    from fastgan.data import SHAPE_CLASSES, make_shapes

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--n-train", type=int, default=8192)
    p.add_argument("--n-test", type=int, default=2048)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (results are reproducible for a fixed count)")
    p.add_argument("--out", default=FE.FEATURE_NET_WEIGHTS, help="weights file; the record goes next to it (.json)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    train_seed, test_seed = 10_000 + args.seed, 20_000 + args.seed
    t0 = time.time()
    x, attrs = make_shapes(args.n_train, FE.FEATURE_NET_RESOLUTION, train_seed, return_attributes=True)
    xt, attrs_t = make_shapes(args.n_test, FE.FEATURE_NET_RESOLUTION, test_seed, return_attributes=True)
    net = FE.train_shapes_classifier(x, attrs["label"], FE.shape_attribute_targets(attrs), epochs=args.epochs,
                                     seed=args.seed, log=print)
    train_acc = FE.classifier_accuracy(net, x, attrs["label"])
    test_acc = FE.classifier_accuracy(net, xt, attrs_t["label"])
    with torch.no_grad():
        attr_mse = float(torch.nn.functional.mse_loss(net(xt)[1], FE.shape_attribute_targets(attrs_t)))
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write(args.out, lambda f: f.write(buf.getbuffer()), binary=True)
    script = os.path.relpath(os.path.abspath(__file__), ROOT)
    record = {
        "what": "fastgan shapes feature net (ShapesFeatureNet): 64-d features for FID/KID/precision-recall on "
                "the embedded shapes dataset",
        "not_comparable": "values computed on these features are NOT comparable with Inception-FID",
        "seed": args.seed, "train_data": {"make_shapes_seed": train_seed, "n": args.n_train},
        "test_data": {"make_shapes_seed": test_seed, "n": args.n_test}, "epochs": args.epochs,
        "threads": args.threads, "classes": list(SHAPE_CLASSES),
        "train_accuracy": train_acc, "test_accuracy": test_acc, "test_attribute_mse": attr_mse,
        "parameters": sum(v.numel() for v in state.values()), "bytes": buf.getbuffer().nbytes,
        "sha256": hashlib.sha256(buf.getbuffer()).hexdigest(),
        "script": script, "script_commit": _git("rev-parse", "HEAD"),
        "script_modified_since_commit": bool(_git("status", "--porcelain", "--", script)),
        "torch": torch.__version__, "train_time_s": round(time.time() - t0, 1),
    }
    atomic_write_json(os.path.splitext(args.out)[0] + ".json", record)
    print(f"test accuracy {test_acc:.4f} (train {train_acc:.4f}), attribute MSE {attr_mse:.5f}, "
          f"{record['parameters']} parameters, {record['bytes']} bytes -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
