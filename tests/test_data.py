"""Training data: the embedded dataset, image folders, .npz arrays, the resumable sampler,
and clear errors for unusable data."""
import zlib

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


# ----------------------------------------------------------------------------- faults found in issue 19

def test_a_truncated_image_stops_the_run_with_one_line_after_the_checkpoint(tmp_path):
    """The header scan passes; decoding fails at the batch that holds the file: the run writes
    its checkpoint and raises one DataError line naming the file (with DataLoader workers, whose
    traceback torch puts into the message, too)."""
    from fastgan.train import Trainer, load_checkpoint

    from .test_train import tiny

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        _write_png(folder / f"{i}.png", (32, 32), (30 * i, 90, 255 - 30 * i))
    sampler = StepBatchSampler(8, 4, seed=0)
    bad = sorted(set(sampler.indices(1)) - set(sampler.indices(0)))[0]  # first read in the second step
    name = sorted(folder.iterdir())[bad]
    name.write_bytes(name.read_bytes()[:60])
    assert len(ImageFolder(str(folder))) == 8
    for workers in (0, 1):
        t = Trainer(tiny(tmp_path / f"w{workers}", data=str(folder), batch_size=4, steps=3, workers=workers,
                         g_width=4, d_width=4))
        with pytest.raises(DataError) as info:
            t.train()
        msg = str(info.value)
        assert "\n" not in msg and msg.startswith(f"{name}: unreadable image"), msg
        assert "stopped before step 2 (checkpoint of step 1 in" in msg
        assert load_checkpoint(t.cfg.out + "/checkpoint.pt")["step"] == 1


def test_16_bit_grayscale_is_scaled_by_its_range(tmp_path):
    values = np.array([[0, 16384, 32768, 65535]], dtype=np.uint16).repeat(4, 0)
    Image.fromarray(values).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    (x,) = ImageFolder(str(tmp_path))[0]
    assert x.shape == (3, 4, 4)
    assert torch.allclose(x[:, 0], torch.tensor([-1.0, -0.5, 0.0, 1.0]).expand(3, 4), atol=1e-4)


def test_npz_range_is_decided_once_with_a_tolerance_and_said(tmp_path):
    x = np.random.default_rng(0).random((8, 3, 8, 8), dtype=np.float32)
    x[0, 0, 0, 0] = -0.0005  # rounding below 0: still [0, 1] data
    np.savez(tmp_path / "f.npz", images=x)
    ds = load_dataset(str(tmp_path / "f.npz"), 8)
    assert abs(ds.tensors[0].mean().item()) < 0.05 and ds.tensors[0].min() >= -1
    assert "read as [0, 1]" in ds.note
    np.savez(tmp_path / "s.npz", images=x.clip(0, 1) * 2 - 1)
    assert "read as [-1, 1]" in load_dataset(str(tmp_path / "s.npz"), 8).note


def test_unusable_files_are_clear_errors_at_load(tmp_path):
    np.savez(tmp_path / "two.npz", images=np.zeros((4, 2, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="1, 3 or 4 channels"):
        load_dataset(str(tmp_path / "two.npz"), 8)
    np.savez(tmp_path / "two_nhwc.npz", images=np.zeros((4, 8, 8, 2), dtype=np.uint8))
    with pytest.raises(DataError, match="1, 3 or 4 channels"):
        load_dataset(str(tmp_path / "two_nhwc.npz"), 8)
    big = tmp_path / "big"
    big.mkdir()
    _write_png(big / "a.png", (16, 16))  # then its header claims 20000 x 20000 (a decompression bomb)
    data = bytearray((big / "a.png").read_bytes())
    data[16:24] = (20000).to_bytes(4, "big") * 2
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")
    (big / "a.png").write_bytes(bytes(data))
    with pytest.raises(DataError, match="a.png: unreadable image \\(DecompressionBombError"):
        load_dataset(str(big), 32)
    odd = tmp_path / "odd"
    odd.mkdir()
    _write_png(odd / "a.png", (48, 48))
    with pytest.raises(DataError, match="fastgan's models take 32 or 64 px images: pass --resize") as info:
        load_dataset(str(odd), 32, resolutions=(32, 64))
    assert "--resolution 48" not in str(info.value)
