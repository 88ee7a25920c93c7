"""fastgan generate and fastgan eval: the files, the manifest, atomic and resumable export,
the metrics document, and one-line errors (the CLI runs in this process)."""
import json
import os

import numpy as np
import pytest
import torch

from fastgan.apps.generate import GenerateError, generate
from fastgan.apps.evaluate import evaluate, evaluate_images, real_images
from fastgan.apps.model import file_sha256, latents
from fastgan.cli import main
from fastgan.models import Generator
from fastgan.train import TrainConfig, save_checkpoint


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained DCGAN checkpoint (plain torch modules, the embedded data of 64 images)."""
    torch.manual_seed(0)
    cfg = TrainConfig(z_dim=8, g_width=4, d_width=4, n_embedded=64, fused=False, device="cpu", steps=1)
    G = Generator(8, 32, 4, fused=False)
    path = str(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt")
    save_checkpoint({"config": cfg.to_dict(), "step": 3, "G": G.state_dict(), "D": {}, "G_ema": G.state_dict(),
                     "opt_g": {}, "opt_d": {}, "rng": {}}, path)
    return path


def _run(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _tree(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


def test_latents_depend_on_seed_and_index_only():
    z = latents(5, 0, 6, 8)
    assert torch.equal(z[3:], latents(5, 3, 6, 8)) and len({tuple(r.tolist()) for r in z}) == 6
    assert not torch.equal(latents(5, 0, 2, 8), latents(6, 0, 2, 8))


def test_generate_writes_n_files_and_a_complete_manifest(checkpoint, tmp_path, capsys):
    out = tmp_path / "set"
    rc, stdout, err = _run(capsys, "generate", "--checkpoint", checkpoint, "--n", 7, "--out", out, "--batch-size", 3,
                           "--no-progress", "--device", "cpu")
    assert rc == 0, err
    assert _tree(out) == [".fastgan.lock", "manifest.json"] + [f"unconditional/{i:06d}.png" for i in range(7)]
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] is True and m["count"] == m["done"] == 7 and m["seed"] == 0 and m["step"] == 3
    assert m["checkpoint_sha256"] == file_sha256(checkpoint)
    assert [f["file"] for f in m["files"]] == [f"unconditional/{i:06d}.png" for i in range(7)]
    assert {f["class"] for f in m["files"]} == {"unconditional"}
    from PIL import Image

    assert Image.open(out / "unconditional" / "000006.png").size == (32, 32)
    assert "wrote 7 images" in stdout


def test_interrupted_generate_is_incomplete_and_resumes_identically(checkpoint, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "out"
    generate(checkpoint, 10, str(ref), batch_size=4, device="cpu")

    def stop_after_first_batch(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(checkpoint, 10, str(out), batch_size=4, device="cpu", on_batch=stop_after_first_batch)
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] is False and m["done"] == 4 and "files" not in m
    (out / "unconditional" / ".000005.png.0123abcd.tmp").write_bytes(b"half a file")  # a killed atomic write
    with pytest.raises(GenerateError, match="interrupted generate .* pass --resume"):
        generate(checkpoint, 10, str(out), batch_size=4, device="cpu")
    with pytest.raises(GenerateError, match="other settings: seed 0 .now 1."):
        generate(checkpoint, 10, str(out), batch_size=4, seed=1, device="cpu", resume=True)
    done = []
    generate(checkpoint, 10, str(out), batch_size=4, device="cpu", resume=True, on_batch=done.append)
    assert done == [8, 10]  # it continued after the first batch
    assert _tree(out) == _tree(ref)
    for f in _tree(ref):
        if f.endswith(".png"):
            assert (out / f).read_bytes() == (ref / f).read_bytes(), f
    assert json.loads((out / "manifest.json").read_text())["complete"] is True
    with pytest.raises(GenerateError, match="already holds a complete"):
        generate(checkpoint, 10, str(out), batch_size=4, device="cpu")
    assert generate(checkpoint, 10, str(out), batch_size=4, device="cpu", resume=True)["complete"]


def test_truncation_scales_the_latents(checkpoint, tmp_path):
    from fastgan.apps.model import generate_batch, load_generator

    G = load_generator(checkpoint, device="cpu")[0]
    with torch.no_grad():
        expected = G(latents(0, 0, 3, 8) * 0.5)
    assert torch.allclose(generate_batch(G, 0, 0, 3, truncation=0.5), expected)
    def stop(done):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate(checkpoint, 4, str(tmp_path / "t"), batch_size=2, device="cpu", truncation=0.5, on_batch=stop)
    with pytest.raises(GenerateError, match="other settings: truncation 0.5 .now 1.0."):
        generate(checkpoint, 4, str(tmp_path / "t"), batch_size=2, device="cpu", resume=True)
    m = generate(checkpoint, 4, str(tmp_path / "t"), batch_size=2, device="cpu", resume=True, truncation=0.5)
    assert m["truncation"] == 0.5 and m["complete"]
    with pytest.raises(GenerateError, match="truncation must lie in"):
        generate(checkpoint, 2, str(tmp_path / "u"), device="cpu", truncation=0.0)


def test_generate_npz_matches_png(checkpoint, tmp_path):
    generate(checkpoint, 5, str(tmp_path / "png"), batch_size=2, device="cpu", seed=3)
    m = generate(checkpoint, 5, str(tmp_path / "npz"), fmt="npz", batch_size=2, device="cpu", seed=3)
    assert _tree(tmp_path / "npz") == [".fastgan.lock", "images.npz", "manifest.json"]
    assert m["files"][0]["class_counts"] == {"unconditional": 5}
    from PIL import Image

    with np.load(tmp_path / "npz" / "images.npz") as f:
        assert f["images"].shape == (5, 32, 32, 3) and f["labels"].tolist() == [0] * 5
        for i in range(5):
            assert np.array_equal(f["images"][i], np.asarray(Image.open(tmp_path / "png" / "unconditional" /
                                                                      f"{i:06d}.png")))


def test_generate_errors(checkpoint, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x.txt").write_text("mine")
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    for args, msg in [
        (["--n", 0], "--n must be a positive integer"),
        (["--n", 2, "--out", tmp_path / "busy"], "is not empty and holds no generate manifest"),
        (["--n", 2, "--checkpoint", tmp_path / "nope.pt"], "no such checkpoint file"),
        (["--n", 2, "--checkpoint", tmp_path / "corrupt.pt"], "not a readable checkpoint"),
        (["--n", 2, "--out", tmp_path / "busy" / "x.txt"], "a file is in the way"),
    ]:
        base = {"--checkpoint": checkpoint, "--out": tmp_path / "new"}
        flags = dict(zip(args[::2], args[1::2]))
        argv = [a for k, v in {**base, **flags}.items() for a in (k, v)]
        rc, _, err = _run(capsys, "generate", *argv, "--no-progress", "--device", "cpu")
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)


def test_eval_prints_and_writes_the_metrics(checkpoint, tmp_path, capsys):
    out = tmp_path / "res" / "metrics.json"
    rc, stdout, err = _run(capsys, "eval", "--checkpoint", checkpoint, "--n", 40, "--json", out, "--no-progress",
                           "--device", "cpu", "--kid-subsets", 10)
    assert rc == 0, err
    doc = json.loads(out.read_text())
    assert set(doc["metrics"]) == {"fid", "kid", "kid_std", "precision", "recall"}
    assert doc["kid"] == {"subsets": 10, "subset_size": 40} and doc["pr_k"] == 3
    assert doc["n_fake"] == 40 and doc["n_real"] == 40 and doc["step"] == 3 and doc["features"] == "shapes"
    assert "not comparable with Inception-FID" in doc["features_note"] and "FID" in stdout
    assert os.listdir(out.parent) == ["metrics.json"]
    # an untrained G is far from the data; two real sets are close
    real = real_images(None, 32, 64, seed=0, n_embedded=64)
    other = real_images(None, 32, 64, seed=0, n_embedded=64, data_seed=9)
    assert doc["metrics"]["fid"] > 5 * evaluate_images(real, other, ["fid"])["fid"]
    doc = evaluate(checkpoint, metrics="kid", n=40, device="cpu", kid_subsets=5)
    assert doc["metrics"].keys() == {"kid", "kid_std"}


def test_eval_errors(checkpoint, tmp_path, capsys):
    (tmp_path / "corrupt.pt").write_bytes(b"garbage")
    for args, msg in [
        (["--checkpoint", tmp_path / "nope.pt"], "no such checkpoint file"),
        (["--checkpoint", tmp_path / "corrupt.pt"], "not a readable checkpoint"),
        (["--checkpoint", checkpoint, "--metrics", "fid,is"], "unknown metrics"),
        (["--checkpoint", checkpoint, "--n", 1], "--n must be an integer >= 2"),
        (["--checkpoint", checkpoint, "--data", tmp_path / "none"], "no such file or folder"),
        (["--checkpoint", checkpoint, "--json", tmp_path], "a folder, not a file name"),
    ]:
        extra = [] if "--n" in args else ["--n", 8]
        rc, _, err = _run(capsys, "eval", *args, *extra, "--no-progress", "--device", "cpu")
        assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, (args, err)
