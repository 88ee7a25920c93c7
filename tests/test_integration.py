"""fastgan inside a practitioner's own code (issue 18), in the default CPU backend (the eager
reference) and through the Triton launch path (the interpreter): torch.func, torch.jit.trace,
torch.compile of a user's step, and exporting a generator (TorchScript, ONNX, torch.export)."""
import os
import subprocess
import sys

import pytest
import torch

import fastgan
import fastgan.functional as FG
from fastgan.models import build_dcgan

from .utils import assert_close

BACKENDS = ["auto", "interpret"]  # auto: the eager reference on CPU tensors


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_func_grad_and_vmap(backend, device):
    x = torch.randn(4, 3, 5, device=device)
    b = torch.randn(3, device=device)
    ref = torch.tanh(x + b.view(1, 3, 1))
    with fastgan.use_backend(backend):
        g = torch.func.grad(lambda t: FG.bias_act(t, b, act="tanh").sum())(x)
        v = torch.func.vmap(lambda t: FG.bias_act(t, b, dim=0, act="tanh"))(x)
        vg = torch.func.vmap(torch.func.grad(lambda t: FG.bias_act(t, b, dim=0, act="tanh").sum()))(x)
    assert_close(g, 1 - ref ** 2, torch.float32, "func.grad")
    assert_close(v, ref, torch.float32, "vmap")
    assert_close(vg, 1 - ref ** 2, torch.float32, "vmap(grad)")


@pytest.mark.parametrize("backend", BACKENDS)
def test_jit_trace_of_a_fused_generator(backend, device):
    """torch.jit.trace records fastgan's ops (it crashed inside the interpreter before)."""
    with fastgan.use_backend(backend):
        G, _ = build_dcgan(32, 16, 4, 4, fused=True)
        G = G.to(device).eval()
        z = torch.randn(2, 16, device=device)
        traced = torch.jit.trace(G, (z,), check_trace=False)
        assert_close(traced(z), G(z), torch.float32, "traced G")


@pytest.mark.parametrize("backend", BACKENDS)
def test_compile_a_users_loss_and_generator_step(backend, device):
    """torch.compile(fullgraph=True) of a user's loss and G step, default backend included (the
    default CPU backend crashed: torch.func.vjp inside the op)."""
    torch._dynamo.reset()
    real, fake = torch.randn(6, device=device), torch.randn(4, 1, device=device)
    with fastgan.use_backend(backend):
        loss = torch.compile(lambda r, f: FG.d_loss(r, f, kind="ns"), backend="aot_eager", fullgraph=True)(real, fake)
        assert_close(loss, FG.d_loss(real, fake, kind="ns"), torch.float32, "compiled d_loss")
        G, D = build_dcgan(32, 16, 4, 4, fused=True)
        G, D = G.to(device), D.to(device)
        z = torch.randn(2, 16, device=device)

        def g_step(z):
            return FG.g_loss(D(G(z)), kind="ns")

        out = torch.compile(g_step, backend="aot_eager", fullgraph=True)(z)
        assert_close(out, g_step(z), torch.float32, "compiled G step", tol=1e-4)
        # a penalty's double backward does not compile, in torch itself either: torch's own error
        D_plain = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 32)).to(device)
        with pytest.raises(Exception, match="(?i)autograd|double backward|grad"):
            torch.compile(lambda r: FG.gradient_penalty(D_plain, r, kind="r1"), backend="aot_eager",
                          fullgraph=True)(torch.randn(2, 3, 32, 32, device=device))


def test_export_a_trained_generator(tmp_path, device):
    """The README's export recipes: TorchScript and ONNX of the plain-torch twin (no fastgan needed
    to run them), torch.export of the fused G (loaded in a fresh process after `import fastgan`)."""
    G_fused, _ = build_dcgan(32, 16, 4, 4, fused=True)
    G_fused = G_fused.to(device).eval()
    G_plain, _ = build_dcgan(32, 16, 4, 4, fused=False)
    G_plain = G_plain.to(device).eval()
    G_plain.load_state_dict(G_fused.state_dict())  # the same parameter names
    z = torch.randn(2, 16, device=device)
    ref = G_fused(z)
    scripted = torch.jit.script(G_plain)
    scripted.save(str(tmp_path / "G_script.pt"))
    assert_close(torch.jit.load(str(tmp_path / "G_script.pt"))(z), ref, torch.float32, "TorchScript")
    onnx = pytest.importorskip("onnx")
    torch.onnx.export(G_plain, (z,), str(tmp_path / "G.onnx"), dynamo=False)
    onnx.checker.check_model(onnx.load(str(tmp_path / "G.onnx")))
    # an accelerated model: fastgan.restore first, then TorchScript works too
    restored = fastgan.restore(fastgan.accelerate(build_dcgan(32, 16, 4, 4, fused=False)[0].to(device).eval()))
    torch.jit.script(restored)
    ep = torch.export.export(G_fused, (z,))
    torch.export.save(ep, str(tmp_path / "G.pt2"))
    code = ("import sys, torch, fastgan\n"
            "ep = torch.export.load(sys.argv[1])\n"
            "torch.save(ep.module()(torch.load(sys.argv[2])), sys.argv[3])\n")
    torch.save(z.cpu(), str(tmp_path / "z.pt"))
    env = dict(os.environ)
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "G.pt2"), str(tmp_path / "z.pt"),
                        str(tmp_path / "y.pt")], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_close(torch.load(str(tmp_path / "y.pt")), ref.cpu(), torch.float32, "torch.export in a fresh process")
