"""Training data: the embedded dataset, image folders, .npz arrays, the resumable sampler,
and clear errors for unusable data."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastgan.data import DataError, ImageFolder, StepBatchSampler, load_dataset, load_npz, make_shapes


def _write_png(path, size, color=(200, 30, 90)):
    Image.new("RGB", size, color).save(path)


def test_embedded_shapes_are_deterministic_and_in_range():
    a, b = make_shapes(64, 32, seed=3), make_shapes(64, 32, seed=3)
    assert torch.equal(a, b) and a.shape == (64, 3, 32, 32)
    assert a.min() >= -1 and a.max() <= 1
    assert not torch.equal(a, make_shapes(64, 32, seed=4))
    # every image has a bright shape on a darker background: a wide per-image value range
    spread = a.flatten(1).max(1).values - a.flatten(1).min(1).values
    assert (spread > 0.5).all()
    assert make_shapes(8, 64).shape == (8, 3, 64, 64)


def test_image_folder_loads_and_scales(tmp_path):
    for i in range(3):
        _write_png(tmp_path / f"{i}.png", (16, 16), (255, 0, 0))
    (tmp_path / "notes.txt").write_text("ignored")
    ds = load_dataset(str(tmp_path), 16)
    assert len(ds) == 3
    (x,) = ds[0]
    assert x.shape == (3, 16, 16) and x[0].min() == 1.0 and x[1].max() == -1.0


@pytest.mark.parametrize("problem", ["empty", "unreadable", "mixed", "not_square", "wrong_resolution", "missing"])
def test_image_folder_errors_name_the_problem(tmp_path, problem):
    root = tmp_path / "imgs"
    root.mkdir()
    if problem == "unreadable":
        _write_png(root / "ok.png", (16, 16))
        (root / "broken.png").write_bytes(b"not a png")
        match = "broken.png: unreadable image"
    elif problem == "mixed":
        _write_png(root / "a.png", (16, 16))
        _write_png(root / "b.png", (32, 32))
        match = "mixed sizes"
    elif problem == "not_square":
        _write_png(root / "a.png", (16, 8))
        match = "square"
    elif problem == "wrong_resolution":
        _write_png(root / "a.png", (16, 16))
        match = "--resolution 16"
    elif problem == "missing":
        root = tmp_path / "nope"
        match = "no such file"
    else:
        match = "no images"
    with pytest.raises(DataError, match=match):
        load_dataset(str(root), 32)


def test_npz_layouts_and_errors(tmp_path):
    nhwc = np.random.randint(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=nhwc)
    x = load_npz(str(tmp_path / "u8.npz"))
    assert x.shape == (5, 3, 8, 8)
    assert torch.allclose(x, torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 127.5 - 1)
    np.savez(tmp_path / "f.npz", x=np.random.rand(4, 3, 8, 8).astype(np.float32))
    assert load_npz(str(tmp_path / "f.npz")).min() >= -1
    np.savez(tmp_path / "bad.npz", images=np.full((2, 3, 8, 8), 7.0, dtype=np.float32))
    with pytest.raises(DataError, match=r"\[0, 1\] or \[-1, 1\]"):
        load_npz(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "nan.npz", images=np.full((2, 3, 8, 8), np.nan, dtype=np.float32))
    with pytest.raises(DataError, match="NaN"):
        load_npz(str(tmp_path / "nan.npz"))
    np.savez(tmp_path / "two.npz", a=nhwc, b=nhwc)
    with pytest.raises(DataError, match="several arrays"):
        load_npz(str(tmp_path / "two.npz"))
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot read"):
        load_npz(str(tmp_path / "junk.npz"))
    with pytest.raises(DataError, match="folder of images or an .npz"):
        load_dataset(__file__, 32)


def test_sampler_is_a_function_of_the_step():
    s = StepBatchSampler(n=50, batch_size=8, seed=1)
    it = iter(s)
    first = [next(it) for _ in range(10)]
    resumed = StepBatchSampler(n=50, batch_size=8, seed=1, start_step=4)
    assert [next(iter(resumed))] == [first[4]]
    assert all(len(b) == 8 for b in first)
    epoch0 = sum(first[:6], [])  # 6 batches per epoch: no repeats inside an epoch
    assert len(set(epoch0)) == 48
    ranks = [StepBatchSampler(50, 8, 1, rank=r, world_size=2).indices(3) for r in range(2)]
    assert ranks[0] + ranks[1] == first[3]
    with pytest.raises(DataError, match="larger than the dataset"):
        StepBatchSampler(n=4, batch_size=8, seed=0)
    with pytest.raises(ValueError, match="divisible"):
        StepBatchSampler(n=40, batch_size=9, seed=0, world_size=2)


def test_image_folder_in_a_dataloader_with_workers(tmp_path):
    for i in range(4):
        _write_png(tmp_path / f"{i}.jpg", (8, 8), (i * 40, 0, 0))
    ds = ImageFolder(str(tmp_path))
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=1)
    batches = [b[0] for b in loader]
    assert len(batches) == 2 and batches[0].shape == (2, 3, 8, 8)
