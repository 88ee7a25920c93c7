"""accelerate(model): rewrite an existing PyTorch GAN onto fastgan's fused ops, in place of the
patterns it can prove equivalent, leaving everything else untouched.

What is fused
-------------
1. In every ``nn.Sequential`` (where data flow is certain: child i feeds child i + 1):

   - ``Conv2d`` / ``ConvTranspose2d`` followed by an activation module -> the convolution runs
     ``fastgan.functional.conv2d_act`` / ``conv_transpose2d_act`` with the activation as its
     epilogue, and the activation's slot becomes a ``FoldedActivation`` (an identity while the
     fused module is in place; indexes and state_dict keys do not change);
   - ``BatchNorm2d`` followed by an activation module (typically after a convolution) -> the
     batch norm runs ``fastgan.functional.batch_norm_act`` (training mode: fused statistics +
     normalise + activation; running statistics, momentum, ``num_batches_tracked`` and eval
     mode exactly as ``nn.BatchNorm2d``); the activation's slot becomes a ``FoldedActivation``.
     Differentiable twice in both modes, so gradient penalties through it are exact.
   - ``Conv2d`` / ``ConvTranspose2d`` followed by a ``BatchNorm2d`` or ``InstanceNorm2d`` (fused
     with its activation as above, or with a linear epilogue when none follows) -> the
     convolution runs fastgan's conv with ``bn_partials``: in training mode its epilogue computes
     the statistics' per-tile partials, and the norm skips its own statistics pass.

   A Sequential is assumed to be called as a whole (``self.main(x)``): one that is only used
   as a list and iterated with other code between its children would be misread.

2. In any other module whose ``forward`` applies an activation to a convolution's output
   (``F.leaky_relu(self.conv(x), 0.2)``, ``torch.relu``, ``F.relu``, ``torch.tanh``,
   ``torch.sigmoid``, ``F.silu``, ``F.elu``, ``F.selu``, ``F.softplus``, the tensor methods
   ``.relu()``/``.tanh()``/``.sigmoid()``, or an activation module): that module's own forward
   is traced with ``torch.fx`` (its children stay opaque calls), and when the convolution is
   called once and the activation is the only user of its output, the activation is removed
   from the graph and the convolution fused as in 1. The module keeps its identity and
   attributes; only its ``forward`` becomes the rewritten graph's code. A forward that does not
   trace (data-dependent control flow, ...), that traces differently in train and eval mode,
   or that has optional/variadic arguments (fx would bake their default) is left exactly as it
   was, and the report says so. Nothing is rewritten partially within one forward.

Supported activations and their exact torch semantics (passed as explicit alpha/gain):
``ReLU`` (relu, gain 1), ``LeakyReLU(slope)`` (lrelu, alpha=slope, default 0.01, gain 1),
``Tanh``, ``Sigmoid``, ``SiLU`` (swish, gain 1), ``ELU`` (alpha=1 only), ``SELU``,
``Softplus`` (beta=1, threshold=20 only), and ``Identity`` after a convolution (linear: the
bias add runs in the fused epilogue). ``inplace=True`` is fine. Anything else (ELU with
alpha != 1, ``padding_mode`` other than "zeros", asymmetric ``padding="same"``, a subclass
overriding ``forward``, forward/backward hooks on the convolution or the activation, a module
referenced from two places) is left as it is and listed in the report with the reason: it is
never approximated.

Design: class swap, not module replacement
------------------------------------------
A fused module is the *same object* with its class swapped to a subclass of its own class
whose ``forward`` calls the fused op with ``self.weight`` / ``self.bias``. Hence:

- parameters, buffers, ``state_dict`` keys, optimizer references, pre-hooks and
  parametrizations are untouched. ``torch.nn.utils.parametrizations.spectral_norm`` /
  ``weight_norm`` keep working: ``self.weight`` is the parametrized weight, and u, v and
  ``original`` stay where they were. For a parametrized module the fused class is inserted
  *below* torch's generated ``Parametrized...`` class, so ``remove_parametrizations`` later
  still restores a (fused) plain convolution. The hook-based ``torch.nn.utils.spectral_norm``
  (a forward pre-hook) works too.
- ``copy.deepcopy`` works; fused convolutions and batch norms also pickle (``torch.save`` of a
  whole model): they are rebuilt from their original class. Modules whose forward was
  rewritten by fx can be deep-copied but not pickled (save the state_dict, as for
  parametrized modules).
- new ``fastgan.nn`` modules would need copied parameters, would break optimizers built
  before the call and would drop parametrizations; the swap avoids all three.

``accelerate`` asserts that the returned model's ``state_dict`` has the keys and shapes of the
original; if it ever did not, the rewrite is reverted (``inplace=False``) with a report entry,
or a RuntimeError is raised (``inplace=True``).

Caveat: a convolution that is also called directly from elsewhere (for example
``self.main[0](x)`` in some other forward, outside the Sequential where the pattern was found)
would see the fused activation there too; accelerate cannot see such calls.

torch.compile: the fused forwards call fastgan.functional ops, which become single
registered ops (``torch.ops.fastgan.*``, see ``fastgan.functional.fused_op``) while compiling, so
``torch.compile(accelerate(model), fullgraph=True)`` has no graph break from fastgan.
"""
from __future__ import annotations

import copy
import inspect
import itertools
import linecache
from collections import Counter
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from .nn import BatchNormAct1d, BatchNormAct2d, Conv2dAct, ConvTranspose2dAct, InstanceNormAct2d, LinearAct

__all__ = ["accelerate", "restore", "AccelerateReport", "Replacement", "Skipped", "FoldedActivation", "is_fused"]


# ============================================================================= report

@dataclass(frozen=True)
class Replacement:
    """One fused pattern: ``name`` is the qualified name of the module that now runs the fused
    op (the convolution or batch norm); ``removed`` the activation that was folded into it."""
    name: str
    pattern: str
    act: str
    alpha: float | None
    gain: float
    via: str  # "sequential" or "fx"
    removed: str

    def __str__(self) -> str:
        alpha = f", alpha={self.alpha:g}" if self.alpha is not None else ""
        return (f"{self.name or '<root>'}: {self.pattern} -> fused act={self.act}{alpha}, gain={self.gain:g} "
                f"[{self.via}; removed {self.removed}]")


@dataclass(frozen=True)
class Skipped:
    """A pattern (or a forward) left as it was, with the reason."""
    name: str
    pattern: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name or '<root>'}: {self.pattern} left as is: {self.reason}"


@dataclass
class AccelerateReport:
    """What :func:`accelerate` replaced and what it left, and why. ``left`` names every
    convolution, linear, normalisation and activation module that still runs torch's code;
    ``coverage`` is (fused, total) over the model's convolution, linear and normalisation
    modules; ``copied`` lists the modules a deep copy (``inplace=False``) separated from other
    objects that shared them."""
    replaced: list[Replacement] = field(default_factory=list)
    left: list[Skipped] = field(default_factory=list)
    coverage: tuple[int, int] = (0, 0)
    copied: list[str] = field(default_factory=list)

    @property
    def nothing_fused(self) -> bool:
        return not self.replaced

    def __str__(self) -> str:
        fused, total = self.coverage
        lines = [f"fastgan.accelerate: {len(self.replaced)} pattern(s) fused, {len(self.left)} left as is; "
                 f"{fused} of {total} conv/linear/norm modules fused"]
        if self.nothing_fused:
            lines[0] += " (nothing to fuse: the model is returned unchanged)"
        lines += [f"  fused  {r}" for r in self.replaced]
        lines += [f"  left   {s}" for s in self.left]
        if self.copied:
            lines.append(f"  copied (inplace=False; these were shared with objects outside the model, the copy no "
                         f"longer shares them): {', '.join(self.copied)}")
        return "\n".join(lines)


# ============================================================================= activations

@dataclass(frozen=True)
class _Fusion:
    """The epilogue a fused module applies: fastgan act name, alpha (lrelu only), gain."""
    act: str
    alpha: float | None = None
    gain: float = 1.0

    def __str__(self) -> str:
        alpha = f", alpha={self.alpha:g}" if self.alpha is not None else ""
        return f"act={self.act}{alpha}, gain={self.gain:g}"


_SIMPLE_ACT_MODULES = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "swish", nn.SELU: "selu"}


def _act_of_module(m: nn.Module):
    """(_Fusion | None, reason | None): the fused form of an activation module, None if ``m`` is
    not an activation we know (reason None) or a known one in an unsupported configuration."""
    cls = type(m)
    known = (*_SIMPLE_ACT_MODULES, nn.LeakyReLU, nn.ELU, nn.Softplus, nn.Identity)
    base = next((k for k in known if isinstance(m, k)), None)
    if base is None or isinstance(m, FoldedActivation):
        return None, None
    if cls.forward is not base.forward:
        return None, f"{cls.__name__} overrides forward"
    if base in _SIMPLE_ACT_MODULES:
        return _Fusion(_SIMPLE_ACT_MODULES[base]), None
    if base is nn.LeakyReLU:
        return _Fusion("lrelu", float(m.negative_slope)), None
    if base is nn.ELU:
        if float(m.alpha) != 1.0:
            return None, f"ELU(alpha={m.alpha}) is not supported (fastgan's elu has alpha=1)"
        return _Fusion("elu"), None
    if base is nn.Softplus:
        if float(m.beta) != 1.0 or float(m.threshold) != 20.0:
            return None, (f"Softplus(beta={m.beta}, threshold={m.threshold}) is not supported "
                          "(only beta=1, threshold=20)")
        return _Fusion("softplus"), None
    return _Fusion("linear"), None  # Identity


# fx call_function / call_method targets: (act name, parameter names, defaults)
_FX_FUNCTIONS = {
    F.relu: ("relu", ("input", "inplace"), {"inplace": False}),
    torch.relu: ("relu", ("input",), {}),
    torch.relu_: ("relu", ("input",), {}),
    F.relu_: ("relu", ("input",), {}),
    F.leaky_relu: ("lrelu", ("input", "negative_slope", "inplace"), {"negative_slope": 0.01, "inplace": False}),
    F.leaky_relu_: ("lrelu", ("input", "negative_slope"), {"negative_slope": 0.01}),
    torch.tanh: ("tanh", ("input",), {}),
    F.tanh: ("tanh", ("input",), {}),
    torch.sigmoid: ("sigmoid", ("input",), {}),
    F.sigmoid: ("sigmoid", ("input",), {}),
    F.silu: ("swish", ("input", "inplace"), {"inplace": False}),
    F.elu: ("elu", ("input", "alpha", "inplace"), {"alpha": 1.0, "inplace": False}),
    F.selu: ("selu", ("input", "inplace"), {"inplace": False}),
    torch.selu: ("selu", ("input",), {}),
    F.softplus: ("softplus", ("input", "beta", "threshold"), {"beta": 1.0, "threshold": 20.0}),
}
_FX_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh", "sigmoid": "sigmoid",
               "sigmoid_": "sigmoid"}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _act_of_node(node: torch.fx.Node, root: nn.Module):
    """(input node, _Fusion | None, reason | None) for an activation node; (None, None, None)
    if the node is not an activation we know."""
    if node.op == "call_method" and node.target in _FX_METHODS:
        if len(node.args) != 1 or node.kwargs:
            return node.args[0] if node.args else None, None, f"unsupported arguments to .{node.target}()"
        return node.args[0], _Fusion(_FX_METHODS[node.target]), None
    if node.op == "call_module":
        try:
            m = root.get_submodule(node.target)
        except AttributeError:
            return None, None, None
        fusion, reason = _act_of_module(m)
        if fusion is None and reason is None:
            return None, None, None
        if fusion is not None and fusion.act == "linear":
            return None, None, None  # an Identity call: nothing to gain, leave it
        inp = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if inp is None:
            return None, None, None
        if reason is None:
            reason = _hooks_reason(m, "activation")
        return inp, (fusion if reason is None else None), reason
    if node.op != "call_function":
        return None, None, None
    try:
        entry = _FX_FUNCTIONS.get(node.target)
    except TypeError:  # unhashable target
        return None, None, None
    if entry is None:
        return None, None, None
    act, names, defaults = entry
    if len(node.args) > len(names) or any(k not in names for k in node.kwargs):
        return (node.args[0] if node.args else None), None, "unsupported arguments"
    bound = dict(defaults)
    bound.update(zip(names, node.args))
    bound.update(node.kwargs)
    if "input" not in bound:
        return None, None, None
    inp = bound.pop("input")
    for k, v in bound.items():
        if k == "inplace":
            if not isinstance(v, bool):
                return inp, None, "inplace is not a constant bool"
        elif not _is_number(v):
            return inp, None, f"{k} is not a Python number (fx cannot prove it constant)"
    if act == "lrelu":
        return inp, _Fusion("lrelu", float(bound["negative_slope"])), None
    if act == "elu" and float(bound["alpha"]) != 1.0:
        return inp, None, f"F.elu(alpha={bound['alpha']}) is not supported (fastgan's elu has alpha=1)"
    if act == "softplus" and (float(bound["beta"]) != 1.0 or float(bound["threshold"]) != 20.0):
        return inp, None, "F.softplus with beta != 1 or threshold != 20 is not supported"
    return inp, _Fusion(act), None


# ============================================================================= fused classes

def _fused_extra_repr(self):
    return type(self)._fastgan_base.extra_repr(self) + f", fastgan({self._fastgan_fusion})"


class FoldedActivation(nn.Identity):
    """The slot of an activation folded into the module before it in an ``nn.Sequential``.

    An identity while that module is still the fused one; if a tool replaced it (for example
    ``nn.SyncBatchNorm.convert_sync_batchnorm`` builds a plain SyncBatchNorm from the fused batch
    norm), it applies the activation again, so the model still computes what it did. It holds
    no parameters of its own: the state_dict is unchanged. ``fastgan.restore`` puts ``act`` back."""

    def __init__(self, act: nn.Module, parent: nn.Module, slot: str, fused: nn.Module):
        nn.Module.__init__(self)
        self.__dict__.update(act=act, _parent=parent, _slot=slot, _fused=fused)  # plain attributes, no submodules

    def forward(self, input):
        if self._parent._modules.get(self._slot) is self._fused:
            return input
        return self.act(input)

    def extra_repr(self) -> str:
        return f"{self.act!r} folded into {self._slot!r}"


def _rebuild_fused(base: type):
    """Unpickling helper: an empty instance of the fused class of ``base``."""
    return object.__new__(_fused_class(base))


def _fused_reduce_ex(self, protocol):
    return _rebuild_fused, (type(self)._fastgan_base,), self.__getstate__()


@dataclass(frozen=True)
class _Kind:
    """A torch layer accelerate can fuse: the fastgan.nn methods bound onto it, the torch methods
    a subclass must not override, and whether it is a normalisation layer."""
    base: type
    methods: dict
    frozen: tuple = ()
    role: str = "convolution"
    norm: bool = False


# the fused methods are fastgan.nn's own, bound onto torch's classes (most specific class first)
_KINDS = (
    _Kind(nn.ConvTranspose2d, {"forward": ConvTranspose2dAct.forward}, ("_output_padding",)),
    _Kind(nn.Conv2d, {"forward": Conv2dAct.forward}, ("_conv_forward",)),
    _Kind(nn.Linear, {"forward": LinearAct.forward}, role="linear layer"),
    _Kind(nn.BatchNorm1d, {"forward": BatchNormAct1d.forward}, ("_check_input_dim",), "batch norm", True),
    _Kind(nn.BatchNorm2d, {"forward": BatchNormAct2d.forward}, ("_check_input_dim",), "batch norm", True),
    _Kind(nn.InstanceNorm2d, {"_apply_instance_norm": InstanceNormAct2d._apply_instance_norm},
          ("forward", "_check_input_dim", "_handle_no_batch_input"), "instance norm", True),
)
_EPILOGUE = ("act", "alpha", "gain", "clamp")
_FUSED_CLASSES: dict[type, type] = {}


def _kind_of(m) -> _Kind | None:
    """The fusable kind ``m`` (an instance or a class; possibly parametrized) is, or None."""
    cls = m if isinstance(m, type) else type(m)
    return next((k for k in _KINDS if issubclass(cls, k.base)), None)


def _fused_class(base: type) -> type:
    """The fused subclass of a plain (non-parametrized) module class, one per class."""
    cls = _FUSED_CLASSES.get(base)
    if cls is None:
        cls = type(f"Fused{base.__name__}", (base,), {
            **_kind_of(base).methods,
            "extra_repr": _fused_extra_repr,
            "__reduce_ex__": _fused_reduce_ex,
            # torch's module path: torch.fx treats the fused module as the leaf its base class is
            "__module__": base.__module__,
            "__doc__": f"{base.__name__} running fastgan's fused op (made by fastgan.accelerate).",
            "_fastgan_base": base,
            "_fastgan_fused": True,
            "bn_partials": False,  # read by the conv forwards (fastgan.nn.conv)
        })
        _FUSED_CLASSES[base] = cls
    return cls


def _swap_to_fused(m: nn.Module, fusion: _Fusion) -> None:
    cls = type(m)
    if parametrize.is_parametrized(m):
        # torch's generated Parametrized<Base> holds one property per parametrized tensor;
        # rebuild it on top of Fused<Base> so that remove_parametrizations still works.
        plain = cls.__bases__[0]
        attrs = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        new_cls = type(cls.__name__, (_fused_class(plain),), {**attrs, "_fastgan_unfused": cls})
    else:
        new_cls = _fused_class(cls)
    m._fastgan_fusion = fusion
    m.act, m.alpha, m.gain, m.clamp = fusion.act, (fusion.alpha if fusion.act == "lrelu" else None), fusion.gain, None
    m.__class__ = new_cls


def is_fused(m: nn.Module) -> bool:
    """Whether ``m`` runs a fused op installed by :func:`accelerate`."""
    return bool(getattr(type(m), "_fastgan_fused", False))


# ============================================================================= checks

def _hooks_reason(m: nn.Module, role: str) -> str | None:
    if m._forward_hooks:
        return f"the {role} has forward hooks (they would see a different tensor)"
    if m._backward_hooks or getattr(m, "_backward_pre_hooks", None):
        return f"the {role} has backward hooks"
    return None


def _attributes_reason(m: nn.Module) -> str | None:
    taken = [a for a in _EPILOGUE if hasattr(m, a)]  # the fused forward keeps its epilogue there
    return f"the module already has attribute(s) {taken}" if taken else None


def _plain_class(m: nn.Module) -> type:
    return type(m).__bases__[0] if parametrize.is_parametrized(m) else type(m)


def _fusable_reason(m: nn.Module, kind: _Kind, refs: Counter) -> str | None:
    """Why the layer ``m`` of ``kind`` cannot be fused (None: it can)."""
    if is_fused(m):
        return "already fused"
    cls = type(m)
    for name in (*kind.methods, *kind.frozen):
        if getattr(cls, name) is not getattr(kind.base, name):
            return f"{cls.__name__} overrides {name}"
    if parametrize.is_parametrized(m) and (kind.norm or len(cls.__bases__) != 1):
        return f"parametrized {kind.role}" if kind.norm else "unexpected parametrized class layout"
    if kind.base in (nn.Conv2d, nn.ConvTranspose2d):
        if m.padding_mode != "zeros":
            return f"padding_mode={m.padding_mode!r} (only 'zeros' is fused)"
        if isinstance(m.padding, str) and m.padding == "same":
            for k, d in zip(m.kernel_size, m.dilation):
                if d * (k - 1) % 2:
                    return "padding='same' needs asymmetric padding for this kernel size"
    # (never read m.weight here: for a parametrized module in training mode that would run the
    # parametrization, e.g. one power iteration of spectral norm, and change its state)
    if refs[id(m)] > 1:
        return "the module is referenced from more than one place"
    return _hooks_reason(m, kind.role) or _attributes_reason(m)


def _reference_counts(model: nn.Module) -> Counter:
    """How many (parent, attribute) slots hold each module."""
    refs: Counter = Counter()
    for _, parent in model.named_modules():
        for child in parent._modules.values():
            if child is not None:
                refs[id(child)] += 1
    return refs


def _label(m: nn.Module) -> str:
    """The class name used in the report (``Conv2d(parametrized)`` for torch's generated classes)."""
    if parametrize.is_parametrized(m):
        return f"{_plain_class(m).__name__}(parametrized)"
    return type(m).__name__


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# ============================================================================= Sequential pass

def _sequential_pass(model: nn.Module, refs: Counter, report: AccelerateReport, batch_norm: bool) -> None:
    for seq_name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        items = [(k, m) for k, m in seq._modules.items() if m is not None]
        i = 0
        while i + 1 < len(items):
            (name, m), (act_name, act_mod) = items[i], items[i + 1]
            kind = _kind_of(m)
            if kind is None or (not batch_norm and kind.role == "batch norm"):
                i += 1
                continue
            fusion, reason = _act_of_module(act_mod)
            if fusion is None and reason is None:
                i += 1
                continue
            if kind.norm and fusion is not None and fusion.act == "linear":
                i += 1
                continue
            full, act_full = _join(seq_name, name), _join(seq_name, act_name)
            pattern = f"{_label(m)}+{type(act_mod).__name__}"
            if reason is None:
                reason = _fusable_reason(m, kind, refs)
            if reason is None:
                reason = _hooks_reason(act_mod, "activation")
            if reason is not None:
                if reason != "already fused":
                    report.left.append(Skipped(full, pattern, reason))
                i += 1
                continue
            _swap_to_fused(m, fusion)
            setattr(seq, act_name, FoldedActivation(act_mod, seq, name, m))
            report.replaced.append(Replacement(full, pattern, fusion.act, fusion.alpha, fusion.gain, "sequential",
                                               act_full))
            i += 2


def _conv_batch_norm_pass(model: nn.Module, refs: Counter, report: AccelerateReport, batch_norm: bool) -> None:
    """In every Sequential, a convolution right before a batch or instance norm computes the
    norm's statistics partials in its epilogue: fused with a linear epilogue and ``bn_partials``
    set (True, or "instance"). The norm is fused too: the sequential pass fused it with its
    activation, or, with none after it, it is fused here with a linear epilogue (its statistics
    pass is what the conv saves)."""
    for seq_name, seq in list(model.named_modules()):
        if not isinstance(seq, nn.Sequential):
            continue
        items = [(k, m) for k, m in seq._modules.items() if m is not None]
        for (name, m), (bn_name, bn) in zip(items, items[1:]):
            kind = _kind_of(m)
            if kind is None or kind.base not in (nn.Conv2d, nn.ConvTranspose2d) \
                    or not isinstance(bn, (nn.BatchNorm2d, nn.InstanceNorm2d)) \
                    or (not batch_norm and isinstance(bn, nn.BatchNorm2d)):
                continue
            if not is_fused(bn):  # no activation follows the norm: fused with a linear epilogue
                bn_kind = _kind_of(bn)
                if _fusable_reason(bn, bn_kind, refs) is not None:
                    continue
                bn_label = _label(bn)
                _swap_to_fused(bn, _Fusion("linear"))
                report.replaced.append(Replacement(_join(seq_name, bn_name), bn_label, "linear", None, 1.0,
                                                   "sequential", "nothing (no activation follows it)"))
            pattern = f"{_label(m)}+{type(bn)._fastgan_base.__name__}"
            reason = _fusable_reason(m, kind, refs)
            if reason is not None:
                if reason != "already fused":
                    report.left.append(Skipped(_join(seq_name, name), pattern, reason))
                continue
            _swap_to_fused(m, _Fusion("linear"))
            m.bn_partials = "instance" if isinstance(bn, nn.InstanceNorm2d) else True
            report.replaced.append(Replacement(_join(seq_name, name), pattern, "linear", None, 1.0, "sequential",
                                               f"{_join(seq_name, bn_name)}'s statistics pass"))


# ============================================================================= fx pass

class _ShallowTracer(torch.fx.Tracer):
    """Traces one module's own forward: every submodule call stays one call_module node."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return True


def _candidate_layers(m: nn.Module, batch_norm: bool, prefix: str = "") -> list[str]:
    """Fusable layers a forward of ``m`` can call directly (children, or inside ModuleList/Dict)."""
    out = []
    for name, child in m._modules.items():
        if child is None:
            continue
        kind = _kind_of(child)
        if kind is not None and not is_fused(child) and (batch_norm or kind.role != "batch norm"):
            out.append(_join(prefix, name))
        elif type(child) in (nn.ModuleList, nn.ModuleDict):
            out += _candidate_layers(child, batch_norm, _join(prefix, name))
    return out


def _traceable_signature(m: nn.Module) -> str | None:
    try:
        sig = inspect.signature(type(m).forward)
    except (TypeError, ValueError):
        return "forward has no inspectable signature"
    params = list(sig.parameters.values())[1:]
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return f"forward takes *{p.name}/**{p.name} (fx would fix their number)"
        if p.default is not p.empty:
            return f"forward argument {p.name!r} has a default (fx would bake one branch of it)"
        if p.kind is p.KEYWORD_ONLY:
            return f"forward argument {p.name!r} is keyword-only"
    return None


def _trace(m: nn.Module) -> torch.fx.Graph:
    return _ShallowTracer().trace(m)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip()


_fx_counter = itertools.count()


def _compile_forward(graph: torch.fx.Graph, cls: type):
    code = graph.python_code(root_module="self")
    filename = f"<fastgan.accelerate fx forward of {cls.__qualname__} #{next(_fx_counter)}>"
    linecache.cache[filename] = (len(code.src), None, code.src.splitlines(True), filename)
    namespace = dict(code.globals)
    exec(compile(code.src, filename, "exec"), namespace)  # noqa: S102 - code generated by torch.fx
    return namespace["forward"]


def _fx_deepcopy(self, memo):
    replica = object.__new__(type(self))
    memo[id(self)] = replica
    replica.__dict__ = copy.deepcopy(self.__dict__, memo)
    return replica


def _fx_reduce_ex(self, protocol):
    raise RuntimeError(f"{type(self).__name__}: a module whose forward was rewritten by fastgan.accelerate (fx) "
                       "cannot be pickled; save its state_dict() and call accelerate() again after loading")


def _install_forward(m: nn.Module, forward) -> None:
    base = type(m)
    forward.__doc__ = (f"{base.__qualname__}.forward rewritten by fastgan.accelerate (torch.fx): "
                       "activations folded into the fused convolutions.")
    m.__class__ = type(f"Fastgan{base.__name__}", (base,), {
        "forward": forward, "__module__": base.__module__, "__deepcopy__": _fx_deepcopy,
        "__reduce_ex__": _fx_reduce_ex, "_fastgan_fx_base": base, "_fastgan_fx": True,
    })


def _fx_module(prefix: str, m: nn.Module, refs: Counter, report: AccelerateReport, batch_norm: bool) -> None:
    layers = _candidate_layers(m, batch_norm)
    if not layers:
        return
    what = f"{type(m).__name__}.forward"
    listed = ", ".join(_join(prefix, c) for c in layers)
    reason = _traceable_signature(m)
    if reason is None:
        try:
            graph = _trace(m)
            was = m.training
            try:
                m.training = not was  # this module's flag only: its children are opaque calls
                other = _trace(m)
            finally:
                m.training = was
            if graph.python_code("self").src != other.python_code("self").src:
                reason = "forward traces differently in train and eval mode (it branches on self.training)"
        except Exception as exc:  # fx raises TraceError, TypeError, NameError, ... on untraceable code
            reason = f"torch.fx cannot trace it ({_first_line(exc)})"
    if reason is not None:
        report.left.append(Skipped(prefix, f"{what} (fx)", f"{reason}; any activation applied there to "
                                   f"{listed} stays unfused"))
        return

    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    plan = []
    for node in graph.nodes:
        if node.op != "call_module" or node.target not in layers:
            continue
        users = list(node.users)
        acts = [(u, *_act_of_node(u, m)) for u in users]
        acts = [(u, f, r) for u, inp, f, r in acts if inp is node and (f is not None or r is not None)]
        if not acts:
            continue
        user, fusion, reason = acts[0]
        layer = m.get_submodule(node.target)
        full = _join(prefix, node.target)
        pattern = f"{_label(layer)}+{_node_label(user)}"
        if reason is None and len(users) != 1:
            reason = "the layer's output has other users besides the activation"
        if reason is None and calls[node.target] != 1:
            reason = "the layer is called more than once in this forward"
        if reason is None:
            reason = _fusable_reason(layer, _kind_of(layer), refs)
        if reason is not None:
            report.left.append(Skipped(full, pattern, reason))
            continue
        plan.append((node, user, layer, full, pattern, fusion))
    if not plan:
        return
    for node, user, layer, full, pattern, fusion in plan:
        user.replace_all_uses_with(node)
        graph.erase_node(user)
    graph.lint()
    forward = _compile_forward(graph, type(m))
    for node, user, layer, full, pattern, fusion in plan:
        _swap_to_fused(layer, fusion)
        report.replaced.append(Replacement(full, pattern, fusion.act, fusion.alpha, fusion.gain, "fx",
                                           f"{_node_label(user)} in {what}"))
    _install_forward(m, forward)


def _node_label(node: torch.fx.Node) -> str:
    if node.op == "call_method":
        return f".{node.target}()"
    if node.op == "call_module":
        return f"module {node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", str(target))
    if module.startswith("torch.nn.functional"):
        return f"F.{name}"
    return f"torch.{name}"


def _is_user_module(m: nn.Module) -> bool:
    """A module whose forward is user code (not torch's, not a container, not already rewritten)."""
    if type(m) in (nn.Sequential, nn.ModuleList, nn.ModuleDict) or is_fused(m):
        return False
    if getattr(type(m), "_fastgan_fx", False) or parametrize.is_parametrized(m):
        return False
    forward = getattr(type(m), "forward", None)
    module = getattr(forward, "__module__", "") or ""
    return not module.startswith("torch.")


def _fx_pass(model: nn.Module, refs: Counter, report: AccelerateReport, batch_norm: bool) -> None:
    for name, m in list(model.named_modules()):
        if _is_user_module(m):
            _fx_module(name, m, refs, report, batch_norm)


# ============================================================================= the report of what is left

_COUNTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.ELU, nn.SELU, nn.Softplus, nn.PReLU,
                nn.GELU, nn.Hardtanh, nn.ReLU6, nn.Mish, nn.Softsign, nn.Hardswish, nn.Hardsigmoid)


_NO_FUSED_FORM = {
    nn.SyncBatchNorm: "cross-process batch statistics: no fused form",
    nn.GroupNorm: "no fused form (its statistics groups span several channels: they do not fit the batch-norm "
                  "kernel's per-channel layout)",
    nn.LayerNorm: "no fused form (its affine map is per element, not per channel)",
    nn.PReLU: "no fused form (its slope is a learned parameter; fastgan's lrelu slope is a constant)",
}


def _default_reason(m: nn.Module) -> str:
    for cls, reason in _NO_FUSED_FORM.items():
        if isinstance(m, cls):
            return reason
    if _kind_of(m) is not None:
        return "no supported activation follows it (in an nn.Sequential, or on its output in a traced forward)"
    if isinstance(m, _ACTIVATIONS):
        return "it does not follow a fusable layer"
    return f"fastgan has no fused form of {type(m).__name__}"


def _report_unfused(model: nn.Module, rep: AccelerateReport) -> None:
    """Add every conv / linear / norm / activation module still running torch's code to ``rep.left``
    (those a pass already explained keep that reason), and count the coverage."""
    explained = {s.name for s in rep.left}
    fused = total = 0
    for name, m in model.named_modules():
        if isinstance(m, FoldedActivation) or (isinstance(m, nn.Identity) and not isinstance(m, _COUNTED)):
            continue
        counted = isinstance(m, _COUNTED)
        total += counted
        if is_fused(m):
            fused += counted
        elif (counted or isinstance(m, _ACTIVATIONS)) and name not in explained:
            rep.left.append(Skipped(name, _label(m), _default_reason(m)))
    rep.coverage = (fused, total)


def _shared_outside(model: nn.Module) -> list[str]:
    """Qualified names of submodules that a module outside ``model`` also holds as a child."""
    import gc

    inside = {id(m) for m in model.modules()}
    owners = {}  # id(_modules dict) -> owning module, for every live module
    for obj in gc.get_objects():
        if issubclass(type(obj), nn.Module):  # type(), not isinstance: weak proxies and lazy objects
            owners[id(obj._modules)] = obj
    shared = []
    for name, m in model.named_modules():
        if not name:
            continue
        for ref in gc.get_referrers(m):
            owner = owners.get(id(ref)) if isinstance(ref, dict) else None
            if owner is not None and id(owner) not in inside:
                shared.append(name)
                break
    return shared


# ============================================================================= restore

def restore(model: nn.Module) -> nn.Module:
    """The exact inverse of :func:`accelerate`, in place: every fused module becomes its own torch
    class again, every folded activation returns to its slot, every forward rewritten by fx is
    the class's own again. Returns ``model``. Use it before tools that need torch's own modules
    (``torch.jit.script``, ONNX export, a quantizer) or to compare against the original."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"restore expects a torch.nn.Module, got {type(model).__name__}")
    for parent in list(model.modules()):
        for slot, child in list(parent._modules.items()):
            if isinstance(child, FoldedActivation):
                parent._modules[slot] = child.act
    for m in model.modules():
        cls = type(m)
        if is_fused(m):
            # Parametrized<Fused<Base>> -> the Parametrized<Base> it was made from; Fused<Base> -> Base
            m.__class__ = cls.__dict__.get("_fastgan_unfused", cls._fastgan_base)
            for attr in ("_fastgan_fusion", "bn_partials", *_EPILOGUE):
                m.__dict__.pop(attr, None)
        elif getattr(cls, "_fastgan_fx", False):
            m.__class__ = cls._fastgan_fx_base
    model.__dict__.pop("fastgan_report", None)
    return model


# ============================================================================= entry point

def _signature(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def accelerate(model: nn.Module, inplace: bool = True, dtype: torch.dtype | None = None, report: bool = False,
               fx: bool = True, batch_norm: bool = True):
    """Fuse the convolution/batch-norm + activation patterns of ``model`` into fastgan's ops.

    Args:
        model: any ``torch.nn.Module`` (a TypeError otherwise).
        inplace: default True: rewrite ``model`` itself and return it (its modules and parameters
            keep their identity: an optimizer built before keeps training it, modules shared with
            other models stay shared). ``inplace=False``: rewrite and return a deep copy, which has
            parameters of its own (an optimizer built on the original does not train the copy; the
            report lists modules the copy stopped sharing with other objects).
        dtype: optionally cast the (copied) model to this floating dtype first (``model.to(dtype)``).
        report: also return the :class:`AccelerateReport` (``(model, report)``).
        fx: also rewrite user forwards with torch.fx (default True); False: Sequential only.
        batch_norm: fuse ``BatchNorm2d`` + activation (default True; differentiable twice, like
            torch's); False keeps torch's batch norm.

    Returns:
        The accelerated model, or ``(model, report)`` when ``report=True``. The report is also
        attached as ``model.fastgan_report``; ``print(report)`` lists every fused pattern
        (qualified name, pattern, act/alpha/gain) and everything left with its reason.

    The returned model computes what the original computes (same outputs and gradients up to
    float rounding, in train and eval mode), and its ``state_dict`` has the same keys and
    shapes, so checkpoints load in both directions. See the module docstring for the
    patterns, the supported activations and the design.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"accelerate expects a torch.nn.Module, got {type(model).__name__}")
    for flag, value in (("inplace", inplace), ("report", report), ("fx", fx), ("batch_norm", batch_norm)):
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool, got {type(value).__name__}")
    if dtype is not None and (not isinstance(dtype, torch.dtype) or not dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating-point torch.dtype or None, got {dtype!r}")
    original = model
    copied = []
    if not inplace:
        copied = _shared_outside(model)
        model = copy.deepcopy(model)
    if dtype is not None:
        model = model.to(dtype)
    before = _signature(model)
    rep = AccelerateReport(copied=copied)
    refs = _reference_counts(model)
    _sequential_pass(model, refs, rep, batch_norm)
    _conv_batch_norm_pass(model, refs, rep, batch_norm)
    if fx:
        _fx_pass(model, refs, rep, batch_norm)
    _report_unfused(model, rep)
    after = _signature(model)
    if after != before:  # never expected: the rewrite only swaps classes and activation slots
        changed = sorted(set(before) ^ set(after)) or [k for k in before if before[k] != after.get(k)]
        if inplace:
            raise RuntimeError(f"fastgan.accelerate changed the state_dict (keys {changed[:5]}); the model was "
                               "modified in place and is left in that state")
        model = copy.deepcopy(original)
        if dtype is not None:
            model = model.to(dtype)
        rep = AccelerateReport(left=[Skipped("", "all rewrites", f"reverted: the state_dict would change "
                                                                  f"(keys {changed[:5]})")])
    model.fastgan_report = rep
    return (model, rep) if report else model

