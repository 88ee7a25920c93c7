"""FusedOp: a fused op defined once, run as an autograd.Function in eager code and as a
``torch.library`` custom op under ``torch.compile``.

An op is four plain functions, written in its own module of ``fastgan.functional``:

    forward(*args)                     launches the kernels; annotated (the custom op's schema)
    fake(*args)                        empty outputs of the right shapes, dtypes and strides
    setup_context(ctx, inputs, output) saves what backward needs
    backward(ctx, *grads)              one gradient (or None) per input, built from other
                                       FusedOps, so the op is differentiable as often as they are;
                                       ``backward=None``: not differentiable, a gradient through
                                       the op raises at once (never a silent zero)

Both runtimes run exactly these functions:

- eager code: a ``torch.autograd.Function`` in the ``setup_context`` form (``forward`` takes
  no ctx), which ``torch.func`` transforms accept (``grad``, ``vjp``; ``vmap`` by a loop over the
  vmapped dim);
- ``torch.compile`` (dynamo, and AOTAutograd tracing a backward): the custom op
  ``torch.ops.fastgan.<name>`` with ``register_fake`` and ``register_autograd``, one opaque node
  per call.

``op(*args)`` picks the custom op while a tracer records the call (``_tracing``) and the
Function otherwise: on the CPU a custom-op call costs several times the host time of
``Function.apply`` (``fastgan bench --host-overhead`` measures both), and DCGAN-sized steps
are host-bound.

Outputs must be fresh tensors (a custom op may not return its inputs or views of them) with
the strides its fake promises; ``fresh_like`` enforces both for kernels that may differ.
"""
from typing import Callable

import torch

__all__ = ["FusedOp", "REGISTERED", "fresh_like", "check_registered"]

REGISTERED: dict[str, "FusedOp"] = {}


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def _tracing(args) -> bool:
    """Whether a tracer is recording this call: torch.compile, torch.jit.trace, or a tracer that
    hands the op tensor subclasses (AOTAutograd's fake and functional tensors, ``opcheck``)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    return any(isinstance(a, torch.Tensor) and type(a) not in _PLAIN for a in args)


def _no_setup(ctx, inputs, output):
    pass


def _not_differentiable(name: str, limit: str):
    def backward(ctx, *grads):
        raise RuntimeError(f"fastgan::{name}: {limit}; a higher-order gradient was requested")
    return backward


class _Function(torch.autograd.Function):
    """Base of the ops' Functions. ``apply`` skips what torch's own adds for the setup_context
    form on every call (``inspect.signature(forward).bind(...)``, about 90 us on a CPU core: the
    ops are always called with every argument positional) unless a torch.func transform is
    active, which needs torch's full path."""

    @classmethod
    def apply(cls, *args):
        if torch._C._are_functorch_transforms_active():
            return super().apply(*args)
        return super(torch.autograd.Function, cls).apply(*args)


def _vmap_rule(call: Callable):
    """torch.func.vmap of an op by a loop over the vmapped dim: each slice runs the op itself, and
    the results are stacked (exact; as fast as the loop)."""
    def vmap(info, in_dims, *args):
        outs = [call(*[a.select(d, i) if isinstance(a, torch.Tensor) and d is not None else a
                       for a, d in zip(args, in_dims)]) for i in range(info.batch_size)]
        if isinstance(outs[0], tuple):
            return tuple(torch.stack(o) for o in zip(*outs)), (0,) * len(outs[0])
        return torch.stack(outs), 0
    return vmap


class FusedOp:
    """One op: ``FusedOp(name, forward, fake, setup_context, backward)``; call it like ``forward``.
    Without a backward, ``limit`` says which orders the op's family supports (the error text).
    ``mutates_args`` names the inputs the forward updates in place, such as batch norm's running
    statistics; such an op cannot be differentiated (torch registers no autograd formula for it),
    so it takes detached inputs."""

    def __init__(self, name: str, forward: Callable, fake: Callable, setup_context: Callable | None = None,
                 backward: Callable | None = None, limit: str = "not differentiable", namespace: str = "fastgan",
                 mutates_args: tuple[str, ...] = ()):
        if backward is None:
            backward, setup_context = _not_differentiable(name, limit), _no_setup
        self.name = name
        camel = "".join(part.capitalize() for part in name.split("_"))  # bias_act -> BiasAct(Backward)
        self.function = type(camel, (_Function,), {
            "forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
            "backward": staticmethod(backward), "__module__": forward.__module__, "__doc__": forward.__doc__})
        self.function.vmap = staticmethod(_vmap_rule(self.function.apply))
        self.op = torch.library.custom_op(f"{namespace}::{name}", forward, mutates_args=mutates_args)
        self.op.register_fake(fake)
        if not mutates_args:  # torch registers autograd and vmap for functional ops only
            self.op.register_autograd(backward, setup_context=setup_context)
            self.op.register_vmap(_vmap_rule(self.op))
        if namespace == "fastgan":
            REGISTERED[name] = self

    def __call__(self, *args):
        if _tracing(args):
            return self.op(*args)
        return self.function.apply(*args)

    def __repr__(self) -> str:
        return f"FusedOp(fastgan::{self.name})"


def fresh_like(out: torch.Tensor, x: torch.Tensor, *inputs) -> torch.Tensor:
    """``out`` with the strides of ``torch.empty_like(x)`` (what the fakes promise) and sharing
    memory with none of ``x, *inputs``. The kernels keep a dense input's layout, so only a
    non-dense input (or an aliasing output) costs a copy."""
    aliased = any(t is not None and t.numel() and out.numel()
                  and out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in (x, *inputs))
    if out.stride() == x.stride() and not aliased:
        return out
    ref = torch.empty_like(x, dtype=out.dtype)
    if ref.stride() == out.stride() and not aliased:
        return out
    return ref.copy_(out)


def check_registered() -> list[str]:
    """The names of every registered op; raises if one is missing from ``torch.ops.fastgan``."""
    missing = [name for name in REGISTERED if not hasattr(torch.ops.fastgan, name)]
    if missing:
        raise RuntimeError(f"fastgan ops not registered with torch.library: {missing}")
    return sorted(REGISTERED)
