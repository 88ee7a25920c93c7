"""Class-conditional generation: labels in the data, the conditional DCGAN (label embedding in G,
projection D), conditional training, per-class export, and that a short conditional run gives
samples of the requested class."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.data import SHAPE_CLASSES, DataError, Labelled, conditional_labels, load_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------- labels in the data

def _png(path, color=(0, 0, 0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (32, 32), color).save(path)


def test_labels_of_the_embedded_data_a_class_folder_and_an_npz(tmp_path):
    ds = load_dataset(None, 32, 48)
    labels, classes = conditional_labels(ds, "embedded")
    assert classes == SHAPE_CLASSES and labels.shape == (48,) and set(labels.tolist()) == {0, 1, 2}
    item = Labelled(ds, labels, classes)[5]
    assert torch.equal(item[0], ds[5][0]) and int(item[1]) == int(labels[5])
    for name, n in (("zebra", 2), ("cat", 3)):  # classes are the sorted subfolder names
        for i in range(n):
            _png(tmp_path / "f" / name / f"{i}.png")
    for resize in (False, True):
        labels, classes = conditional_labels(load_dataset(str(tmp_path / "f"), 32, resize=resize), "f")
        assert classes == ("cat", "zebra") and labels.tolist() == [0, 0, 0, 1, 1]
    x = np.zeros((4, 32, 32, 3), np.uint8)
    np.savez(tmp_path / "a.npz", images=x, labels=np.array([1, 0, 2, 1]))
    labels, classes = conditional_labels(load_dataset(str(tmp_path / "a.npz"), 32), "a")
    assert classes == ("0", "1", "2") and labels.tolist() == [1, 0, 2, 1]
    np.savez(tmp_path / "b.npz", images=x, labels=np.array([1, 0, 1, 1]), classes=np.array(["red", "blue"]))
    labels, classes = conditional_labels(load_dataset(str(tmp_path / "b.npz"), 32), "b")
    assert classes == ("red", "blue") and labels.tolist() == [1, 0, 1, 1]


@pytest.mark.parametrize("problem", ["unlabelled", "out_of_range", "negative", "float_labels", "single_class",
                                     "loose_file", "one_subfolder", "length"])
def test_bad_labels_are_one_clear_error(tmp_path, problem):
    x = np.zeros((4, 32, 32, 3), np.uint8)
    path = str(tmp_path / "d.npz")
    if problem == "unlabelled":
        np.savez(path, images=x)
        match = "conditional training needs labelled data"
    elif problem == "out_of_range":
        np.savez(path, images=x, labels=np.array([0, 1, 2, 1]), classes=np.array(["a", "b"]))
        match = "label 2 is out of range: labels index the 2 classes"
    elif problem == "negative":
        np.savez(path, images=x, labels=np.array([0, -1, 1, 1]))
        match = "label -1 is out of range"
    elif problem == "float_labels":
        np.savez(path, images=x, labels=np.array([0.0, 1.0, 1.0, 0.0]))
        match = "integer class indices"
    elif problem == "length":
        np.savez(path, images=x, labels=np.array([0, 1, 1]))
        match = r"'labels' has shape \[3\], but there are 4 images"
    elif problem == "single_class":
        np.savez(path, images=x, labels=np.zeros(4, np.int64))
        match = "a single class .*needs at least two classes"
    else:
        _png(tmp_path / "f" / "a" / "0.png")
        _png(tmp_path / "f" / ("0.png" if problem == "loose_file" else "a/1.png"))
        path = str(tmp_path / "f")
        match = "lies in the folder itself, so it has no class" if problem == "loose_file" else "a single class"
    ds = load_dataset(path, 32)  # unconditional use of the same data is fine
    assert len(ds) >= 2
    with pytest.raises(DataError, match=match):
        conditional_labels(ds, path)
