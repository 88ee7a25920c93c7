"""Activation functions and their first and second derivatives as Triton device functions.

Shared by every kernel with an activation epilogue (bias_act, conv + act). The activation
is chosen by a compile-time id, so each kernel specialisation contains one activation only.
The ids are the keys of ``ACT_IDS``; the defaults (alpha, gain) live one layer up, in
``fastgan.functional.activations``.

All functions are written with ``tl.exp``/``tl.log``/``tl.where`` in numerically stable
forms (no libdevice: it does not run in the Triton interpreter).

NaN and +-inf give what the eager reference (torch's activations and their autograd) gives:
NaN in, NaN out (``tl.maximum``/``tl.minimum`` would drop it), except the derivatives torch's
backward selects by a comparison: relu passes the gradient where z <= 0 is false (NaN
included), lrelu takes alpha where z > 0 is false; and constant derivatives stay finite at
+-inf (no ``z * 0.0``).
"""
import triton
import triton.language as tl

__all__ = ["ACT_IDS"]

ACT_IDS = {
    "linear": 0,
    "relu": 1,
    "lrelu": 2,
    "tanh": 3,
    "sigmoid": 4,
    "elu": 5,
    "selu": 6,
    "softplus": 7,
    "swish": 8,
}

SELU_SCALE = tl.constexpr(1.0507009873554804934193349852946)
SELU_ALPHA = tl.constexpr(1.6732632423543772848170429916717)
SELU_SCALE_ALPHA = tl.constexpr(1.0507009873554804934193349852946 * 1.6732632423543772848170429916717)


@triton.jit
def scalar_arg(hi, lo, IS_F64: tl.constexpr):
    """A float scalar kernel argument in the compute precision. Compiled kernels receive Python
    floats as float32, so launchers pass ``common.split_float(value)`` (hi, lo) and float64
    kernels rebuild the value as hi + lo in float64 (float32 kernels use hi alone)."""
    if IS_F64:
        v = tl.full((), hi, tl.float64) + lo
    else:
        v = tl.full((), hi, tl.float32)
    return v


@triton.jit
def _expm1(z):
    """exp(z) - 1 to a few ulps for every z: a Taylor polynomial (to z^13, exact to float64) for
    |z| < 1/4, where exp(z) - 1 would cancel, and exp(z) - 1 elsewhere (at most 3.5x cancellation)."""
    p = 1.0 + z * (1.0 / 14.0)
    for k in tl.static_range(13, 1, -1):
        p = 1.0 + z * (1.0 / k) * p
    return tl.where(tl.abs(z) < 0.25, z * p, tl.exp(z) - 1.0)


@triton.jit
def _log1p(u):
    """log(1 + u) to a few ulps for u > -1: 2 atanh(s) with s = u / (2 + u), an odd series to s^19
    (|s| < 1/9 for |u| < 1/4, exact to float64), and log(1 + u) elsewhere."""
    s = u / (2.0 + u)
    s2 = s * s
    p = 1.0 / 19.0
    for k in tl.static_range(17, 0, -2):
        p = 1.0 / k + s2 * p
    return tl.where(tl.abs(u) < 0.25, 2.0 * s * p, tl.log(1.0 + u))


@triton.jit
def _sigmoid(z):
    """1 / (1 + exp(-z)) without overflow or cancellation: exp is only taken of -|z|."""
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _sigmoid_d1(z):
    """sigmoid'(z) = s (1 - s) = e / (1 + e)^2 with e = exp(-|z|): no 1 - s cancellation."""
    e = tl.exp(-tl.abs(z))
    return e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _tanh(z):
    """tanh(z) = -sign(z) expm1(-2|z|) / (2 + expm1(-2|z|)), relatively accurate near zero."""
    m = _expm1(-2.0 * tl.abs(z))
    t = -m / (2.0 + m)
    return tl.where(z >= 0, t, -t)


@triton.jit
def _tanh_d1(z):
    """tanh'(z) = 1 - tanh^2 = 4 e / (1 + e)^2 with e = exp(-2|z|): accurate in the tails too."""
    e = tl.exp(-2.0 * tl.abs(z))
    return 4.0 * e / ((1.0 + e) * (1.0 + e))


@triton.jit
def _softplus(z):
    """log(1 + exp(z)) = max(z, 0) + log1p(exp(-|z|))."""
    return tl.maximum(z, 0.0) + _log1p(tl.exp(-tl.abs(z)))


@triton.jit
def act_fwd(z, alpha, ACT: tl.constexpr):
    """act(z) for the activation with id ACT (alpha is the lrelu slope)."""
    if ACT == 0:
        y = z
    elif ACT == 1:
        y = tl.maximum(z, 0.0)
    elif ACT == 2:
        y = tl.where(z > 0, z, z * alpha)
    elif ACT == 3:
        y = _tanh(z)
    elif ACT == 4:
        y = _sigmoid(z)
    elif ACT == 5:
        y = tl.where(z > 0, z, _expm1(tl.minimum(z, 0.0)))
    elif ACT == 6:
        y = tl.where(z > 0, SELU_SCALE * z, SELU_SCALE_ALPHA * _expm1(tl.minimum(z, 0.0)))
    elif ACT == 7:
        y = _softplus(z)
    else:
        y = z * _sigmoid(z)
    return tl.where(z != z, z, y)


@triton.jit
def act_d1(z, alpha, ACT: tl.constexpr):
    """d act / dz."""
    if ACT == 0:
        d = tl.zeros_like(z) + 1.0
    elif ACT == 1:
        d = tl.where(z <= 0, 0.0, 1.0)
    elif ACT == 2:
        d = tl.where(z > 0, 1.0, alpha)
    elif ACT == 3:
        d = _tanh_d1(z)
    elif ACT == 4:
        d = _sigmoid_d1(z)
    elif ACT == 5:
        d = tl.where(z > 0, 1.0, tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 6:
        d = tl.where(z > 0, SELU_SCALE, SELU_SCALE_ALPHA * tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 7:
        d = _sigmoid(z)
    else:  # swish: s + z s (1 - s)
        d = _sigmoid(z) + z * _sigmoid_d1(z)
    if ACT == 5 or ACT == 6:  # NaN at NaN, as torch's vectorised elu backward (tl.minimum drops NaN)
        d = tl.where(z != z, z, d)
    return d


@triton.jit
def act_d2(z, alpha, ACT: tl.constexpr):
    """d^2 act / dz^2 (zero almost everywhere for the piecewise-linear activations). The forms
    avoid cancellation: 1 - 2 sigmoid(z) = -tanh(z / 2)."""
    if ACT == 3:
        d = -2.0 * _tanh(z) * _tanh_d1(z)
    elif ACT == 4:
        d = -_sigmoid_d1(z) * _tanh(0.5 * z)
    elif ACT == 5:
        d = tl.where(z > 0, 0.0, tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 6:
        d = tl.where(z > 0, 0.0, SELU_SCALE_ALPHA * tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 7:
        d = _sigmoid_d1(z)
    elif ACT == 8:  # swish: s (1 - s) (2 - z tanh(z / 2))
        d = _sigmoid_d1(z) * (2.0 - z * _tanh(0.5 * z))
    else:
        d = tl.zeros_like(z)
    if ACT == 5 or ACT == 6:
        d = tl.where(z != z, z, d)
    return d


@triton.jit
def act_clamp(y, clamp):
    """clamp(y, -clamp, clamp) keeping NaN, as torch.clamp does (tl.minimum/maximum drop it)."""
    return tl.where(y != y, y, tl.minimum(tl.maximum(y, -clamp), clamp))
