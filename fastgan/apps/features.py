"""Feature extractors for the metrics: images in [-1, 1] -> one float64 feature vector per image.

- ``shapes`` (the default): ``ShapesFeatureNet``, a small CNN that fastgan trains on its embedded
  shapes dataset (``scripts/train_feature_net.py``; weights shipped as ``feature_net.pt`` with the
  record ``feature_net.json``: seed, the script's commit, test accuracy). It classifies the shape
  (disc, square, triangle) and regresses what else was drawn (colours, size, position), so that its
  64-dimensional features see colour and geometry, not only the class. **Numbers computed on these
  features (FID, KID, precision/recall) are not comparable with Inception-FID values** of papers or
  other tools: they measure the distance in this net's feature space, on 32x32 shapes.
- ``inception``: InceptionV3's 2048-dimensional pool features from a local weights file in
  torchvision's format (``--inception-weights PATH``). Needs the torchvision package; nothing is
  downloaded, ever.
"""
from __future__ import annotations

import json
import os

import torch
import torch.nn.functional as F
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
FEATURE_NET_WEIGHTS = os.path.join(HERE, "feature_net.pt")
FEATURE_NET_RECORD = os.path.join(HERE, "feature_net.json")
FEATURE_NET_RESOLUTION = 32
N_ATTRIBUTES = 12  # regressed: shape colour (3), background colours (6), size, cx, cy


class FeatureError(RuntimeError):
    """A feature extractor cannot be built or run (missing weights, missing package, bad images)."""


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                         antialias=x.shape[-1] > size)


class ShapesFeatureNet(nn.Module):
    """Three conv stages (3x3 conv + ReLU + 2x2 max-pool: 32 -> 16 -> 8 -> 4), global average
    pooling, a 64-unit ReLU layer (the features), then a 3-class head and an attribute head.
    Any square input size is resized (bilinear, antialiased) to 32x32 first."""

    def __init__(self, width: int = 16, n_classes: int = 3, n_features: int = 64):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2))
        self.fc = nn.Linear(4 * w, n_features)
        self.classify = nn.Linear(n_features, n_classes)
        self.attributes = nn.Linear(n_features, N_ATTRIBUTES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise FeatureError(f"images must have shape [N, 3, H, W], got {list(x.shape)}")
        h = self.body(_resize(x, FEATURE_NET_RESOLUTION)).mean((2, 3))
        return F.relu(self.fc(h))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(class logits [N, 3], attributes [N, 12])."""
        f = self.features(x)
        return self.classify(f), self.attributes(f)


def shape_attribute_targets(attrs: dict) -> torch.Tensor:
    """The regression targets [N, 12] of ``make_shapes(..., return_attributes=True)``'s attributes."""
    return torch.cat([attrs["color"], attrs["background"], attrs["size"][:, None], attrs["cx"][:, None],
                      attrs["cy"][:, None]], 1)


def train_shapes_classifier(images, labels, targets=None, epochs: int = 8, batch_size: int = 128, lr: float = 3e-3,
                            seed: int = 0, width: int = 16, log=None) -> ShapesFeatureNet:
    """Train a ``ShapesFeatureNet`` on CPU tensors: cross-entropy on ``labels`` plus, when
    ``targets`` [N, 12] are given, the mean squared error of the attribute head. Adam, cosine
    learning-rate decay, minibatches from a generator seeded with ``seed`` (deterministic on the
    CPU for a fixed number of threads)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = ShapesFeatureNet(width=width)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    n = images.shape[0]
    steps = epochs * (n // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(n // batch_size):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            logits, attr = net(images[idx])
            loss = F.cross_entropy(logits, labels[idx])
            if targets is not None:
                loss = loss + 4.0 * F.mse_loss(attr, targets[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        if log:
            log(f"epoch {epoch + 1}/{epochs}: mean loss {total / (n // batch_size):.4f}")
    return net.eval()


@torch.no_grad()
def classifier_accuracy(net: ShapesFeatureNet, images, labels, batch_size: int = 512) -> float:
    net.eval()
    pred = torch.cat([net(images[i:i + batch_size])[0].argmax(1) for i in range(0, images.shape[0], batch_size)])
    return float((pred == labels).double().mean())


def load_shapes_feature_net(path: str = FEATURE_NET_WEIGHTS) -> ShapesFeatureNet:
    """The shipped (or a given) ``ShapesFeatureNet`` state_dict, loaded with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise FeatureError(f"{path}: no feature-net weights; run scripts/train_feature_net.py to make them")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        width = state["body.0.weight"].shape[0]
        net = ShapesFeatureNet(width=width)
        net.load_state_dict(state)
    except Exception as exc:
        raise FeatureError(f"{path}: not a ShapesFeatureNet state_dict ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200]})") from None
    return net.eval()


def feature_net_record(path: str = FEATURE_NET_RECORD) -> dict | None:
    """The JSON record written next to the shipped weights (seed, commit, accuracy), or None."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# ----------------------------------------------------------------------------- InceptionV3

INCEPTION_SIZE = 299


def load_inception(path: str) -> nn.Module:
    """torchvision's InceptionV3 with the state_dict at ``path`` (torchvision's key names, loaded
    with ``weights_only=True``) and ``fc`` replaced by the identity: its output is the 2048-d
    average-pool feature. Needs torchvision; never downloads anything."""
    try:
        from torchvision.models import inception_v3
    except ImportError:
        raise FeatureError("--inception-weights needs the torchvision package (pip install torchvision); "
                           "it is not installed") from None
    except Exception as exc:  # e.g. PyPI's (CUDA) build of torchvision beside a CPU build of torch
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise FeatureError(f"--inception-weights needs torchvision, which is installed but does not import "
                           f"({type(exc).__name__}: {first}); install the torchvision build made for this torch "
                           f"({torch.__version__})") from None
    if not os.path.isfile(path):
        raise FeatureError(f"{path}: no such Inception weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise TypeError(f"the file holds a {type(state).__name__}, not a dict of tensors")
        net = inception_v3(weights=None, aux_logits="AuxLogits.fc.weight" in state, init_weights=False,
                           transform_input=False)
        expected = net.state_dict()
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        if missing or unexpected:
            raise KeyError(", ".join(f"{len(keys)} {what} keys (first: {keys[0]})" for keys, what in
                                     ((missing, "missing"), (unexpected, "unexpected")) if keys))
        net.load_state_dict(state)
    except FeatureError:
        raise
    except Exception as exc:
        why = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise FeatureError(f"{path}: not a torchvision InceptionV3 state_dict ({type(exc).__name__}: "
                           f"{(str(why).splitlines() or [''])[0][:200]})") from None
    net.fc = nn.Identity()
    return net.eval()


class _InceptionFeatures(nn.Module):
    """[-1, 1] images -> resized to 299x299 -> ImageNet normalisation -> pool features [N, 2048]."""

    MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise FeatureError(f"images must have shape [N, 3, H, W], got {list(x.shape)}")
        x = _resize((x + 1) / 2, INCEPTION_SIZE)
        mean, std = torch.tensor(self.MEAN, device=x.device), torch.tensor(self.STD, device=x.device)
        out = self.net((x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
        return out if isinstance(out, torch.Tensor) else out[0]


# ----------------------------------------------------------------------------- the extractor

class FeatureExtractor:
    """``extractor(images)`` -> float64 features [N, D] on the CPU, computed in batches without
    gradients. ``name`` says which features these are ("shapes" or "inception")."""

    def __init__(self, name: str, module: nn.Module, device="cpu", note: str = ""):
        self.name, self.module, self.device, self.note = name, module.to(device).eval(), torch.device(device), note

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3:
            raise FeatureError(f"images must have shape [N, 3, H, W], got {list(images.shape)}")
        if not torch.isfinite(images).all():
            raise FeatureError("the images contain NaN or Inf")
        out = [self.module.features(images[i:i + batch_size].to(self.device, torch.float32)).double().cpu()
               for i in range(0, images.shape[0], batch_size)]
        return torch.cat(out) if out else torch.empty(0, 0, dtype=torch.float64)


SHAPES_NOTE = ("features of fastgan's shapes feature net: not comparable with Inception-FID "
               "(or any other feature space)")


def get_extractor(inception_weights: str | None = None, device="cpu") -> FeatureExtractor:
    """The shipped shapes feature net, or InceptionV3 from ``inception_weights`` when given."""
    if inception_weights:
        return FeatureExtractor("inception", _InceptionFeatures(load_inception(inception_weights)), device,
                                f"InceptionV3 pool features from {inception_weights} (torchvision's architecture)")
    return FeatureExtractor("shapes", load_shapes_feature_net(), device, SHAPES_NOTE)
