"""bias_act: fused kernels against the eager reference in float64 (outputs, gradients,
second order), layouts, dtypes, every-element-written, and bad input."""
import math

import pytest
import torch

import fastgan
from fastgan.functional import ACTIVATIONS, bias_act, resolve_act
from fastgan.functional.bias_act import BIAS_ACT, BIAS_ACT_GRAD, _bias_act_ref
from fastgan.nn import BiasAct

from .utils import TOL, assert_close, poison_, rel_err

ACTS = sorted(ACTIVATIONS)


def _reference(x, b, dim, act, alpha=None, gain=None, clamp=None):
    """The eager reference on float64 copies, with x and b requiring grad."""
    x64 = x.detach().double().requires_grad_()
    b64 = None if b is None else b.detach().double().requires_grad_()
    y64 = _bias_act_ref(x64, b64, dim % x.dim(), resolve_act(act, alpha, gain, clamp))
    return x64, b64, y64


def _compare_fwd_bwd(x, b, dim, act, dtype, alpha=None, gain=None, clamp=None):
    x = x.requires_grad_()
    if b is not None:
        b.requires_grad_()
    y = bias_act(x, b, dim=dim, act=act, alpha=alpha, gain=gain, clamp=clamp)
    assert y.dtype == x.dtype and y.shape == x.shape
    x64, b64, y64 = _reference(x, b, dim, act, alpha, gain, clamp)
    assert_close(y, y64, dtype, f"{act} forward")
    dy = torch.randn_like(y)
    inputs = [x] if b is None else [x, b]
    grads = torch.autograd.grad(y, inputs, dy)
    grads64 = torch.autograd.grad(y64, [x64] if b is None else [x64, b64], dy.double())
    assert_close(grads[0], grads64[0], dtype, f"{act} dx")
    if b is not None:
        assert grads[1].dtype == b.dtype
        assert_close(grads[1], grads64[1], dtype, f"{act} db")
    return y


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_every_activation_matches_reference(act, layout, device):
    x = torch.randn(3, 5, 7, 9, device=device) * 3
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    b = torch.randn(5, device=device)
    y = _compare_fwd_bwd(x, b, 1, act, torch.float32)
    assert y.stride() == x.stride(), "output keeps the input's memory layout"


@pytest.mark.parametrize("act", ["lrelu", "tanh", "swish", "relu"])
def test_alpha_gain_clamp_and_no_bias(act, device):
    x = torch.randn(2, 4, 6, 5, device=device) * 2
    alpha = 0.37 if act == "lrelu" else None
    _compare_fwd_bwd(x, None, 1, act, torch.float32, alpha=alpha, gain=1.7, clamp=0.9)
    _compare_fwd_bwd(x.clone(), torch.randn(4, device=device), 1, act, torch.float32, clamp=0.5)


def test_clamp_zero_gradient_where_clamped(device):
    x = torch.linspace(-4, 4, 64, device=device).reshape(1, 1, 8, 8).requires_grad_()
    y = bias_act(x, act="linear", clamp=1.0)
    (dx,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(dx, (x.abs() <= 1.0).float())
    assert y.abs().max().item() <= 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("act", ["lrelu", "tanh", "softplus"])
def test_half_precision(dtype, act, device):
    x = torch.randn(2, 6, 5, 7, device=device, dtype=dtype)
    b = torch.randn(6, device=device, dtype=dtype)
    _compare_fwd_bwd(x, b, 1, act, dtype)


@pytest.mark.parametrize("shape,dim", [
    ((7,), 0),                 # 1-d, bias along the only dim
    ((1, 3, 1, 1), 1),         # batch 1, 1x1 spatial
    ((4, 1, 3, 3), 1),         # one channel
    ((3, 5, 11), -1),          # bias along the last dim (channels-last style tiling)
    ((2, 3, 4, 129), 2),       # bias along a middle dim, odd inner size
    ((1, 1), 0),               # a single element
    ((1000, 3), 1),            # many rows, few channels
])
def test_shapes_and_dims(shape, dim, device):
    x = torch.randn(*shape, device=device)
    b = torch.randn(shape[dim], device=device)
    _compare_fwd_bwd(x, b, dim, "lrelu", torch.float32)


def test_non_contiguous_input(device):
    base = torch.randn(4, 6, 10, 9, device=device)
    x = base[:, ::2, 1:8, :]  # a strided view: copied to a dense layout inside
    assert not x.is_contiguous()
    _compare_fwd_bwd(x, torch.randn(3, device=device), 1, "tanh", torch.float32)


def test_gradient_layout_differs_from_input(device):
    """dy in NCHW while x is channels_last (autograd may hand over either)."""
    x = torch.randn(2, 3, 5, 4, device=device).to(memory_format=torch.channels_last).requires_grad_()
    b = torch.randn(3, device=device, requires_grad=True)
    y = bias_act(x, b, act="elu")
    dy = torch.randn(2, 3, 5, 4, device=device)  # contiguous NCHW
    dx, db = torch.autograd.grad(y, [x, b], dy)
    x64, b64, y64 = _reference(x, b, 1, "elu")
    dx64, db64 = torch.autograd.grad(y64, [x64, b64], dy.double())
    assert_close(dx, dx64, torch.float32, "dx")
    assert_close(db, db64, torch.float32, "db")


# vectors whose elements are not at ptr + i (positive: they also serve as scales and invstd)
VECTORS = {"strided": lambda n: (torch.rand(2 * n) + 0.5)[::2], "expanded": lambda n: (torch.rand(1) + 0.5).expand(n)}


@pytest.mark.parametrize("kind", sorted(VECTORS))
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_strided_and_expanded_bias(kind, layout, device):
    """A bias whose elements are not at ptr + i (a strided view, an expanded scalar): output,
    dx and the gradient of the tensor the bias is a view of."""
    x = torch.randn(2, 3, 4, 5, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    x = x.requires_grad_()
    base = VECTORS[kind](3)._base.to(device).requires_grad_()
    view = (lambda t: t[::2]) if kind == "strided" else (lambda t: t.expand(3))
    y = bias_act(x, view(base), act="lrelu")
    x64, base64 = x.detach().double().requires_grad_(), base.detach().double().requires_grad_()
    y64 = _bias_act_ref(x64, view(base64), 1, resolve_act("lrelu"))
    assert_close(y, y64, torch.float32, "y")
    dy = torch.randn_like(y)
    for name, out, ref in zip(("dx", "d base"), torch.autograd.grad(y, [x, base], dy),
                              torch.autograd.grad(y64, [x64, base64], dy.double())):
        assert_close(out, ref, torch.float32, name)


@pytest.mark.parametrize("kind", sorted(VECTORS))
def test_every_launcher_reads_strided_vectors(kind, device):
    """Every launcher argument read as ``ptr + i`` (bias, scale, batch-norm statistics, penalty
    coefficients and eps): a strided or expanded vector gives what its contiguous copy gives."""
    if fastgan.backend_for(torch.empty(1, device=device)) == "eager":
        pytest.skip("eager backend runs no kernel")
    K = fastgan.backend.kernels()
    x, g = torch.randn(2, 3, 4, 5, device=device), torch.randn(2, 3, 4, 5, device=device)
    v = [VECTORS[kind](3).to(device) for _ in range(4)]
    c = [t.contiguous() for t in v]
    assert not v[0].is_contiguous()
    act = (1, "tanh", 0.0, 1.0, None)
    assert torch.equal(K.bias_act_fwd(x, v[0], *act), K.bias_act_fwd(x, c[0], *act))
    assert torch.equal(K.bias_act_fwd(x, v[0], *act, scale=v[1], center=v[2]),
                       K.bias_act_fwd(x, c[0], *act, scale=c[1], center=c[2]))
    for out, ref in zip(K.bias_act_bwd(g, x, v[0], 1, "tanh", 0.0, 1.0, None, need_db=True),
                        K.bias_act_bwd(g, x, c[0], 1, "tanh", 0.0, 1.0, None, need_db=True)):
        assert torch.equal(out, ref)
    assert torch.equal(K.bn_stats(x, 1, v[0]), K.bn_stats(x, 1, c[0]))
    stats = torch.stack(v, 1).t()  # [4, 3], not contiguous
    for out, ref in zip(K.bn_act_bwd(g, x, stats, v[1], 1e-5, 1, "relu", 0.0, 1.0, None),
                        K.bn_act_bwd(g, x, stats.contiguous(), c[1], 1e-5, 1, "relu", 0.0, 1.0, None)):
        assert torch.equal(out, ref)
    coef = VECTORS[kind](2).to(device)
    dp = torch.tensor(1.5, device=device)
    assert torch.equal(K.grad_penalty_bwd(dp, x, coef), K.grad_penalty_bwd(dp, x, coef.contiguous()))
    assert torch.equal(K.interpolate(x, g, coef), K.interpolate(x, g, coef.contiguous()))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_every_output_element_is_written(layout, device):
    kernels = fastgan.backend.kernels()
    if fastgan.backend_for(torch.empty(1, device=device)) == "eager":
        pytest.skip("eager backend runs no kernel")
    x = torch.randn(3, 7, 5, 3, device=device)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    b = torch.randn(7, device=device)
    y = kernels.bias_act_fwd(x, b, 1, "lrelu", 0.2, math.sqrt(2), None)
    out = poison_(torch.empty_like(x))
    y2 = kernels.bias_act_fwd(x, b, 1, "lrelu", 0.2, math.sqrt(2), None, out=out)
    assert y2 is out
    assert torch.isfinite(y2).all(), "some output elements were never written"
    assert torch.equal(y2, y)
    dx = poison_(torch.empty_like(x))
    kernels.bias_act_bwd(torch.randn_like(x), x, b, 1, "tanh", 0.0, 1.0, None, out=dx)
    assert torch.isfinite(dx).all(), "some gradient elements were never written"
    dx, db = kernels.bias_act_bwd(torch.randn_like(x), x, b, 1, "lrelu", 0.2, 1.0, None, need_db=True)
    assert torch.isfinite(dx).all() and torch.isfinite(db).all()


@pytest.mark.parametrize("act", ["lrelu", "tanh", "sigmoid", "softplus", "swish", "selu"])
def test_gradcheck_and_gradgradcheck(act, device):
    x = torch.randn(2, 3, 4, 3, dtype=torch.float64, device=device, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    clamp = 0.8 if act == "tanh" else None

    def fn(x, b):
        return bias_act(x, b, act=act, clamp=clamp)

    # fast mode (random projections of the Jacobians): a 2.5% error in one act'' fails it;
    # test_gradgradcheck_channels_last is the full check
    assert torch.autograd.gradcheck(fn, (x, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, b), fast_mode=True)


def test_gradgradcheck_channels_last(device):
    x = torch.randn(2, 3, 3, 2, dtype=torch.float64, device=device).to(memory_format=torch.channels_last)
    x.requires_grad_()
    b = torch.randn(3, dtype=torch.float64, device=device, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, b: bias_act(x, b, act="swish"), (x, b))


@pytest.mark.parametrize("act", ["lrelu", "tanh"])
def test_second_order_matches_reference(act, device):
    """The R1 pattern: differentiate ||dy/dx||^2 with respect to x and b."""
    x = torch.randn(3, 4, 5, 5, device=device, requires_grad=True)
    b = torch.randn(4, device=device, requires_grad=True)
    w = torch.randn(3, 4, 5, 5, device=device)

    def penalty(fn, x, b):
        y = fn(x, b)
        (gx,) = torch.autograd.grad((y * w).sum(), x, create_graph=True)
        return gx.square().sum()

    p = penalty(lambda x, b: bias_act(x, b, act=act), x, b)
    gx, gb = torch.autograd.grad(p, [x, b], allow_unused=True)
    x64, b64 = x.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    spec = resolve_act(act)
    p64 = penalty(lambda x, b: _bias_act_ref(x, b, 1, spec), x64, b64)
    gx64, gb64 = torch.autograd.grad(p64, [x64, b64], allow_unused=True)
    assert_close(p, p64, torch.float32, "penalty")
    if not spec.has_2nd_grad:  # piecewise linear: the fused op knows the 2nd-order term is zero
        assert gx is None  # (no full-size zeros; b's zeros are what keeps an optimizer step on b, see test_penalty)
        assert gx64 is None or gx64.abs().max().item() == 0
        assert gb is not None and gb64 is not None and gb.abs().max().item() == gb64.abs().max().item() == 0
    else:
        assert_close(gx, gx64, torch.float32, "d penalty / dx")
        assert_close(gb, gb64, torch.float32, "d penalty / db")


def test_third_order_is_refused(device):
    x = torch.randn(2, 3, device=device, dtype=torch.float64, requires_grad=True)
    y = bias_act(x, act="tanh")
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    (gg,) = torch.autograd.grad(g.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="second order"):
        torch.autograd.grad(gg.sum(), x)


def test_eager_backend_is_the_reference(device):
    x = torch.randn(2, 3, 4, device=device)
    b = torch.randn(3, device=device)
    with fastgan.use_backend("eager"):
        y = bias_act(x, b, act="tanh", gain=2.0)
    assert y.grad_fn is None or "BiasAct" not in type(y.grad_fn).__name__
    assert torch.equal(y, _bias_act_ref(x, b, 1, resolve_act("tanh", gain=2.0)))


def test_defaults_follow_the_table(device):
    x = torch.randn(4, 3, device=device)
    for act, spec in ACTIVATIONS.items():
        y = bias_act(x, act=act)
        ref = _bias_act_ref(x.double(), None, 1, resolve_act(act))
        assert rel_err(y, ref) <= TOL[torch.float32], act
    assert resolve_act("lrelu").alpha == 0.2 and resolve_act("lrelu").gain == pytest.approx(math.sqrt(2))
    assert resolve_act("tanh").gain == 1.0 and resolve_act("swish").gain == pytest.approx(math.sqrt(2))


def test_extreme_inputs_stay_finite(device):
    x = torch.tensor([[-1e4, -80.0, -20.0, 0.0, 20.0, 80.0, 1e4]], device=device).T.contiguous()
    for act in ["tanh", "sigmoid", "softplus", "swish", "elu", "selu"]:
        xr = x.clone().requires_grad_()
        y = bias_act(xr, act=act, dim=1)
        (dx,) = torch.autograd.grad(y.sum(), xr)
        ref = _bias_act_ref(x.double(), None, 1, resolve_act(act))
        assert torch.isfinite(y).all() and torch.isfinite(dx).all(), act
        assert rel_err(y, ref) <= TOL[torch.float32], act


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(act="gelu"), ValueError, "act"),
    (dict(act="tanh", alpha=0.1), ValueError, "alpha"),
    (dict(act="lrelu", clamp=-1.0), ValueError, "clamp"),
    (dict(act="lrelu", clamp=float("nan")), ValueError, "clamp"),
    (dict(act="lrelu", gain="2"), TypeError, "gain"),
    (dict(dim=3), ValueError, "dim"),
])
def test_bad_arguments(kwargs, exc, match, device):
    x = torch.randn(2, 3, 4, device=device)
    with pytest.raises(exc, match=match):
        bias_act(x, **kwargs)


def test_bad_bias_and_input(device):
    x = torch.randn(2, 3, 4, device=device)
    with pytest.raises(ValueError, match="b must be 1-d of length"):
        bias_act(x, torch.randn(4, device=device))
    with pytest.raises(ValueError, match="b must be 1-d"):
        bias_act(x, torch.randn(3, 1, device=device))
    with pytest.raises(TypeError, match="b must have x's dtype"):
        bias_act(x, torch.randn(3, device=device, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        bias_act(torch.ones(2, 3, dtype=torch.int32, device=device))
    with pytest.raises(TypeError, match="torch.Tensor"):
        bias_act([1.0, 2.0])
    if device == "cpu" and torch.cuda.is_available():
        with pytest.raises(ValueError, match="device"):
            bias_act(x, torch.randn(3, device="cuda"))


def test_zero_channels_and_empty_tensors(device):
    """No channels (or no elements): empty outputs and gradients, as the reference gives."""
    for shape, dim in (((2, 0, 3, 3), 1), ((0, 3), 1), ((4, 0), 1)):
        x = torch.randn(*shape, device=device, requires_grad=True)
        b = torch.randn(shape[dim], device=device, requires_grad=True)
        y = bias_act(x, b, dim=dim, act="tanh")
        dx, db = torch.autograd.grad(y.sum(), [x, b])
        assert y.shape == dx.shape == x.shape and db.shape == b.shape
        assert torch.equal(db, torch.zeros_like(b))


def test_launcher_rejects_integer_tensors(device):
    kernels = fastgan.backend.kernels()
    with pytest.raises(TypeError, match="float"):
        kernels.bias_act_fwd(torch.ones(4, 3, dtype=torch.int32, device=device), None, 1, "relu", 0, 1, None)


# ----------------------------------------------------------------------------- module

def test_module_matches_functional_and_casts_bias(device):
    m = BiasAct(5, act="lrelu", clamp=2.0).to(device)
    with torch.no_grad():
        m.bias.normal_()
    x = torch.randn(2, 5, 3, 3, device=device)
    assert torch.equal(m(x), bias_act(x, m.bias, act="lrelu", clamp=2.0))
    xb = x.to(torch.bfloat16)
    y = m(xb)
    assert y.dtype == torch.bfloat16
    assert_close(y, bias_act(x, m.bias, act="lrelu", clamp=2.0), torch.bfloat16)
    assert list(m.state_dict()) == ["bias"]
    with pytest.raises(ValueError):
        BiasAct(0)
    with pytest.raises(ValueError):
        BiasAct(3, act="nope")


def test_functions_are_the_fused_ones_under_interpret(device):
    if fastgan.backend_for(torch.empty(1, device=device)) == "eager":
        pytest.skip("eager backend")
    x = torch.randn(2, 3, 4, device=device, requires_grad=True)
    y = bias_act(x, torch.zeros(3, device=device), act="tanh")
    assert "BiasAct" in type(y.grad_fn).__name__
    assert BIAS_ACT and BIAS_ACT_GRAD  # the ops exist and are what ran


@pytest.mark.gpu
@pytest.mark.parametrize("layout", ["channels_last", "planar"])
def test_more_than_2_31_elements(layout, device):
    """int64 offsets: the last elements of a tensor past 2^31 elements are computed correctly."""
    if device != "cuda":
        pytest.skip("needs the compiled kernels on a GPU (about 13 GB of memory)")
    n = 2 ** 31 + 8 * 1025
    shape, dim = ((n // 8, 8), 1) if layout == "channels_last" else ((1, 2, n // 2), 1)
    x = torch.empty(shape, device="cuda", dtype=torch.float16).uniform_(-2, 2)
    b = (0.1 * torch.randn(x.shape[dim], device="cuda")).to(torch.float16)  # small: see db below
    y = bias_act(x, b, dim=dim, act="lrelu")
    tail = (slice(-4096, None), slice(None)) if layout == "channels_last" else (slice(None), slice(None),
                                                                               slice(-4096, None))
    ref = _bias_act_ref(x[tail].double(), b.double(), dim, resolve_act("lrelu"))
    assert_close(y[tail], ref, torch.float16, "tail of a >2^31-element output")
    del y
    kernels = fastgan.backend.kernels()
    # db sums 2^28 (channels_last) or 2^30 (planar) slopes per channel: with an upstream gradient
    # of ones it overflows float16 (max 65504) to inf. With 2^-14 (exact in fp16) it is at most
    # 2^14 (channels_last) and about 0.6 * 2^16 = 4e4 (planar: |b| is small, so about half the
    # slopes are 0.2)
    g_scale = 2.0 ** -14
    dx, db = kernels.bias_act_bwd(torch.full_like(x, g_scale), x, b, dim, "lrelu", 0.2, 1.0, None, need_db=True)
    ref_dx = g_scale * torch.where(
        x[tail].double() + b.double().reshape([-1 if d == dim else 1 for d in range(x.dim())]) > 0, 1.0, 0.2)
    assert_close(dx[tail], ref_dx, torch.float16, "tail of dx")
    slope = torch.where(x.float() + b.float().reshape([-1 if d == dim else 1 for d in range(x.dim())]) > 0, 1.0, 0.2)
    ref_db = g_scale * slope.sum(dim=[d for d in range(x.dim()) if d != dim])
    assert_close(db, ref_db, torch.float16, "db over >2^31 elements")
