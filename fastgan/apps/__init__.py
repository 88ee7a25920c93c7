"""fastgan.apps: what a trained generator is for: quality metrics (FID/KID/precision-recall) on
feature extractors (``metrics``, ``features``, ``evaluate``) and dataset export (``generate``).
Sits above fastgan.train and fastgan.models, below fastgan.cli (DESIGN.md section 1)."""
from .evaluate import RunEvaluator, evaluate, evaluate_images
from .features import FeatureError, get_extractor
from .generate import GenerateError, generate
from .metrics import (METRICS, MetricError, compute_metrics, fid_from_features, frechet_distance,
                      kid_from_features, precision_recall)

__all__ = ["METRICS", "MetricError", "compute_metrics", "fid_from_features", "frechet_distance",
           "kid_from_features", "precision_recall", "FeatureError", "get_extractor", "evaluate", "evaluate_images",
           "RunEvaluator", "GenerateError", "generate"]
