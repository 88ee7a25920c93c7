"""fastgan.functional.fused_op: the torch.library registrations of every fused op (opcheck on
every op, outputs and gradients against the autograd.Function path, first and second order,
third order raises) and torch.compile seeing one op per fused call, without graph breaks."""
import pytest
import torch

from fastgan.functional import bias_act, check_registered, conv2d_act, conv_transpose2d_act, d_loss, g_loss
from fastgan.functional.activations import resolve_act
from fastgan.functional.batch_norm_act import batch_norm_act
from fastgan.functional.bias_act import _bias_act_ref
from fastgan.kernels.geometry import ConvGeom

from .utils import assert_close

ops = torch.ops.fastgan


def _opcheck(op, args):
    result = torch.library.opcheck(op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def _req(*ts):
    return [t.requires_grad_() if t is not None else None for t in ts]


def test_every_op_is_registered():
    names = check_registered()
    assert {"bias_act", "conv_act", "conv_weight_grad", "batch_norm_act", "gan_loss", "grad_penalty"} <= set(names)
    for name in names:
        assert isinstance(getattr(ops, name).default, torch._ops.OpOverload), name


# ----------------------------------------------------------------------------- opcheck

@pytest.mark.parametrize("act,alpha,gain,clamp,layout", [
    ("lrelu", 0.2, 1.0, None, "nchw"), ("tanh", 0.0, 1.3, 0.8, "channels_last"), ("swish", 0.0, 1.0, None, "nchw")])
def test_opcheck_bias_act_family(act, alpha, gain, clamp, layout, device):
    x = torch.randn(2, 3, 3, 5, device=device, dtype=torch.float64)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    b = torch.randn(3, device=device, dtype=torch.float64)
    dy = torch.randn_like(x)
    x, b, dy = _req(x, b, dy)
    _opcheck(ops.bias_act.default, (x, b, 1, act, alpha, gain, clamp))
    _opcheck(ops.bias_act.default, (x, None, 1, act, alpha, gain, clamp))
    _opcheck(ops.bias_act_grad.default, (dy, x, b, 1, act, alpha, gain, clamp, True))
    _opcheck(ops.bias_act_grad.default, (dy, x, None, 1, act, alpha, gain, clamp, False))
    g = torch.randn_like(x)
    # second order only: its autograd raises, so it is checked without grad-requiring inputs
    _opcheck(ops.bias_act_grad2.default, (g, dy.detach(), x.detach(), b.detach(), 1, act, alpha, gain, clamp, True))


@pytest.mark.parametrize("store_z", [True, False])
def test_opcheck_conv_ops(store_z, device):
    act, alpha, gain = ("lrelu", 0.2, 1.0) if store_z else ("linear", 0.0, 1.5)
    x, w, b = _req(torch.randn(2, 4, 5, 6, device=device, dtype=torch.float64),
                   torch.randn(6, 2, 3, 3, device=device, dtype=torch.float64),
                   torch.randn(6, device=device, dtype=torch.float64))
    _opcheck(ops.conv_act.default, (x, w, b, False, [2, 1], [1, 1], [1, 1], 2, [0, 0], act, alpha, gain, None,
                                    store_z, 0, False))
    wt, bt = _req(torch.randn(4, 3, 3, 3, device=device, dtype=torch.float64),
                  torch.randn(3, device=device, dtype=torch.float64))
    _opcheck(ops.conv_act.default, (x, wt, bt, True, [2, 2], [1, 1], [1, 1], 1, [1, 0], act, alpha, gain, None,
                                    store_z, 0, False))
    if store_z:
        xc = x.detach().to(memory_format=torch.channels_last).requires_grad_()
        _opcheck(ops.conv_act.default, (xc, w, None, False, [1, 1], [0, 0], [1, 1], 2, [0, 0], "tanh", 0.0, 1.0,
                                        0.5, True, 0, False))
        y = torch.nn.functional.conv2d(x.detach(), w.detach(), None, (2, 1), 1, 1, 2)
        _opcheck(ops.conv_weight_grad.default, (x, torch.randn_like(y).requires_grad_(), w.detach(), False,
                                                [2, 1], [1, 1], [1, 1], 2, [0, 0]))
    else:  # the batch- and instance-norm partials outputs (a linear epilogue)
        from fastgan import backend
        x2, w2 = _req(torch.randn(2, 4, 8, 8, device=device, dtype=torch.float64),
                      torch.randn(3, 4, 3, 3, device=device, dtype=torch.float64))
        for instance in (False, True):
            rows = backend.kernels().bn_partial_rows(x2, w2, ConvGeom.of(False, 1, 1), instance)
            assert rows > 0
            _opcheck(ops.conv_act.default, (x2, w2, None, False, [1, 1], [1, 1], [1, 1], 1, [0, 0], "linear", 0.0,
                                            1.0, None, False, rows, instance))


def test_opcheck_batch_norm_losses_penalty(device):
    x, w, b = _req(torch.randn(3, 4, 3, 3, device=device), torch.rand(4, device=device) + 0.5,
                   torch.randn(4, device=device))
    running = (torch.zeros(4, device=device), torch.ones(4, device=device), torch.zeros((), dtype=torch.long,
                                                                                      device=device))
    _opcheck(ops.batch_norm_stats.default, (x.detach(), w.detach(), *running, 0.1, 1e-5))
    _opcheck(ops.batch_norm_stats.default, (x.detach(), None, None, None, None, None, 1e-5))
    stats = ops.batch_norm_stats(x.detach(), w.detach(), None, None, None, 0.1, 1e-5)
    _opcheck(ops.batch_norm_act.default, (x, w, b, stats, 1e-5, "lrelu", 0.2, 1.0, None))
    _opcheck(ops.batch_norm_act.default, (x, None, None, ops.batch_norm_stats(x.detach(), None, None, None, None, 0.1,
                                                                              1e-5), 1e-5, "relu", 0.0, 1.0, None))
    dy = torch.randn_like(x).requires_grad_()
    _opcheck(ops.batch_norm_act_backward.default, (dy, x, w, b, stats, 1e-5, "lrelu", 0.2, 1.0, None))
    real, fake = _req(torch.randn(5, 1, device=device), torch.randn(3, device=device))
    _opcheck(ops.gan_loss.default, (real, fake, "softplus_neg", "softplus"))
    _opcheck(ops.gan_loss.default, (None, fake, None, "neg"))
    _opcheck(ops.gan_loss_backward.default, (torch.tensor(1.5, device=device), torch.randn(5, device=device),
                                             torch.randn(3, device=device)))
    grad = torch.randn(3, 2, 4, 4, device=device, requires_grad=True)
    _opcheck(ops.grad_penalty.default, (grad, "wgan-gp", 10.0 / 3, 1.0))
    _opcheck(ops.grad_penalty.default, (grad, "r1", 5.0 / 3, 0.0))
    _, coef = ops.grad_penalty(grad.detach(), "wgan-gp", 10.0 / 3, 1.0)
    _opcheck(ops.grad_penalty_backward.default, (torch.tensor(0.7, device=device), grad.detach(), coef))
    _opcheck(ops.interpolate.default, (grad.detach(), torch.randn_like(grad), torch.rand(3, device=device)))


# ----------------------------------------------------------------------------- values and gradients

def test_bias_act_op_matches_function_first_and_second_order(device):
    x = (torch.randn(2, 3, 4, 4, device=device) * 2).requires_grad_()
    b = torch.randn(3, device=device, requires_grad=True)
    spec = resolve_act("swish", None, 1.3, None)
    y = ops.bias_act(x, b, 1, spec.act, spec.alpha, spec.gain, spec.clamp)
    y_ref = bias_act(x, b, act="swish", gain=1.3)  # the autograd.Function path
    assert_close(y, y_ref, torch.float32)
    dy = torch.randn_like(y)
    gx, gb = torch.autograd.grad(y, (x, b), dy, create_graph=True)
    rx, rb = torch.autograd.grad(y_ref, (x, b), dy, create_graph=True)
    assert_close(gx, rx, torch.float32, "dx")
    assert_close(gb, rb, torch.float32, "db")
    # second order: d/d(x, b) of <dx, v> + <db, u>
    v, u = torch.randn_like(x), torch.randn_like(b)
    s2 = torch.autograd.grad((gx * v).sum() + (gb * u).sum(), (x, b))
    r2 = torch.autograd.grad((rx * v).sum() + (rb * u).sum(), (x, b))
    assert_close(s2[0], r2[0], torch.float32, "d2x")
    assert_close(s2[1], r2[1], torch.float32, "d2b")


def test_gradcheck_gradgradcheck_bias_act_op(device):
    x = torch.randn(2, 3, 2, 2, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, device=device, dtype=torch.float64, requires_grad=True)

    def f(x, b):
        return ops.bias_act(x, b, 1, "tanh", 0.0, 1.3, None)
    assert torch.autograd.gradcheck(f, (x, b))
    assert torch.autograd.gradgradcheck(f, (x, b))


@pytest.mark.parametrize("transposed", [False, True])
def test_conv_op_matches_reference_to_second_order(transposed, device):
    """The kernels (interpreter/GPU) through the registered autograd, against the float64
    eager reference: outputs, gradients and second-order gradients."""
    x = torch.randn(2, 3, 5, 5, device=device)
    w = torch.randn(3, 4, 3, 3, device=device) * 0.3 if transposed else torch.randn(4, 3, 3, 3, device=device) * 0.3
    b = torch.randn(4, device=device)
    geom = ConvGeom.of(transposed, 2, 1, output_padding=1 if transposed else 0)
    spec = resolve_act("tanh", None, 1.2, None)

    def ref(x, w, b):
        fn = torch.nn.functional.conv_transpose2d if transposed else torch.nn.functional.conv2d
        extra = dict(output_padding=1) if transposed else {}
        return _bias_act_ref(fn(x, w, None, stride=2, padding=1, **extra), b, 1, spec)

    ins = [t.clone().requires_grad_() for t in (x, w, b)]
    ins64 = [t.detach().double().requires_grad_() for t in (x, w, b)]
    y, y64 = _conv_op(*ins, geom, spec), ref(*ins64)
    assert_close(y, y64, torch.float32)
    dy = torch.randn_like(y)
    g = torch.autograd.grad(y, ins, dy, create_graph=True)
    g64 = torch.autograd.grad(y64, ins64, dy.double(), create_graph=True)
    for a, r, name in zip(g, g64, ("dx", "dw", "db")):
        assert_close(a, r, torch.float32, name)
    vs = [torch.randn_like(t) for t in ins]
    h = torch.autograd.grad(sum((a * v).sum() for a, v in zip(g, vs)), ins)
    h64 = torch.autograd.grad(sum((a * v.double()).sum() for a, v in zip(g64, vs)), ins64)
    for a, r, name in zip(h, h64, ("d2x", "d2w", "d2b")):
        assert_close(a, r, torch.float32, name)


def _conv_op(x, w, b, geom, spec):
    return ops.conv_act(x, w, b, *geom.op_args(), spec.act, spec.alpha, spec.gain, spec.clamp, True, 0, False)[0]


def test_gradgradcheck_conv_ops_registered_autograd(device):
    """The registered autograd formulas (z saved as an output, bias_act_grad, the adjoint conv_act and
    conv_weight_grad) are exact to second order, in float64 (fast mode: random projections of the
    Jacobians; test_conv checks the full ones through the public API)."""
    x = torch.randn(1, 1, 3, 3, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 1, 2, 2, device=device, dtype=torch.float64, requires_grad=True)
    wt = torch.randn(1, 2, 2, 2, device=device, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, device=device, dtype=torch.float64, requires_grad=True)
    spec = resolve_act("swish", None, None, None)
    f = lambda x, w, b: _conv_op(x, w, b, ConvGeom.of(False, 1, 1), spec)  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (x, w, b), fast_mode=True)
    ft = lambda x, w, b: _conv_op(x, w, b, ConvGeom.of(True, 2, 1, output_padding=1), spec)  # noqa: E731
    assert torch.autograd.gradgradcheck(ft, (x, wt, b), fast_mode=True)


def test_third_order_and_first_order_only_ops_raise(device):
    x = torch.randn(2, 3, 2, 2, device=device, dtype=torch.float64, requires_grad=True)
    y = ops.bias_act(x, None, 1, "tanh", 0.0, 1.0, None)
    (g1,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(g1.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second order"):
        torch.autograd.grad(g2.sum(), x)
    r = torch.randn(4, device=device, requires_grad=True)
    loss = ops.gan_loss(None, r, None, "softplus_neg")[0]
    (gr,) = torch.autograd.grad(loss, r, create_graph=True)
    with pytest.raises(RuntimeError, match="first order"):
        torch.autograd.grad(gr.sum(), r)


def test_store_z_false_with_nonlinear_act_raises_clearly(device):
    x = torch.randn(1, 2, 3, 3, device=device, requires_grad=True)
    w = torch.randn(2, 2, 1, 1, device=device)
    y, z, *_ = ops.conv_act(x, w, None, False, [1, 1], [0, 0], [1, 1], 1, [0, 0], "tanh", 0.0, 1.0, None, False, 0,
                            False)
    assert z.numel() == 0
    with pytest.raises(RuntimeError, match="store_z"):
        y.sum().backward()


# ----------------------------------------------------------------------------- torch.compile

def _compile_capture(fn):
    """torch.compile(fn, fullgraph=True) through aot_eager, keeping the dynamo graphs."""
    graphs = []
    aot_eager = torch._dynamo.lookup_backend("aot_eager")

    def backend(gm, example_inputs):
        graphs.append(gm)
        return aot_eager(gm, example_inputs)
    return torch.compile(fn, backend=backend, fullgraph=True), graphs


def test_compile_sees_one_op_per_fused_call(device):
    torch._dynamo.reset()
    x = torch.randn(2, 3, 6, 6, device=device, requires_grad=True)
    w = (torch.randn(4, 3, 3, 3, device=device) * 0.3).requires_grad_()
    wt = (torch.randn(4, 2, 4, 4, device=device) * 0.3).requires_grad_()
    b = torch.randn(4, device=device, requires_grad=True)
    bn_w = (torch.rand(4, device=device) + 0.5).requires_grad_()
    real = torch.randn(2, device=device, requires_grad=True)

    def fn(x, w, wt, b, bn_w, real):
        h = conv2d_act(x, w, b, stride=1, padding=1, act="lrelu", alpha=0.2, gain=1.0)
        h = batch_norm_act(h, None, None, bn_w, b, True, act="relu", gain=1.0)
        h = bias_act(h, b, act="swish")
        h = conv_transpose2d_act(h, wt, None, stride=2, padding=1, act="tanh")
        logits = h.mean(dim=(1, 2, 3))
        return d_loss(real, logits, "ns") + g_loss(logits, "hinge")

    compiled, graphs = _compile_capture(fn)
    args = (x, w, wt, b, bn_w, real)
    out, ref = compiled(*args), fn(*args)
    assert_close(out, ref, torch.float32, "compiled loss")
    grads = torch.autograd.grad(out, args)
    grads_ref = torch.autograd.grad(ref, args)
    for a, r in zip(grads, grads_ref):
        assert_close(a, r, torch.float32, "compiled grad", tol=1e-5)
    assert len(graphs) == 1
    code = graphs[0].code
    for op in ("conv_act", "batch_norm_act", "bias_act", "gan_loss"):
        assert f"torch.ops.fastgan.{op}" in code, op
    assert "triton" not in code
