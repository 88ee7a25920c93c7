"""``fastgan eval``: the metrics of a trained generator against its (or given) real data."""
from __future__ import annotations

import time

import torch

from . import features as FE
from . import metrics as M
from ..train.config import EVAL_MIN_N
from .model import file_sha256, generate_batch, image_seed, latents, load_generator, resolve_device

SCHEMA = 1


def dataset_subset(ds, n: int, seed: int = 0) -> torch.Tensor:
    """Up to ``n`` images [n, 3, H, W] in [-1, 1] of a map-style dataset: a random subset drawn
    with a generator seeded with ``seed`` (the global one is untouched). Items are images or
    tuples whose first element is one, uint8 or float (``data.as_image``)."""
    from ..data import as_image

    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    return torch.stack([as_image(ds[int(i)], f"dataset[{int(i)}]") for i in idx])


def real_images(data: str | None, resolution: int, n: int, seed: int = 0, n_embedded: int = 8192,
                data_seed: int = 0) -> torch.Tensor:
    """Up to ``n`` real images [n, 3, R, R] in [-1, 1]: a random subset (seeded with ``seed``) of
    ``data`` (a folder or .npz, as ``fastgan train --data``), or of the embedded shapes dataset the
    run trained on (``n_embedded`` images drawn with ``data_seed``) when ``data`` is None."""
    from ..data import load_dataset

    return dataset_subset(load_dataset(data, resolution, n_embedded, data_seed), n, seed)


def evaluate_images(real: torch.Tensor, fake: torch.Tensor, metrics=M.METRICS, extractor=None,
                    seed: int = 0) -> dict:
    """The metrics between two image sets ([N, 3, H, W] in [-1, 1]) in ``extractor``'s feature
    space (default: the shipped shapes feature net)."""
    extractor = extractor or FE.get_extractor()
    return M.compute_metrics(extractor(real), extractor(fake), metrics, kid_subset_size=1000, seed=seed)


def evaluate(checkpoint: str, data: str | None = None, metrics="fid,kid,pr", n: int = 2048, seed: int = 0,
             batch_size: int = 256, ema: bool = True, inception_weights: str | None = None, device="auto",
             progress: bool = False, kid_subsets: int = 100, kid_subset_size: int = 1000) -> dict:
    """Generate ``n`` images from the checkpoint's G (its EMA by default), take ``n`` real images
    (``real_images``), extract features and compute the metrics. Returns the result document
    (``schema``, checkpoint and its SHA-256, step, features and the note on what they compare with,
    sizes, seed, ``metrics``). KID: ``kid_subsets`` subsets of ``min(kid_subset_size, n)`` images."""
    names = M.parse_metrics(metrics)
    if not isinstance(n, int) or n < 2:
        raise M.MetricError(f"--n must be an integer >= 2 (the covariance needs 2 samples), got {n!r}")
    if "pr" in names and n <= 3:
        raise M.MetricError(f"precision/recall (k=3) needs --n > 3, got {n}")
    if batch_size < 1:
        raise M.MetricError(f"--batch-size must be >= 1, got {batch_size}")
    t0 = time.time()
    device = resolve_device(device)
    G, cfg, state = load_generator(checkpoint, ema=ema, device=device)
    extractor = FE.get_extractor(inception_weights, device)
    real = real_images(data if data is not None else cfg.data, cfg.resolution, n, seed, cfg.n_embedded, cfg.seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n + real.shape[0], desc="fastgan eval", unit="img")
    fake_feats, real_feats = [], []
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        fake_feats.append(extractor(generate_batch(G, seed, start, stop)))
        if bar:
            bar.update(stop - start)
    for start in range(0, real.shape[0], batch_size):
        real_feats.append(extractor(real[start:start + batch_size]))
        if bar:
            bar.update(min(batch_size, real.shape[0] - start))
    if bar:
        bar.close()
    values = M.compute_metrics(torch.cat(real_feats), torch.cat(fake_feats), names, kid_subsets=kid_subsets,
                               kid_subset_size=kid_subset_size, seed=seed)
    record = FE.feature_net_record() if extractor.name == "shapes" else None
    return {
        "schema": SCHEMA, "checkpoint": checkpoint, "checkpoint_sha256": file_sha256(checkpoint),
        "step": state["step"], "weights": "G_ema" if ema else "G",
        "data": data if data is not None else (cfg.data or "embedded shapes"),
        "n_real": int(real.shape[0]), "n_fake": n, "seed": seed,
        "kid": {"subsets": kid_subsets, "subset_size": min(kid_subset_size, n, int(real.shape[0]))}
        if "kid" in names else None, "pr_k": 3 if "pr" in names else None,
        "features": extractor.name, "features_note": extractor.note,
        "feature_net_sha256": record.get("sha256") if record else None,
        "metrics": values, "time_s": round(time.time() - t0, 2),
    }


def format_result(doc: dict) -> str:
    """The metrics of an ``evaluate`` document in one line per metric."""
    m = doc["metrics"]
    lines = []
    if "fid" in m:
        lines.append(f"FID        {m['fid']:.4f}")
    if "kid" in m:
        spread = (f" +- {m['kid_std']:.6f}" if m.get("kid_std") is not None
                  else " (one estimate: both sets fit in one subset)")
        lines.append(f"KID        {m['kid']:.6f}{spread}")
    if "precision" in m:
        lines.append(f"precision  {m['precision']:.4f}")
        lines.append(f"recall     {m['recall']:.4f}")
    return "\n".join(lines)


class RunEvaluator:
    """``fastgan train --eval-every K``: ``evaluator(trainer)`` -> the metrics of the trainer's G_ema
    against its training data, the fields of one log record (``Trainer.evaluate`` adds the step).

    The same images as ``fastgan eval`` with the same ``n`` and ``seed``: image i's latent is
    ``model.latents(seed, i)`` and the real images are the seeded subset of the training data
    (``dataset_subset``; an int index: no random crop or flip), so on the CPU a run's last record
    equals ``fastgan eval`` of its last checkpoint. Nothing here draws from the trainer's or the
    global random generators. The real features are computed at the first call and kept. The
    extractor is built at construction (a bad ``inception_weights`` fails before the run starts)."""

    def __init__(self, metrics="fid,kid", n: int = 2048, seed: int = 0, batch_size: int = 256,
                 inception_weights: str | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000):
        self.names = M.parse_metrics(metrics)
        need = max(EVAL_MIN_N[m] for m in self.names)
        if isinstance(n, bool) or not isinstance(n, int) or n < need:
            raise M.MetricError(f"n must be an integer >= {need} for {', '.join(self.names)}, got {n!r}")
        if batch_size < 1:
            raise M.MetricError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.seed, self.batch_size = n, seed, batch_size
        self.kid_subsets, self.kid_subset_size = kid_subsets, kid_subset_size
        self.extractor = FE.get_extractor(inception_weights, "cpu")
        self.real_features = None

    @classmethod
    def from_config(cls, cfg, **kw) -> "RunEvaluator":
        """The evaluator of a TrainConfig's ``eval_metrics`` and ``eval_n``."""
        return cls(cfg.eval_metrics, cfg.eval_n, **kw)

    def _features(self, images: torch.Tensor) -> torch.Tensor:
        return self.extractor(images, batch_size=self.batch_size)

    def prepare(self, trainer) -> None:
        """The real features of ``trainer``'s data (done by the first call otherwise; ``fastgan
        train`` calls it before the first step, so that data too small for the metrics fails then)."""
        if self.extractor.device != trainer.device:
            self.extractor = FE.FeatureExtractor(self.extractor.name, self.extractor.module, trainer.device,
                                                 self.extractor.note)
        if self.real_features is None:
            real = dataset_subset(trainer.dataset, self.n, self.seed)
            need = max(EVAL_MIN_N[m] for m in self.names)
            if real.shape[0] < need:
                raise M.MetricError(f"the training data has {real.shape[0]} images; {', '.join(self.names)} need "
                                    f"at least {need}")
            self.real_features = self._features(real)

    def __call__(self, trainer) -> dict:
        self.prepare(trainer)
        fake = []
        for start in range(0, self.n, self.batch_size):
            stop = min(self.n, start + self.batch_size)
            images = trainer.eval_images(latents(self.seed, start, stop, trainer.cfg.z_dim),
                                         noise_seed=image_seed(self.seed, start))
            if not torch.isfinite(images).all():
                return {"error": f"G_ema's images {start}..{stop - 1} contain NaN or Inf: no metrics",
                        "n_fake": self.n, "n_real": int(self.real_features.shape[0]), "features": self.extractor.name}
            fake.append(self._features(images))
        values = M.compute_metrics(self.real_features, torch.cat(fake), self.names, kid_subsets=self.kid_subsets,
                                   kid_subset_size=self.kid_subset_size, seed=self.seed)
        return dict(values, n_fake=self.n, n_real=int(self.real_features.shape[0]), features=self.extractor.name)
