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
def _sigmoid(z):
    """1 / (1 + exp(-z)) without overflow: exp is only taken of -|z|."""
    e = tl.exp(-tl.abs(z))
    return tl.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _tanh(z):
    """tanh(z) = sign(z) * (1 - exp(-2|z|)) / (1 + exp(-2|z|))."""
    e = tl.exp(-2.0 * tl.abs(z))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(z >= 0, t, -t)


@triton.jit
def _log1p(u):
    """log(1 + u) accurate for small u (Goldberg's correction of log(1 + u))."""
    w = 1.0 + u
    d = w - 1.0
    return tl.where(d == 0.0, u, tl.log(w) * (u / tl.where(d == 0.0, 1.0, d)))


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
        y = tl.where(z > 0, z, tl.exp(tl.minimum(z, 0.0)) - 1.0)
    elif ACT == 6:
        y = tl.where(z > 0, SELU_SCALE * z, SELU_SCALE_ALPHA * (tl.exp(tl.minimum(z, 0.0)) - 1.0))
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
        t = _tanh(z)
        d = 1.0 - t * t
    elif ACT == 4:
        s = _sigmoid(z)
        d = s * (1.0 - s)
    elif ACT == 5:
        d = tl.where(z > 0, 1.0, tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 6:
        d = tl.where(z > 0, SELU_SCALE, SELU_SCALE_ALPHA * tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 7:
        d = _sigmoid(z)
    else:
        s = _sigmoid(z)
        d = s * (1.0 + z * (1.0 - s))
    if ACT == 5 or ACT == 6:  # NaN at NaN, as torch's vectorised elu backward (tl.minimum drops NaN)
        d = tl.where(z != z, z, d)
    return d


@triton.jit
def act_d2(z, alpha, ACT: tl.constexpr):
    """d^2 act / dz^2 (zero almost everywhere for the piecewise-linear activations)."""
    if ACT == 3:
        t = _tanh(z)
        d = -2.0 * t * (1.0 - t * t)
    elif ACT == 4:
        s = _sigmoid(z)
        d = s * (1.0 - s) * (1.0 - 2.0 * s)
    elif ACT == 5:
        d = tl.where(z > 0, 0.0, tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 6:
        d = tl.where(z > 0, 0.0, SELU_SCALE_ALPHA * tl.exp(tl.minimum(z, 0.0)))
    elif ACT == 7:
        s = _sigmoid(z)
        d = s * (1.0 - s)
    elif ACT == 8:
        s = _sigmoid(z)
        d = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
    else:
        d = tl.zeros_like(z)
    if ACT == 5 or ACT == 6:
        d = tl.where(z != z, z, d)
    return d


@triton.jit
def act_clamp(y, clamp):
    """clamp(y, -clamp, clamp) keeping NaN, as torch.clamp does (tl.minimum/maximum drop it)."""
    return tl.where(y != y, y, tl.minimum(tl.maximum(y, -clamp), clamp))
