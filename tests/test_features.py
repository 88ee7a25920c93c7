"""The embedded dataset's labels, the shapes feature net (the shipped weights and their record),
and the InceptionV3 loader's errors."""
import hashlib
import sys

import pytest
import torch

from fastgan.apps import features as FE
from fastgan.apps.metrics import fid_from_features
from fastgan.data import SHAPE_CLASSES, load_dataset, make_shapes


pytestmark = pytest.mark.usefixtures("one_thread")


def test_embedded_labels_match_the_drawn_shapes():
    images, attrs = make_shapes(60, 64, seed=7, return_attributes=True)
    assert torch.equal(images, make_shapes(60, 64, seed=7))  # the same stream with or without attributes
    labels = attrs["label"]
    assert labels.dtype == torch.int64 and set(labels.tolist()) == {0, 1, 2} and SHAPE_CLASSES[1] == "square"
    # the shape's pixels carry its colour: count them per image and compare areas with the drawn size
    color = (attrs["color"] * 2 - 1)[:, :, None, None]
    area = ((images - color).abs().amax(1) < 1e-5).double().mean((1, 2))
    expected = torch.stack([torch.pi * attrs["size"] ** 2, (1.7 * attrs["size"]) ** 2,
                            0.5 * (1.8 * attrs["size"]) * (2 * 0.6 * 1.8 * attrs["size"])], 1).double()
    # the class whose area is nearest is the label (disc and square differ by 8% in area)
    nearest = (area[:, None] - expected).abs().argmin(1)
    assert (nearest == labels).double().mean() > 0.9, (nearest, labels)
    ds = load_dataset(None, 32, 40, seed=3)
    assert ds.classes == SHAPE_CLASSES and torch.equal(ds.labels, make_shapes(40, 32, 3, True)[1]["label"])


# ----------------------------------------------------------------------------- the shipped feature net

ACCURACY_FLOOR = 0.97  # the shipped net's recorded held-out accuracy must be above this


def test_shipped_weights_and_record():
    record = FE.feature_net_record()
    assert record is not None, "fastgan/apps/feature_net.json is missing"
    assert record["test_accuracy"] > ACCURACY_FLOOR and record["test_data"]["n"] >= 1000
    assert "NOT comparable with Inception-FID" in record["not_comparable"]
    assert record["script"] == "scripts/train_feature_net.py" and len(record["script_commit"]) == 40
    data = open(FE.FEATURE_NET_WEIGHTS, "rb").read()
    assert len(data) < 1 << 20 and hashlib.sha256(data).hexdigest() == record["sha256"]


def test_shipped_net_classifies_fresh_shapes_and_separates_real_from_noise():
    net = FE.load_shapes_feature_net()
    images, attrs = make_shapes(300, 32, seed=31337, return_attributes=True)
    assert FE.classifier_accuracy(net, images, attrs["label"]) > 0.95
    ext = FE.get_extractor()
    assert ext.name == "shapes" and "not comparable with Inception-FID" in ext.note
    real, other = ext(images[:150]), ext(make_shapes(150, 64, seed=4242))  # 64 px: resized to 32
    assert real.shape == (150, 64) and real.dtype == torch.float64
    noise = ext(torch.rand(150, 3, 32, 32) * 2 - 1)
    real_vs_real, real_vs_noise = fid_from_features(real, other), fid_from_features(real, noise)
    assert real_vs_noise > 20 * real_vs_real, (real_vs_real, real_vs_noise)


def test_training_is_deterministic():
    images, attrs = make_shapes(64, 32, seed=5, return_attributes=True)
    targets = FE.shape_attribute_targets(attrs)
    a, b = (FE.train_shapes_classifier(images, attrs["label"], targets, epochs=1, batch_size=32, seed=3, width=4)
            for _ in range(2))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_bad_inputs(tmp_path):
    ext = FE.get_extractor()
    with pytest.raises(FE.FeatureError, match="NaN"):
        ext(torch.full((2, 3, 32, 32), float("nan")))
    with pytest.raises(FE.FeatureError, match=r"\[N, 3, H, W\]"):
        ext(torch.zeros(2, 1, 32, 32))
    with pytest.raises(FE.FeatureError, match="no feature-net weights"):
        FE.load_shapes_feature_net(str(tmp_path / "missing.pt"))
    (tmp_path / "bad.pt").write_bytes(b"not a state dict")
    with pytest.raises(FE.FeatureError, match="not a ShapesFeatureNet state_dict"):
        FE.load_shapes_feature_net(str(tmp_path / "bad.pt"))


def test_inception_without_torchvision_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # import fails, as when it is not installed
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(FE.FeatureError, match="needs the torchvision package"):
        FE.get_extractor(inception_weights=str(tmp_path / "w.pt"))


def test_inception_with_a_torchvision_that_does_not_import_is_a_clear_error(monkeypatch, tmp_path):
    """PyPI's torchvision beside the CPU build of torch fails inside its import with a RuntimeError
    ("operator torchvision::nms does not exist"): one FeatureError, not a traceback."""
    fake = tmp_path / "site" / "torchvision"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise RuntimeError('operator torchvision::nms does not exist')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in ("torchvision", "torchvision.models"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    with pytest.raises(FE.FeatureError, match=r"installed but does not import \(RuntimeError: operator "
                                              r"torchvision::nms"):
        FE.get_extractor(inception_weights=str(tmp_path / "w.pt"))


def _torchvision_models():
    """torchvision.models, or a skip: not installed, or installed but not importable (PyPI's build
    needs the CUDA build of torch; the CPU build of torch 2.13 has no torchvision on PyPI)."""
    try:
        import torchvision.models as models
    except Exception as exc:
        pytest.skip(f"torchvision does not import here ({type(exc).__name__}: {str(exc)[:100]})")
    return models


@pytest.mark.parametrize("aux,wrapped", [(True, False), (False, True)], ids=["torchvision", "no-aux-in-state_dict"])
def test_inception_loads_a_random_network_in_torchvision_format(tmp_path, aux, wrapped):
    """A randomly initialised InceptionV3 saved as torchvision saves its state_dict (with or
    without the auxiliary classifier; bare, or under "state_dict") loads through
    --inception-weights, and its features are the 2048-d average pool of the same network run
    directly on the resized, ImageNet-normalised images. Missing and corrupt files: clear errors."""
    import torch.nn.functional as F

    models = _torchvision_models()
    torch.manual_seed(0)
    net = models.inception_v3(weights=None, aux_logits=aux, init_weights=True, transform_input=False).eval()
    state = net.state_dict()
    path = tmp_path / "inception.pt"
    torch.save({"state_dict": state} if wrapped else state, path)
    ext = FE.get_extractor(inception_weights=str(path))
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    got = ext(images)
    assert ext.name == "inception" and got.shape == (2, 2048) and got.dtype == torch.float64
    pooled = []
    net.avgpool.register_forward_hook(lambda m, i, o: pooled.append(o.flatten(1)))
    x = F.interpolate((images + 1) / 2, size=(299, 299), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        net((x - mean) / std)
    assert torch.allclose(got, pooled[0].double(), rtol=1e-5, atol=1e-6), (got - pooled[0].double()).abs().max()
    assert got.std(0).abs().max() > 0  # the two images give different features
    if wrapped:
        return
    # missing and corrupt files
    with pytest.raises(FE.FeatureError, match="no such Inception weights"):
        FE.get_extractor(inception_weights=str(tmp_path / "nope.pt"))
    (tmp_path / "corrupt.pt").write_bytes(path.read_bytes()[:1000])
    with pytest.raises(FE.FeatureError, match="corrupt.pt: not a torchvision InceptionV3 state_dict"):
        FE.get_extractor(inception_weights=str(tmp_path / "corrupt.pt"))
    torch.save({k: v for k, v in state.items() if not k.startswith("Mixed_7c")}, tmp_path / "partial.pt")
    with pytest.raises(FE.FeatureError, match=r"partial.pt: not a torchvision InceptionV3 state_dict \(KeyError: "
                                              r"\d+ missing keys \(first: Mixed_7c"):
        FE.get_extractor(inception_weights=str(tmp_path / "partial.pt"))
    state["fc.weight"] = state["fc.weight"][:10]
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(FE.FeatureError, match=r"shape.pt: not a torchvision InceptionV3 state_dict \(RuntimeError: "
                                              r"Error\(s\) in loading"):
        FE.get_extractor(inception_weights=str(tmp_path / "shape.pt"))
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(FE.FeatureError, match=r"list.pt: not a torchvision InceptionV3 state_dict \(TypeError"):
        FE.get_extractor(inception_weights=str(tmp_path / "list.pt"))
