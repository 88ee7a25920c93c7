"""Data that is not pre-resized (--resize, --crop, --xflip) and a user's own Dataset / DataLoader
(issue 18, item 8)."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastgan import cli
from fastgan.data import DataError, load_dataset, make_loader, resize_short_side
from fastgan.train import Trainer

from .test_train import params, tiny

GREEN, BLUE = torch.tensor([-1.0, 1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])


def _portrait(path, flip_marker=False):
    """64 wide x 96 high: green in rows 16..80 (what a center crop at 32 px keeps, once halved),
    red above and below; a blue column at the left edge with ``flip_marker``."""
    a = np.zeros((96, 64, 3), np.uint8)
    a[..., 0] = 255
    a[16:80] = (0, 255, 0)
    if flip_marker:
        a[:, :8] = (0, 0, 255)
    Image.fromarray(a).save(path)


@pytest.fixture
def portraits(tmp_path):
    folder = tmp_path / "portraits"
    folder.mkdir()
    for i in range(8):
        _portrait(folder / f"{i}.png", flip_marker=True)
    return str(folder)


def _batches(ds, seed, steps=4, batch=4):
    return torch.cat([b[0] for b in make_loader(ds, batch, seed, 0, steps, torch.device("cpu"), workers=0)])


def test_non_square_images_need_resize_and_the_error_says_so(portraits, tmp_path, capsys):
    with pytest.raises(DataError, match=r"64x96.*need square images: pass --resize"):
        load_dataset(portraits, 32)
    np.savez(tmp_path / "p.npz", images=np.zeros((4, 96, 64, 3), np.uint8))
    with pytest.raises(DataError, match="pass --resize"):
        load_dataset(str(tmp_path / "p.npz"), 32)
    rc = cli.main(["train", "--data", portraits, "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("fastgan train: error: ") and "--resize" in err and len(err.splitlines()) == 1
    rc = cli.main(["train", "--crop", "random", "--out", str(tmp_path / "o"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("fastgan train: error: crop 'random'") and "--resize" in err


def test_resize_and_center_crop_keep_the_center(portraits, tmp_path):
    ds = load_dataset(portraits, 32, resize=True)
    (x,) = ds[0]
    assert x.shape == (3, 32, 32)
    # halved to 32x48, rows 8..40 kept: the green band, away from the blue marker column's blur
    assert torch.allclose(x[:, 3:29, 8:].permute(1, 2, 0), GREEN.expand(26, 24, 3), atol=1e-2)
    assert torch.allclose(x[:, 16, 0], BLUE, atol=1e-2)
    # the same as the resize followed by the center crop, and an .npz of the same pixels agrees
    from fastgan.data import _decode
    full = resize_short_side(_decode(f"{portraits}/0.png"), 32)
    assert full.shape == (3, 48, 32) and torch.equal(x, full[:, 8:40])
    arr = np.asarray(Image.open(f"{portraits}/0.png"))[None]
    np.savez(tmp_path / "p.npz", images=arr)
    (y,) = load_dataset(str(tmp_path / "p.npz"), 32, resize=True)[0]
    assert torch.allclose(x, y, atol=1e-6)
    # 64 px models: upsampled from the short side
    assert load_dataset(portraits, 64, resize=True)[0][0].shape == (3, 64, 64)


def test_random_crop_and_xflip_are_deterministic_per_seed(portraits):
    ds = load_dataset(portraits, 32, resize=True, crop="random", xflip=True, seed=1)
    a, b = _batches(ds, 1), _batches(load_dataset(portraits, 32, resize=True, crop="random", xflip=True, seed=1), 1)
    assert torch.equal(a, b)
    other = _batches(load_dataset(portraits, 32, resize=True, crop="random", xflip=True, seed=2), 2)
    assert not torch.equal(a, other)
    # random crops: the red rows come in at different offsets; flips: the blue marker on either side
    red_rows = [(img[0, :, 16] > 0.9).sum().item() for img in a]
    assert len(set(red_rows)) > 2
    left = (a[:, 2, :, 0] > 0.9).float().mean(1) > 0.5  # blue at the left edge: not flipped
    right = (a[:, 2, :, -1] > 0.9).float().mean(1) > 0.5
    assert left.any() and right.any() and torch.equal(left, ~right)
    # workers give the same draws as the main process
    with_workers = torch.cat([x[0] for x in make_loader(ds, 4, 1, 0, 4, torch.device("cpu"), workers=2)])
    assert torch.equal(a, with_workers)


def test_xflip_of_in_memory_data_and_a_resumed_run_are_exact(portraits, tmp_path):
    kw = dict(data=portraits, resize=True, crop="random", xflip=True, workers=0, g_width=4, d_width=4,
              batch_size=4, penalty="r1", reg_interval=2)
    full = Trainer(tiny(tmp_path / "a", steps=4, **kw))
    full.train()
    Trainer(tiny(tmp_path / "b", steps=2, **kw)).train()
    resumed = Trainer(tiny(tmp_path / "b", steps=4, **kw), resume=str(tmp_path / "b" / "run" / "checkpoint.pt"))
    assert resumed.cfg.crop == "random" and resumed.cfg.xflip and resumed.cfg.resize
    resumed.train()
    for name in ("G", "D", "G_ema"):
        assert torch.equal(params(getattr(full, name)), params(getattr(resumed, name))), name
    from fastgan.train import load_checkpoint
    saved = load_checkpoint(str(tmp_path / "b" / "run" / "checkpoint.pt"))["config"]
    assert (saved["resize"], saved["crop"], saved["xflip"]) == (True, "random", True)
    # the embedded dataset flips too
    shapes = load_dataset(None, 32, n_embedded=16, xflip=True)
    flipped = _batches(shapes, 0, steps=4)
    plain = _batches(load_dataset(None, 32, n_embedded=16), 0, steps=4)
    same = [torch.equal(f, p) for f, p in zip(flipped, plain)]
    assert any(same) and not all(same) and all(s or torch.equal(f.flip(-1), p) for s, f, p in zip(same, flipped, plain))


class _Faces(torch.utils.data.Dataset):
    def __init__(self, n=8, size=(40, 48), dtype=torch.uint8, scale=255):
        g = torch.Generator().manual_seed(0)
        self.x = (torch.rand(n, 3, *size, generator=g) * scale).to(dtype)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], i % 2  # (image, label)


def test_a_user_dataset_and_dataloader_train_a_step(tmp_path):
    t = Trainer(tiny(tmp_path / "ds", steps=1, resize=True, workers=0), dataset=_Faces())
    assert t.train()["status"] == "completed" and t.cfg.data is None
    imgs = torch.rand(8, 3, 32, 32) * 2 - 1
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(imgs), batch_size=8)
    t = Trainer(tiny(tmp_path / "dl", steps=2), dataset=loader)
    assert t.train()["status"] == "completed" and t.step == 2
    with pytest.raises(DataError, match=r"_Faces\[0\]: float images must lie in \[-1, 1\].*, 3\]"):
        Trainer(tiny(tmp_path / "bad", resize=True), dataset=_Faces(dtype=torch.float32, scale=3))
    with pytest.raises(DataError, match="48x40 but the model is built for 32x32; pass --resize"):
        Trainer(tiny(tmp_path / "bad"), dataset=_Faces())
    with pytest.raises(DataError, match=r"\[C, H, W\]"):
        Trainer(tiny(tmp_path / "bad"), dataset=torch.utils.data.TensorDataset(torch.zeros(8, 32, 32)))
    with pytest.raises(DataError, match="drop_last"):
        Trainer(tiny(tmp_path / "bad2", steps=1),
                dataset=torch.utils.data.DataLoader(torch.utils.data.TensorDataset(imgs), batch_size=5)).train()


def test_a_user_dataloader_is_cycled_and_a_resume_skips_the_used_batches():
    from fastgan.data import LoaderBatches

    imgs = (torch.arange(6).float().view(6, 1, 1, 1) / 6).expand(6, 3, 32, 32)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(imgs), batch_size=2)
    it = LoaderBatches(loader, 2, 32)
    straight = [next(it)[0] for _ in range(5)]  # 3 batches an epoch: the 4th and 5th are the first two again
    assert torch.equal(straight[3], straight[0]) and torch.equal(straight[4], straight[1])
    resumed = LoaderBatches(loader, 2, 32, skip=2)
    assert all(torch.equal(next(resumed)[0], straight[i]) for i in (2, 3, 4))
    assert straight[1].shape == (2, 3, 32, 32) and straight[1][0, 0, 0, 0] == pytest.approx(2 / 6)
