"""The embedded dataset's labels, the shapes feature net (the shipped weights and their record),
and the InceptionV3 loader's errors."""
import torch

from fastgan.data import SHAPE_CLASSES, load_dataset, make_shapes


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
