"""fastgan.compat.nvlabs against a stand-in ``torch_utils.ops`` (tests/nvlabs_standin: the module and
function names of NVlabs' package with plain-torch bodies written for these tests).

A small StyleGAN2/3-style generator and discriminator written against those interfaces gives
the same outputs, parameter gradients, R1 and path-length gradients with ``patch()`` as without
it; after ``patch()`` nothing asks for a compiled plugin and ``no_weight_gradients()`` really skips
weight gradients; the script runner patches the script and its spawned workers."""
import importlib
import json
import math
import os
import shutil
import subprocess
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import fastgan
from fastgan.compat import nvlabs

from .utils import assert_close

STANDIN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nvlabs_standin")
MODULES = ("bias_act", "upfirdn2d", "filtered_lrelu", "conv2d_gradfix", "conv2d_resample", "grid_sample_gradfix",
           "fma")


@pytest.fixture
def ops(monkeypatch):
    """The stand-in's op modules, freshly imported; unpatched afterwards."""
    monkeypatch.syspath_prepend(STANDIN)
    for name in [m for m in sys.modules if m == "torch_utils" or m.startswith("torch_utils.")]:
        monkeypatch.delitem(sys.modules, name)
    mods = types.SimpleNamespace(**{m: importlib.import_module(f"torch_utils.ops.{m}") for m in MODULES})
    mods.custom_ops = importlib.import_module("torch_utils.custom_ops")
    yield mods
    nvlabs.unpatch()


def test_patch_binds_by_name_and_unpatch_restores(ops, device):
    originals = {(m, n): getattr(getattr(ops, m), n) for m, fns in nvlabs.BINDINGS.items() for n in fns}
    bound = nvlabs.patch()
    assert sorted(bound) == sorted(f"{m}.{n}" for m, n in originals)
    for (m, n), original in originals.items():
        assert getattr(getattr(ops, m), n) is nvlabs.BINDINGS[m][n] is not original
    assert nvlabs.patch() == bound and nvlabs.is_patched()  # patching again keeps the first originals
    # the package's own helpers call upfirdn2d by name: they run fastgan's now
    x = torch.randn(1, 2, 4, 4, device=device, requires_grad=True)
    y = ops.upfirdn2d.upsample2d(x, ops.upfirdn2d.setup_filter([1, 3, 3, 1], device=device))
    assert "Upfirdn2d" in type(y.grad_fn).__name__
    w = torch.randn(2, 3, 3, 3, device=device)
    assert_close(ops.conv2d_gradfix.conv_transpose2d(x, w, None, 2, 1, 1), F.conv_transpose2d(x, w, None, 2, 1, 1),
                 torch.float32)
    nvlabs.unpatch()
    assert all(getattr(getattr(ops, m), n) is original for (m, n), original in originals.items())
    with nvlabs.patched() as names:
        assert names == bound and ops.fma.fma is nvlabs.BINDINGS["fma"]["fma"]
    assert ops.fma.fma is originals[("fma", "fma")] and not nvlabs.is_patched()


def test_bindings_take_the_originals_arguments(ops, device):
    """Each bound function against the stand-in's original on the same positional arguments (none at
    its default), and one call by keyword."""
    opts = dict(device=device, dtype=torch.float64)
    x, b = torch.randn(2, 4, 6, 5, **opts), torch.randn(4, **opts)
    f = ops.upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    f8 = ops.upfirdn2d.setup_filter(list(range(1, 9)), device=device)
    calls = [
        ("bias_act", "bias_act", (x, b, 1, "lrelu", 0.1, 1.5, 0.8)),
        ("bias_act", "bias_act", (x, b, 1, "tanh", 0.3, 1.7, None)),  # (alpha: ignored by NVlabs' tanh)
        ("upfirdn2d", "upfirdn2d", (x, f, 2, [1, 2], [1, 2, 0, 1], True, 2.0)),
        ("filtered_lrelu", "filtered_lrelu", (x, f8, f8, b, 2, 2, [7, 6, 5, 8], 1.2, 0.1, 0.9, True)),
        ("conv2d_gradfix", "conv2d", (x, torch.randn(6, 2, 3, 3, **opts), torch.randn(6, **opts), 2, 1, 2, 2)),
        ("conv2d_gradfix", "conv_transpose2d", (x, torch.randn(4, 3, 3, 3, **opts), torch.randn(6, **opts), 2, 1, 1,
                                                2, 1)),
        ("conv2d_resample", "conv2d_resample", (x, torch.randn(6, 2, 3, 3, **opts), f, 2, 1, [1, 0, 2, 1], 2, False,
                                                True)),
        ("grid_sample_gradfix", "grid_sample", (x, torch.rand(2, 3, 4, 2, **opts) * 2 - 1)),
        ("fma", "fma", (x, b[:, None, None], torch.randn(2, 1, 6, 5, **opts))),
    ]
    kwargs = dict(x=x, fu=f8, b=b, up=2, padding=[7, 6, 5, 8], gain=1.2, slope=0.1, clamp=0.9, impl="ref")
    expected = [getattr(getattr(ops, m), n)(*args) for m, n, args in calls]
    expected_kw = ops.filtered_lrelu.filtered_lrelu(**kwargs)
    with nvlabs.patched():
        for (m, n, args), want in zip(calls, expected):
            assert_close(getattr(getattr(ops, m), n)(*args), want, torch.float64, f"{m}.{n}", tol=1e-9)
        assert_close(ops.filtered_lrelu.filtered_lrelu(**kwargs), expected_kw, torch.float64, "keywords", tol=1e-9)


def test_missing_package_and_modules(ops, monkeypatch):
    with pytest.raises(ImportError, match="'no_such_pkg.ops' is not importable"):
        nvlabs.patch("no_such_pkg.ops")
    monkeypatch.setitem(sys.modules, "torch_utils.ops.filtered_lrelu", None)  # StyleGAN2-ADA has none
    assert "filtered_lrelu.filtered_lrelu" not in nvlabs.patch()


# ----------------------------------------------------------------------------- a network on the interfaces

def _params(device):
    g = torch.Generator().manual_seed(1)

    def p(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device, torch.float64).requires_grad_()
    return dict(
        const=p(4, 4, 4), a0=p(4, 3, scale=0.5), a1=p(4, 3, scale=0.5), argb=p(4, 3, scale=0.5),
        w0=p(4, 4, 3, 3, scale=0.3), w1=p(4, 4, 3, 3, scale=0.3), wrgb=p(3, 4, 1, 1, scale=0.5),
        b0=p(4, scale=0.1), b1=p(4, scale=0.1), brgb=p(3, scale=0.1), bfl=p(4, scale=0.1),
        d_rgb=p(4, 3, 1, 1, scale=0.5), d_w1=p(4, 4, 3, 3, scale=0.3), d_w2=p(4, 4, 3, 3, scale=0.3),
        d_skip=p(4, 4, 1, 1, scale=0.5), d_b=p(4, scale=0.1), d_fc=p(1, 64, scale=0.1))


def _modulated(ops, x, w, s, up=1, demodulate=True, noise=None, f=None):
    """StyleGAN2's modulated convolution (scaled form) on the op interfaces."""
    d = (w[None] * s[:, None, :, None, None]).square().sum([2, 3, 4]).add(1e-8).rsqrt() if demodulate else None
    x = ops.conv2d_resample.conv2d_resample(x=x * s[:, :, None, None], w=w, f=f, up=up, padding=w.shape[-1] // 2)
    if d is not None and noise is not None:
        return ops.fma.fma(x, d[:, :, None, None], noise)
    return x * d[:, :, None, None] if d is not None else x


def _generator(ops, P, ws, f, f8):
    n = ws.shape[0]
    affine = [ops.bias_act.bias_act(ws[:, i] @ P[k].t(), None) + 1 for i, k in enumerate(("a0", "a1", "argb"))]
    noise = torch.linspace(-1, 1, 64, device=ws.device, dtype=ws.dtype).reshape(1, 1, 8, 8)
    x = P["const"][None].expand(n, -1, -1, -1)
    x = ops.bias_act.bias_act(_modulated(ops, x, P["w0"], affine[0], noise=noise[:, :, ::2, ::2]), P["b0"],
                              act="lrelu", clamp=256)
    x = ops.bias_act.bias_act(_modulated(ops, x, P["w1"], affine[1], up=2, f=f, noise=noise), P["b1"], act="lrelu")
    x = ops.filtered_lrelu.filtered_lrelu(x=x, fu=f8, fd=f8, b=P["bfl"], up=2, down=2, padding=[7, 6, 7, 6],
                                          gain=math.sqrt(2), slope=0.2, clamp=64)
    img = ops.bias_act.bias_act(_modulated(ops, x, P["wrgb"], affine[2], demodulate=False), P["brgb"])
    return img + ops.upfirdn2d.upsample2d(img[:, :, ::2, ::2], f)


def _discriminator(ops, P, img, f):
    x = ops.bias_act.bias_act(ops.conv2d_gradfix.conv2d(img, P["d_rgb"]), None, act="lrelu")
    skip = ops.conv2d_resample.conv2d_resample(x, P["d_skip"], f=f, down=2)
    x = ops.bias_act.bias_act(ops.conv2d_resample.conv2d_resample(x, P["d_w1"], padding=1), P["d_b"], act="lrelu")
    x = ops.conv2d_resample.conv2d_resample(x, P["d_w2"], f=f, down=2, padding=1)
    x = ops.bias_act.bias_act(x, None, act="lrelu", gain=math.sqrt(0.5)) + skip * math.sqrt(0.5)
    x = ops.filtered_lrelu.filtered_lrelu(x, b=P["d_b"])  # no filters: bias, lrelu, gain sqrt(2)
    return x.flatten(1) @ P["d_fc"].t()


def _train_quantities(ops, device):
    """Outputs, and the parameter gradients of a G loss, an R1-penalised D loss and a path-length
    penalty (the gradients of the inner passes taken inside no_weight_gradients)."""
    P = _params(device)
    f = ops.upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    f8 = ops.upfirdn2d.setup_filter([1, 2, 4, 6, 6, 4, 2, 1], device=device)
    gp = [P[k] for k in P if not k.startswith("d_")]
    dp = [P[k] for k in P if k.startswith("d_")]
    g = torch.Generator().manual_seed(2)
    ws = torch.randn(2, 3, 3, generator=g).to(device, torch.float64).requires_grad_()
    real = torch.randn(2, 3, 8, 8, generator=g).to(device, torch.float64).requires_grad_()
    img = _generator(ops, P, ws, f, f8)
    logits = _discriminator(ops, P, img, f)
    out = {"img": img, "logits": logits}
    out.update(zip([f"G/{i}" for i in range(len(gp))], torch.autograd.grad(F.softplus(-logits).mean(), gp)))
    r_logits = _discriminator(ops, P, real, f)
    with ops.conv2d_gradfix.no_weight_gradients():
        (r1,) = torch.autograd.grad(r_logits.sum(), real, create_graph=True)
    out["r1"] = r1
    d_loss = F.softplus(r_logits).mean() + 5 * r1.square().sum([1, 2, 3]).mean()
    out.update(zip([f"D/{i}" for i in range(len(dp))], torch.autograd.grad(d_loss, dp)))
    pl_noise = torch.randn(img.shape, generator=g).to(device, torch.float64) / 8
    with ops.conv2d_gradfix.no_weight_gradients():
        (pl,) = torch.autograd.grad((_generator(ops, P, ws, f, f8) * pl_noise).sum(), ws, create_graph=True)
    out["pl"] = pl
    penalty = (pl.square().sum(2).mean(1).sqrt() - 0.5).square().mean()
    pl_params = [P[k] for k in P if not k.startswith("d_") and k not in ("brgb", "bfl")]  # (the others: dpl = 0)
    out.update(zip([f"PL/{i}" for i in range(len(pl_params))], torch.autograd.grad(penalty, pl_params)))
    return out


def test_network_gives_the_same_outputs_and_gradients_patched(ops, device):
    plain = _train_quantities(ops, device)
    builds = len(ops.custom_ops.BUILDS)
    assert builds > 0  # unpatched, the network asks for the compiled plugins (here only counted)
    with nvlabs.patched():
        ours = _train_quantities(ops, device)
    assert len(ops.custom_ops.BUILDS) == builds, "a patched run reached the plugin loader"
    assert ours.keys() == plain.keys()
    for k in plain:
        assert plain[k].abs().max() > 0, k
        assert_close(ours[k], plain[k], torch.float64, k, tol=1e-9)


def test_no_weight_gradients_really_skips(ops, device):
    nvlabs.patch()
    x = torch.randn(1, 2, 5, 5, device=device, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, device=device, requires_grad=True)
    f = ops.upfirdn2d.setup_filter([1, 3, 3, 1], device=device)
    with ops.conv2d_gradfix.no_weight_gradients():
        for y in (ops.conv2d_gradfix.conv2d(x, w, padding=1), ops.conv2d_resample.conv2d_resample(x, w, f, down=2)):
            gx, gw = torch.autograd.grad(y.sum(), (x, w), allow_unused=True, materialize_grads=False)
            assert gx is not None and gw is None


def test_r1_through_grid_sample_augmentation(ops, device):
    """R1 through grid_sample (StyleGAN2-ADA's geometric augmentation) is twice differentiable once
    patched (torch's grid_sample is not), and matches fastgan's eager reference."""
    nvlabs.patch()
    w = torch.randn(4, 3, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([[[0.9, -0.3, 0.1], [0.3, 0.9, -0.05]]], device=device, dtype=torch.float64).repeat(2, 1, 1)
    real0 = torch.randn(2, 3, 6, 6, device=device, dtype=torch.float64)
    grads = []
    for backend in ("interpret" if device == "cpu" else "triton", "eager"):
        with fastgan.use_backend(backend):
            real = real0.clone().requires_grad_()
            aug = ops.grid_sample_gradfix.grid_sample(real, F.affine_grid(theta, list(real.shape), align_corners=False))
            logits = ops.bias_act.bias_act(ops.conv2d_gradfix.conv2d(aug, w), None, act="lrelu").sum()
            with ops.conv2d_gradfix.no_weight_gradients():
                (r1,) = torch.autograd.grad(logits, real, create_graph=True)
            grads.append(torch.autograd.grad(r1.square().sum(), w)[0])
    assert_close(grads[0], grads[1], torch.float64, "R1 weight gradient")


# ----------------------------------------------------------------------------- the script runner

_SCRIPT = r'''
import json, os, sys
import torch
import torch.multiprocessing as mp
from torch_utils.ops import upfirdn2d, fma


def worker(rank, path):
    with open(path, "w") as f:
        json.dump({"rank": rank, "bound": upfirdn2d.upfirdn2d.__module__}, f)


if __name__ == "__main__":
    x = torch.randn(1, 1, 4, 4)
    y = upfirdn2d.upsample2d(x, upfirdn2d.setup_filter([1, 3, 3, 1]))
    print(json.dumps({"argv": sys.argv[1:], "bound": upfirdn2d.upfirdn2d.__module__, "fma": fma.fma.__module__,
                      "shape": list(y.shape)}))
    mp.spawn(worker, args=(sys.argv[2],), nprocs=1)
'''


def test_runner_patches_the_script_and_its_workers(tmp_path):
    shutil.copytree(os.path.join(STANDIN, "torch_utils"), tmp_path / "torch_utils")
    (tmp_path / "train.py").write_text(_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET",)}
    env["FASTGAN_BACKEND"] = "eager"  # the runner's work here is the binding, not the kernels
    worker_out = tmp_path / "worker.json"
    proc = subprocess.run([sys.executable, "-m", "fastgan.compat.nvlabs", str(tmp_path / "train.py"), "--outdir",
                           str(worker_out)], cwd=str(tmp_path.parent), env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"argv": ["--outdir", str(worker_out)], "bound": "fastgan.compat.nvlabs",
                      "fma": "fastgan.functional.fma", "shape": [1, 1, 8, 8]}
    assert json.loads(worker_out.read_text()) == {"rank": 0, "bound": "fastgan.compat.nvlabs"}
    assert "ops bound to fastgan" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "fastgan.compat.nvlabs"], env=env, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "usage" in bad.stderr
