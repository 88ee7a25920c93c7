"""CUDA graphs for whole GAN training steps, gradient penalty included.

A GAN step at DCGAN size is hundreds of small kernel launches, so the GPU waits on the CPU.
``torch.cuda.make_graphed_callables`` refuses double backward and
``torch.compile(mode="reduce-overhead")`` cannot compile ``autograd.grad(create_graph=True)``;
here the *whole* step is captured with ``torch.cuda.graph``: the forwards, the penalty's
input gradient (``create_graph=True``), the backward, the optimizer step and (G step) the EMA
update. Each call of a captured step then costs one graph launch.

Public API:

    step = capture_step(fn, *example_inputs, warmup=3)   # -> CapturedStep
    out = step(*inputs)    # copy into static buffers, replay, return the static outputs

The trainer (``TrainConfig(cuda_graphs=True)``) keeps its graphs in one shared memory pool:
the D step, the D step with the lazy R1 penalty (a separate graph, not a branch) and the G
step with the EMA update; StyleGAN2's trainer adds the G step with the lazy path-length
penalty (again a graph of its own).

How a step is captured (``CapturedStep``):

1. The first ``warmup`` calls run ``fn`` eagerly on a side stream. They are real calls on
   the caller's inputs (a training step really trains); they initialise the optimizer state
   and the gradients, compile the Triton kernels for these shapes and settle per-shape
   choices (fastgan's conv dispatch timing, cuDNN benchmarking) before capture.
2. The next call captures ``fn`` on that side stream (``torch.cuda.graph`` with the shared
   pool, ``capture_error_mode="thread_local"`` as torch's own CUDA-graph trees use, so that a
   data-loader thread pinning memory cannot break the capture), then replays it once. The
   garbage collector runs just before and is paused during the capture: an old graph freed
   mid-capture would make CUDA calls that are illegal while a stream captures.
3. Every later call copies the inputs into the static buffers and replays.

Rules a captured function must follow (fastgan's losses, penalties, layers and the trainer
follow them): no host reads of tensor values (``.item()``, ``bool(t)``, ``float(t)``,
``print(t)``); only tensors persist between calls (Python-side counters run once, at
capture); gradients are zeroed with ``zero_grad(set_to_none=False)`` so that ``.grad`` stays
the same tensor; optimizers are built with ``capturable=True`` (Adam: ``fused=True`` is
allowed too) and a tensor learning rate that is changed in place; random numbers come from
the default CUDA generator or from generators passed as ``generators=`` (registered with
the graph, so that each replay draws new numbers, exactly the ones an eager call would
draw). Replays advance the generators' offsets like eager calls, so ``get_state()`` and
checkpoints stay exact.

What stays outside the graphs, and how the trainer handles it:

- data loading: batches are copied into one static input buffer (``copy_``, non-blocking
  from pinned memory) before each replay; a batch of another shape or dtype is a clear error
  (the trainer's sampler drops incomplete batches);
- logging: each captured step writes its losses into one static vector; after the step the
  trainer copies it (non-blocking) into pinned host memory and reads it a few log intervals
  later, when its CUDA event has completed: no host synchronisation every step;
- checkpointing: the captured state *is* the models', optimizers' and generators' tensors.
  Saving between replays is fine; loading copies into those tensors in place
  (``Trainer.load_state_dict``), never replaces them (a replaced tensor would be silently
  ignored by the graphs);
- learning-rate changes: ``Trainer.set_lr`` fills the tensor learning rate in place;
  replacing ``param_group["lr"]`` is detected and is an error;
- GradScaler: not used (bf16 autocast needs no loss scaling);
- Triton compilation and conv-dispatch timing: finished during the warm-up calls;
- sampling from G_ema: eager, between replays, on the same stream.

When capture is impossible the trainer warns and runs eager steps (same results):

- ``cuda_graphs=True needs a CUDA device; running eager steps`` (CPU);
- data-parallel runs (world_size > 1), models with hooks, BatchNorm with ``momentum=None``
  (see ``graph_blocker``).
"""
from __future__ import annotations

import collections
import gc
import time
import warnings
from typing import Callable

import torch

__all__ = ["capture_step", "CapturedStep", "CaptureError", "TrainerGraphs", "graph_blocker", "AsyncStats",
           "make_optimizer_capturable_", "portable_optimizer_state", "load_optimizer_state_inplace_",
           "CPU_FALLBACK_MESSAGE", "CAPTURE_STEP_CPU_MESSAGE", "WARMUP_STEPS"]

WARMUP_STEPS = 3
CPU_FALLBACK_MESSAGE = "cuda_graphs=True needs a CUDA device; running eager steps"
CAPTURE_STEP_CPU_MESSAGE = "capture_step: the inputs are not on a CUDA device; running fn eagerly (no CUDA graph)"


class CaptureError(RuntimeError):
    """A step cannot be captured in a CUDA graph (the message says why and what to do)."""


# ----------------------------------------------------------------------------- outputs

def _map_outputs(obj, fn, path="output"):
    """Apply ``fn`` to every tensor of a (nested) tuple/list/dict of tensors; None passes."""
    if obj is None:
        return None
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple):
        items = [_map_outputs(v, fn, f"{path}[{i}]") for i, v in enumerate(obj)]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    if isinstance(obj, list):
        return [_map_outputs(v, fn, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        return {k: _map_outputs(v, fn, f"{path}[{k!r}]") for k, v in obj.items()}
    raise TypeError(f"{path}: a captured step may return tensors (or tuples, lists and dicts of tensors) and "
                    f"None, got {type(obj).__name__}; a Python value would be frozen at capture time")


def _detach(t: torch.Tensor) -> torch.Tensor:
    return t.detach()


def _root_cause(exc: BaseException) -> BaseException:
    """The first exception of a chain (capture_end raises again after a failure inside capture)."""
    seen = set()
    while exc.__context__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__context__
    return exc


# ----------------------------------------------------------------------------- CapturedStep

class CapturedStep:
    """A function replayed from a CUDA graph; call it like the function (see :func:`capture_step`).

    Attributes: ``graphed`` (False: eager fallback on a CPU), ``captured`` (the graph exists),
    ``graph`` (the ``torch.cuda.CUDAGraph`` or None), ``calls``, ``pool`` and ``stream`` (pass
    this step as ``pool=`` to another ``capture_step`` to share both), ``static_inputs``.
    """

    def __init__(self, fn: Callable, example_inputs: tuple = (), *, warmup: int = WARMUP_STEPS,
                 pool=None, generators=(), device=None, capture_error_mode: str = "thread_local",
                 name: str | None = None, before_capture: Callable[[], None] | None = None,
                 _warn_stacklevel: int = 2):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
            raise ValueError(f"warmup must be an int >= 1 (eager calls before capture), got {warmup!r}")
        if capture_error_mode not in ("global", "thread_local", "relaxed"):
            raise ValueError(f"capture_error_mode must be 'global', 'thread_local' or 'relaxed', "
                             f"got {capture_error_mode!r}")
        self.fn, self.warmup, self.name = fn, warmup, name or getattr(fn, "__name__", "step")
        self.capture_error_mode, self.before_capture = capture_error_mode, before_capture
        examples = tuple(example_inputs)
        for i, x in enumerate(examples):
            self._check_one(i, x, None)
        devices = {x.device for x in examples}
        if len(devices) > 1:
            raise ValueError(f"{self.name}: all example inputs must be on one device, got "
                             f"{sorted(str(d) for d in devices)}")
        if device is not None:
            device = torch.device(device)
            if examples and device != examples[0].device:
                raise ValueError(f"{self.name}: device={device} but the example inputs are on {examples[0].device}")
        elif examples:
            device = examples[0].device
        else:
            device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() \
                else torch.device("cpu")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{self.name}: device {device} requested but torch sees no CUDA device")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        self.device = device
        self._specs = tuple((tuple(x.shape), x.dtype, x.device) for x in examples)
        self.generators = tuple(generators)
        for g in self.generators:
            if not isinstance(g, torch.Generator):
                raise TypeError(f"generators must be torch.Generator objects, got {type(g).__name__}")
        self.graphed = device.type == "cuda"
        self.graph = None
        self.calls = 0
        self.static_inputs: tuple = ()
        self.static_outputs = None
        self.pool = self.stream = None
        if not self.graphed:
            warnings.warn(CAPTURE_STEP_CPU_MESSAGE, RuntimeWarning, stacklevel=_warn_stacklevel + 1)
            return
        for g in self.generators:
            if g.device.type != "cuda":
                raise ValueError(f"{self.name}: generator on {g.device} cannot feed a CUDA graph; "
                                 "use a torch.Generator(device='cuda')")
        if isinstance(pool, CapturedStep):
            if not pool.graphed:
                raise ValueError(f"{self.name}: pool= names an eager (CPU) CapturedStep")
            self.pool, self.stream = pool.pool, pool.stream
        else:
            self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
            with torch.cuda.device(device):
                self.stream = torch.cuda.Stream(device)
        # static buffers: same shape, dtype, device and strides as the examples
        self.static_inputs = tuple(torch.empty_like(x, memory_format=torch.preserve_format) for x in examples)

    @property
    def captured(self) -> bool:
        return self.graph is not None

    # -- validation (before any CUDA call, so it behaves the same on every device)

    def _check_one(self, i, x, spec):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{self.name}: input {i} must be a torch.Tensor, got {type(x).__name__} "
                            "(bind constants with a closure or functools.partial)")
        if x.requires_grad:
            raise ValueError(f"{self.name}: input {i} requires grad; gradients cannot flow out of a captured "
                             "step (pass x.detach())")
        if spec is None:
            return
        shape, dtype, device = spec
        if tuple(x.shape) != shape:
            raise ValueError(f"{self.name}: input {i} has shape {tuple(x.shape)} but the step was captured for "
                             f"{shape}; a CUDA graph replays fixed shapes (drop or pad an incomplete last batch)")
        if x.dtype != dtype:
            raise TypeError(f"{self.name}: input {i} has dtype {x.dtype} but the step was captured for {dtype}")
        if x.device != device:
            raise ValueError(f"{self.name}: input {i} is on {x.device} but the step was captured for {device}")

    def check_inputs(self, inputs) -> None:
        """Raise a clear error unless ``inputs`` match the example inputs (count, shape, dtype, device)."""
        if len(inputs) != len(self._specs):
            raise TypeError(f"{self.name}: expected {len(self._specs)} input(s) (as the example inputs), "
                            f"got {len(inputs)}")
        for i, (x, spec) in enumerate(zip(inputs, self._specs)):
            self._check_one(i, x, spec)

    # -- calls

    def __call__(self, *inputs):
        self.check_inputs(inputs)
        self.calls += 1
        if not self.graphed:
            return _map_outputs(self.fn(*inputs), _detach)
        if torch.cuda.current_device() != self.device.index:
            with torch.cuda.device(self.device):
                return self._call(inputs)
        return self._call(inputs)

    def _call(self, inputs):
        for static, x in zip(self.static_inputs, inputs):
            if x is not static:
                static.copy_(x, non_blocking=True)
        if self.graph is None:
            if self.calls <= self.warmup:
                return self._run_warmup()
            self._capture()
        self.graph.replay()
        return self.static_outputs

    def _run_warmup(self):
        current = torch.cuda.current_stream(self.device)
        self.stream.wait_stream(current)
        with torch.cuda.stream(self.stream):
            out = _map_outputs(self.fn(*self.static_inputs), _detach)
        current.wait_stream(self.stream)
        return out

    def _capture(self) -> None:
        if self.before_capture is not None:
            self.before_capture()
        graph = torch.cuda.CUDAGraph()
        if self.generators:
            with warnings.catch_warnings():
                # newer torch registers generators lazily and may deprecate the explicit call
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", FutureWarning)
                for g in self.generators:
                    graph.register_generator_state(g)
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        # An old CUDAGraph freed by the garbage collector during the capture would call CUDA
        # functions that are illegal while a stream captures and spoil this capture (torch >= 2.9
        # no longer collects before capturing). Collect now; no collection until the capture ends.
        gc.collect()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            with torch.cuda.graph(graph, pool=self.pool, stream=self.stream,
                                  capture_error_mode=self.capture_error_mode):
                out = _map_outputs(self.fn(*self.static_inputs), _detach)
        except Exception as exc:
            root = _root_cause(exc)
            if isinstance(root, KeyboardInterrupt):  # Ctrl-C mid-capture, then capture_end failed
                raise KeyboardInterrupt("interrupted during CUDA graph capture") from exc
            detail = f"{type(root).__name__}: {root}".strip()
            if root is not exc:
                detail += f" (then {type(exc).__name__}: {exc})"
            raise CaptureError(
                f"{self.name}: CUDA graph capture failed: {detail[:2000]}. Inside a captured step nothing may "
                "read a tensor on the host (.item(), bool(t), float(t)), compile or autotune a kernel, "
                "synchronize, or draw from an unregistered torch.Generator (pass it as generators=)") from exc
        finally:
            if gc_was_enabled:
                gc.enable()
        self.graph, self.static_outputs = graph, out

    def __repr__(self):
        state = "eager (no CUDA)" if not self.graphed else ("captured" if self.captured else
                                                            f"warming up ({self.calls}/{self.warmup})")
        return f"CapturedStep({self.name}, {state})"


def capture_step(fn: Callable, *example_inputs: torch.Tensor, warmup: int = WARMUP_STEPS, pool=None,
                 generators=(), device=None, capture_error_mode: str = "thread_local") -> CapturedStep:
    """Graph a whole step function (forwards, ``autograd.grad(create_graph=True)``, backward,
    optimizer step) so that each call is one CUDA graph replay.

    Args:
        fn: ``fn(*inputs) -> outputs``: tensors (or tuples/lists/dicts of tensors, or None).
            It must follow the rules of this module's docstring: no host reads of tensor
            values, ``zero_grad(set_to_none=False)``, optimizers with ``capturable=True``,
            no Python state that changes per call.
        *example_inputs: tensors fixing the static inputs' shapes, dtypes, devices (and
            strides); none for a function without inputs (then pass ``device``).
        warmup: how many calls run ``fn`` eagerly on a side stream before the capture. They
            are real calls with the caller's inputs (a training step trains); call ``warmup + 1``
            (capture, then one replay) happens on the next call.
        pool: a ``torch.cuda.graph_pool_handle()`` or another ``CapturedStep`` whose memory
            pool (and side stream) this graph shares; steps sharing a pool must not run
            concurrently, and their outputs stay valid only until the next call of any of them.
        generators: custom CUDA ``torch.Generator`` objects ``fn`` draws from, registered with
            the graph (the default generator needs nothing).
        device: the CUDA device, when there are no example inputs.
        capture_error_mode: passed to ``torch.cuda.graph`` ("thread_local" by default).

    Returns a :class:`CapturedStep`; ``step(*inputs)`` validates the inputs (count, shape,
    dtype, device; no ``requires_grad``), copies them into the static buffers, runs (warm-up),
    captures or replays, and returns the outputs *detached*. After capture the outputs are the
    graph's static tensors: valid until the next call; ``clone()`` what you keep.

    On a CPU (inputs not on a CUDA device, or no CUDA device at all) it warns once,
    ``capture_step: the inputs are not on a CUDA device; running fn eagerly (no CUDA graph)``
    (a ``RuntimeWarning``), and every call runs ``fn(*inputs)`` eagerly with the same input
    validation and detached outputs, so code written for graphs runs and is testable on a CPU.
    """
    return CapturedStep(fn, example_inputs, warmup=warmup, pool=pool, generators=generators, device=device,
                        capture_error_mode=capture_error_mode, _warn_stacklevel=3)


# ----------------------------------------------------------------------------- trainer support

class TrainerGraphs:
    """The trainer's steps as CUDA graphs: "d", "d_r1" (the D step with lazy R1), "g" (the G
    step with the EMA update) and, for StyleGAN2, "g_pl" (the G step with lazy path length;
    ``Trainer.g_graph_kind`` picks the G kind), each created on first use, warmed up ``warmup``
    times, then captured; all share one memory pool and one side stream. Holds what lives
    outside the graphs: the static real batch they read, the stats vector they write (the
    trainer's ``stat_names``) and the tensor learning rates of the capturable optimizers
    (``Trainer.set_lr`` fills them in place)."""

    def __init__(self, trainer, stat_names: tuple[tuple[str, ...], tuple[str, ...]] | None = None,
                 warmup: int = WARMUP_STEPS):
        self.trainer, self.warmup = trainer, warmup
        self.d_names, self.g_names = stat_names or trainer.stat_names
        self.steps: dict[str, CapturedStep] = {}
        self._first: CapturedStep | None = None
        self.lrs = (trainer.opt_g.param_groups[0]["lr"], trainer.opt_d.param_groups[0]["lr"])
        self.static_real: torch.Tensor | None = None
        self.n: int | None = None  # the G step's batch, fixed at the first G step
        self.stats = torch.zeros(len(self.d_names) + len(self.g_names), device=trainer.device)
        self.last_stats: torch.Tensor | None = None  # a copy of ``stats`` after the last train_step

    @property
    def captured(self) -> list[str]:
        return sorted(k for k, s in self.steps.items() if s.captured)

    def run(self, kind: str, fn: Callable[[], None]) -> None:
        step = self.steps.get(kind)
        if step is None:
            step = CapturedStep(fn, (), warmup=self.warmup, pool=self._first, generators=self.trainer.generators,
                                device=self.trainer.device, name=f"cuda_graphs {kind} step",
                                before_capture=self.check_capturable)
            self.steps[kind] = step
            self._first = self._first or step
        step()

    # -- the steps

    def d_step(self, real: torch.Tensor) -> dict:
        self._d_replay(real)
        return dict(zip(self.d_names, self.stats[:len(self.d_names)].clone().unbind()))

    def g_step(self, n: int) -> dict:
        self._g_replay(n)
        return dict(zip(self.g_names, self.stats[len(self.d_names):].clone().unbind()))

    def train_step(self, reals) -> dict:
        """n_critic D replays and one G replay; the stats as views of one fresh vector."""
        for real in reals:
            self._d_replay(real)
        self._g_replay(reals[0].shape[0])
        self.last_stats = self.stats.clone()
        return dict(zip(self.d_names + self.g_names, self.last_stats.unbind()))

    def _d_replay(self, real: torch.Tensor) -> None:
        tr = self.trainer
        self.check_lr()
        self.copy_real(real)
        r1 = tr._r1_due()
        buf = self.stats[:len(self.d_names)]

        keep = () if tr._penalty_due() else ("penalty",)  # the last computed penalty stays in its slot

        def d_graph_step():
            stats = tr._d_update(self.static_real, r1, set_to_none=False)
            buf.copy_(torch.stack([buf[i] if k in keep else stats[k].float() for i, k in enumerate(self.d_names)]))

        self.run("d_r1" if r1 else "d", d_graph_step)
        tr.d_steps += 1

    def _g_replay(self, n: int) -> None:
        if self.n is None:
            self.n = n
        elif n != self.n:
            raise ValueError(f"cuda_graphs: G step batch {n} differs from the captured batch {self.n}")
        buf = self.stats[len(self.d_names):]

        def g_graph_step():
            stats = self.trainer._g_update(self.n, set_to_none=False)
            buf.copy_(torch.stack([stats[k].float() for k in self.g_names]))

        self.run(self.trainer.g_graph_kind(), g_graph_step)

    # -- what the graphs read

    def copy_real(self, real: torch.Tensor) -> None:
        """Copy a real batch into the static input buffer that the D graphs read."""
        device = self.trainer.device
        if not isinstance(real, torch.Tensor):
            raise TypeError(f"a real batch must be a torch.Tensor, got {type(real).__name__}")
        if real.device.type != "cpu" and (real.device.type != device.type or
                                          device.index not in (None, real.device.index)):
            raise ValueError(f"cuda_graphs: real batch on {real.device}; expected the CPU or {device}")
        static = self.static_real
        if static is None:
            if not real.is_floating_point():
                raise TypeError(f"a real batch must be floating point, got {real.dtype}")
            # the layout Trainer.to_device gives the eager steps, so that both run the same kernels
            layout = torch.channels_last if device.type == "cuda" and real.dim() == 4 else torch.contiguous_format
            static = self.static_real = torch.empty(real.shape, dtype=real.dtype, device=device,
                                                    memory_format=layout)
        elif real.shape != static.shape:
            raise ValueError(f"cuda_graphs: real batch of shape {tuple(real.shape)} differs from the captured "
                             f"shape {tuple(static.shape)}; CUDA graphs replay fixed shapes (the trainer's "
                             "sampler drops incomplete batches: pass full batches of batch_size)")
        elif real.dtype != static.dtype:
            raise TypeError(f"cuda_graphs: real batch of dtype {real.dtype} differs from the captured dtype "
                            f"{static.dtype}")
        static.copy_(real, non_blocking=True)

    def check_lr(self) -> None:
        tr = self.trainer
        for opt, lr, name in ((tr.opt_g, self.lrs[0], "opt_g"), (tr.opt_d, self.lrs[1], "opt_d")):
            if opt.param_groups[0]["lr"] is not lr:
                raise RuntimeError(f"{name}.param_groups[0]['lr'] was replaced, but the captured CUDA graphs read "
                                   "the original tensor; change learning rates with Trainer.set_lr (in place)")

    def check_capturable(self) -> None:
        """Called right before each capture: hooks added after construction are an error."""
        tr = self.trainer
        why = graph_blocker(tr.device, tr.dist.world_size, {"G": tr.G, "D": tr.D})
        if why:
            raise CaptureError(why.replace("; running eager steps", "") +
                               "; cannot capture this step (remove the cause or use cuda_graphs=False)")
        self.check_lr()

    def load_optimizers(self, state_g: dict, state_d: dict) -> None:
        """Load optimizer states by copying into the tensors the graphs may hold."""
        tr = self.trainer
        for opt, state, lr in ((tr.opt_g, state_g, self.lrs[0]), (tr.opt_d, state_d, self.lrs[1])):
            if opt.state:
                load_optimizer_state_inplace_(opt, state)
            else:
                opt.load_state_dict(state)
                make_optimizer_capturable_(opt, lr)


def _hooked(module: torch.nn.Module) -> str | None:
    for name, m in module.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            if getattr(m, attr, None):
                return f"module {name or type(m).__name__!r} has {attr.strip('_').replace('_', ' ')}"
    for name, p in module.named_parameters():
        if getattr(p, "_backward_hooks", None) or getattr(p, "_post_accumulate_grad_hooks", None):
            return f"parameter {name!r} has gradient hooks"
    return None


def _global_hooks() -> str | None:
    from torch.nn.modules import module as _m

    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                 "_global_backward_pre_hooks"):
        if getattr(_m, attr, None):
            return f"global module {attr.strip('_').replace('_', ' ')} are registered"
    return None


def graph_blocker(device: torch.device, world_size: int = 1, modules: dict | None = None) -> str | None:
    """Why the trainer's steps cannot be captured (a warning message ending in "running eager
    steps"), or None. Looks at arguments and Python state only (no CUDA call)."""
    if torch.device(device).type != "cuda":
        return CPU_FALLBACK_MESSAGE
    if world_size > 1:
        return (f"cuda_graphs=True is not supported for data-parallel runs (world_size {world_size}); "
                "running eager steps")
    why = _global_hooks()
    if why:
        return f"cuda_graphs=True: {why} (a hook would run once, at capture, not on replays); running eager steps"
    for label, module in (modules or {}).items():
        why = _hooked(module)
        if why:
            return (f"cuda_graphs=True: {label}: {why} (a hook would run once, at capture, not on replays); "
                    "running eager steps")
        for name, m in module.named_modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.momentum is None and m.training:
                return (f"cuda_graphs=True: {label}.{name} is a BatchNorm with momentum=None, which reads its "
                        "batch counter on the host every step; running eager steps")
    return None


# ----------------------------------------------------------------------------- optimizers

def make_optimizer_capturable_(opt: torch.optim.Optimizer, lr: torch.Tensor | None = None) -> torch.Tensor:
    """Turn the only param group of ``opt`` into the trainer's capturable form in place:
    ``capturable=True`` (and ``fused=True`` on CUDA), ``step`` state on the parameters' device,
    and the learning rate a 0-d float32 device tensor
    (``lr`` if given, filled with the group's current value) so that it can change without
    recapture. Returns the lr tensor."""
    if len(opt.param_groups) != 1:
        raise ValueError("cuda_graphs supports one param group per optimizer")
    group = opt.param_groups[0]
    device = group["params"][0].device
    current = group["lr"]
    if lr is None:
        lr = torch.zeros((), dtype=torch.float32, device=device)
    if lr is not current:
        if isinstance(current, torch.Tensor):
            lr.copy_(current)
        else:
            lr.fill_(float(current))
    group["lr"] = lr
    group["capturable"] = True
    if device.type == "cuda" and not group.get("foreach") and not group.get("differentiable"):
        group["fused"] = True  # e.g. restored from a CPU checkpoint: the same kernels as a fresh graphed run
    for p in group["params"]:
        st = opt.state.get(p)
        if st and isinstance(st.get("step"), torch.Tensor) and st["step"].device != p.device:
            st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
    return lr


def portable_optimizer_state(sd: dict) -> dict:
    """An optimizer state_dict as an eager optimizer writes it: float lr, ``capturable=False``
    (so a checkpoint from a graphed run resumes anywhere, CPU included)."""
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        if isinstance(g.get("lr"), torch.Tensor):
            g["lr"] = float(g["lr"])
        if "capturable" in g:
            g["capturable"] = False
        groups.append(g)
    return {"state": sd["state"], "param_groups": groups}


_BAKED = ("betas", "eps", "weight_decay", "amsgrad", "maximize", "foreach", "differentiable",
          "decoupled_weight_decay")


def load_optimizer_state_inplace_(opt: torch.optim.Optimizer, sd: dict) -> None:
    """Load an optimizer state_dict by copying into the existing state tensors (which captured
    graphs read and write) instead of replacing them. Hyperparameters baked into a graph
    (betas, eps, ...) must match; a tensor lr is filled in place."""
    saved_groups = sd["param_groups"]
    if len(saved_groups) != len(opt.param_groups):
        raise ValueError(f"optimizer state has {len(saved_groups)} param groups, this optimizer "
                         f"{len(opt.param_groups)}")
    pairs = []
    for group, saved in zip(opt.param_groups, saved_groups):
        if len(group["params"]) != len(saved["params"]):
            raise ValueError(f"optimizer state has {len(saved['params'])} parameters in a group, this optimizer "
                             f"{len(group['params'])}")
        for key in _BAKED:
            if key in group and key in saved:
                a, b = group[key], saved[key]
                a = tuple(a) if isinstance(a, (list, tuple)) else a
                b = tuple(b) if isinstance(b, (list, tuple)) else b
                if a != b:
                    raise ValueError(f"optimizer {key} {b!r} in the state differs from {a!r}, which the captured "
                                     "graphs use; build the trainer with the checkpoint's settings")
        pairs.extend(zip(group["params"], saved["params"]))
    for p, pid in pairs:
        cur, new = opt.state.get(p, {}), sd["state"].get(pid, {})
        if set(cur) != set(new):
            if not cur:
                raise ValueError("load_optimizer_state_inplace_ needs an optimizer that has stepped "
                                 "(its state tensors exist); use optimizer.load_state_dict before the first step")
            raise ValueError(f"optimizer state keys {sorted(new)} differ from {sorted(cur)}")
        for k, v in new.items():
            if isinstance(cur[k], torch.Tensor):
                cur[k].copy_(v)
            else:
                cur[k] = v
    with torch.no_grad():
        for group, saved in zip(opt.param_groups, saved_groups):
            if isinstance(group["lr"], torch.Tensor):
                group["lr"].fill_(float(saved["lr"]))
            else:
                group["lr"] = float(saved["lr"])


# ----------------------------------------------------------------------------- logging

class AsyncStats:
    """Stats vectors copied to pinned host memory after a step and read back later.

    ``push`` enqueues a non-blocking device-to-host copy and a CUDA event (no wait);
    ``ready`` returns the records whose copy has completed, in order, waiting only for the
    oldest when more than ``max_pending`` are queued (or for all with ``wait_all``).
    Records: ``(step, values: list[float], step_ms: float | None, host_time)``, where
    step_ms is the device time per step between two consecutive pushes.
    """

    def __init__(self, max_pending: int = 4):
        self.max_pending = max_pending
        self._pending: collections.deque = collections.deque()
        self._last_event = None
        self._last_step = None

    def push(self, step: int, vec: torch.Tensor) -> None:
        host = torch.empty(vec.shape, dtype=vec.dtype, pin_memory=True)
        host.copy_(vec, non_blocking=True)
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        prev = (self._last_event, self._last_step) if self._last_event is not None else None
        self._pending.append((step, host, event, prev, time.perf_counter()))
        self._last_event, self._last_step = event, step

    def ready(self, wait_all: bool = False) -> list:
        out = []
        while self._pending:
            step, host, event, prev, t_host = self._pending[0]
            if not (wait_all or len(self._pending) > self.max_pending or event.query()):
                break
            event.synchronize()
            self._pending.popleft()
            step_ms = None
            if prev is not None and step > prev[1]:
                step_ms = prev[0].elapsed_time(event) / (step - prev[1])
            out.append((step, host.tolist(), step_ms, t_host))
        return out

    def __len__(self):
        return len(self._pending)
