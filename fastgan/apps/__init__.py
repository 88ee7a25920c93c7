"""fastgan.apps: what a trained generator is for: quality metrics (FID/KID/precision-recall) on
feature extractors, dataset export (``generate``). Sits above fastgan.train and fastgan.models,
below fastgan.cli (DESIGN.md section 1)."""
from .metrics import (METRICS, MetricError, compute_metrics, fid_from_features, frechet_distance,
                      kid_from_features, precision_recall)

__all__ = ["METRICS", "MetricError", "compute_metrics", "fid_from_features", "frechet_distance",
           "kid_from_features", "precision_recall"]
