"""Image repair by GAN inversion: recovery of images in G's range (the hole filled with noise, so
that an inversion that looked into the hole would fail), the feathered blend, the CLI on files
and folders, and the errors on bad input."""
import numpy as np
import pytest
import torch

from fastgan.apps.inpaint import InpaintError, blurred_fill, check_inputs, feathered, inpaint
from fastgan.cli import main
from fastgan.models import Generator
from fastgan.train import TrainConfig, save_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


def _range_generator():
    """An untrained DCGAN with its transposed-conv weights scaled up, so that its images vary (an
    initialised G's images are almost constant)."""
    torch.manual_seed(0)
    G = Generator(8, 32, 4, fused=False).eval()
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, torch.nn.ConvTranspose2d):
                m.weight.mul_(10)
    return G


def _holes(n):
    h = torch.zeros(n, 1, 32, 32)
    h[:, :, 8:20, 10:24] = 1
    return h


def test_inversion_recovers_images_in_the_generators_range():
    G = _range_generator()
    with torch.no_grad():
        x = G(torch.randn(3, 8))
    holes = _holes(3)
    corrupted = x * (1 - holes) + torch.rand_like(x) * holes  # the hole's pixels are unknown
    out, recon = inpaint(G, corrupted, holes, steps=40, restarts=2, lr=0.15, perceptual=0.0)
    h = holes.bool().expand_as(x)

    def err(y):
        return float((y - x)[h].square().mean())

    known = (1 - holes)
    mean_fill = corrupted * known + (corrupted * known).sum((2, 3), keepdim=True) / known.sum((2, 3), keepdim=True) \
        * holes
    baseline = min(err(mean_fill), err(blurred_fill(corrupted, holes)))
    assert err(out) < 0.25 * baseline, (err(out), baseline)
    w = feathered(holes, 1.0).expand_as(x)
    assert torch.equal(out[w == 0], corrupted[w == 0])  # far from the hole: the input, untouched
    assert all(p.requires_grad for p in G.parameters())  # restored


def test_feathered_mask():
    w = feathered(_holes(1), 1.5)[0, 0]
    assert (w[8:20, 10:24] == 1).all() and 0 < w[7, 15] < 1 and 0 < w[20, 15] < 1 and w[0, 0] < 1e-6
    assert w[6, 15] < w[7, 15]


@pytest.mark.parametrize("images, holes, msg", [
    (torch.zeros(2, 3, 32, 32), torch.ones(2, 1, 16, 16), "mask size"),
    (torch.zeros(1, 3, 32, 32), torch.zeros(1, 32, 32), "is empty"),
    (torch.zeros(1, 3, 32, 32), torch.ones(1, 32, 32), "covers the whole image"),
    (torch.zeros(1, 3, 64, 64), _holes(1).repeat(1, 1, 2, 2), "the model makes 32x32"),
    (torch.full((1, 3, 32, 32), float("nan")), _holes(1), "NaN"),
    (torch.zeros(1, 1, 32, 32), _holes(1), r"\[N, 3, H, W\]"),
])
def test_bad_input(images, holes, msg):
    with pytest.raises(InpaintError, match=msg):
        check_inputs(images, holes, 32)


def _png(path, arr):
    from PIL import Image

    Image.fromarray(arr).save(path)


def test_cli_on_a_file_and_a_folder(tmp_path, capsys):
    cfg = TrainConfig(z_dim=8, g_width=4, d_width=4, n_embedded=64, fused=False, device="cpu", steps=1)
    G = _range_generator()
    ckpt = str(tmp_path / "c.pt")
    save_checkpoint({"config": cfg.to_dict(), "step": 1, "G": G.state_dict(), "D": {}, "G_ema": G.state_dict(),
                     "opt_g": {}, "opt_d": {}, "rng": {}}, ckpt)
    rng = np.random.default_rng(0)
    (tmp_path / "imgs").mkdir()
    (tmp_path / "masks").mkdir()
    for name in ("a.png", "b.png"):
        _png(tmp_path / "imgs" / name, rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        m = np.zeros((32, 32), np.uint8)
        m[4:12, 4:12] = 255
        _png(tmp_path / "masks" / name, m)
    fast = ["--steps", "2", "--restarts", "1", "--device", "cpu"]
    rc = main(["inpaint", "--checkpoint", ckpt, "--image", str(tmp_path / "imgs" / "a.png"), "--mask",
               str(tmp_path / "masks" / "a.png"), "--out", str(tmp_path / "a_fixed.png"), *fast])
    out, err = capsys.readouterr()
    assert rc == 0, err
    from PIL import Image

    fixed = np.asarray(Image.open(tmp_path / "a_fixed.png"))
    original = np.asarray(Image.open(tmp_path / "imgs" / "a.png"))
    assert fixed.shape == (32, 32, 3) and np.array_equal(fixed[20:, 20:], original[20:, 20:])
    assert not np.array_equal(fixed[4:12, 4:12], original[4:12, 4:12])
    rc = main(["inpaint", "--checkpoint", ckpt, "--image", str(tmp_path / "imgs"), "--mask", str(tmp_path / "masks"),
               "--out", str(tmp_path / "fixed"), *fast])
    out, err = capsys.readouterr()
    assert rc == 0 and sorted(p.name for p in (tmp_path / "fixed").iterdir()) == ["a.png", "b.png"], err
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    _png(tmp_path / "small_mask.png", np.full((16, 16), 255, np.uint8))
    _png(tmp_path / "big.png", np.zeros((64, 64, 3), np.uint8))
    _png(tmp_path / "big_mask.png", np.full((64, 64), 255, np.uint8) * np.eye(64, dtype=np.uint8))
    _png(tmp_path / "empty_mask.png", np.zeros((32, 32), np.uint8))
    a, masks = str(tmp_path / "imgs" / "a.png"), str(tmp_path / "masks" / "a.png")
    for image, mask, msg in [(str(tmp_path / "bad.png"), masks, "unreadable image"),
                             (a, str(tmp_path / "small_mask.png"), "the mask is 16x16 but the image"),
                             (a, str(tmp_path / "empty_mask.png"), "is empty"),
                             (str(tmp_path / "big.png"), str(tmp_path / "big_mask.png"), "the model makes 32x32"),
                             (a, str(tmp_path / "nope.png"), "no such mask"),
                             (str(tmp_path / "imgs"), masks, None)]:
        rc = main(["inpaint", "--checkpoint", ckpt, "--image", image, "--mask", mask, "--out",
                   str(tmp_path / "o" / "x.png") if msg else str(tmp_path / "o2"), *fast])
        out, err = capsys.readouterr()
        if msg is None:  # one mask for a whole folder works
            assert rc == 0, err
            continue
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, (msg, err)
