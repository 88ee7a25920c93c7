"""The exponential moving average of G's weights that samples are drawn from."""
from __future__ import annotations

import torch


@torch.no_grad()
def ema_update_(ema: torch.nn.Module, model: torch.nn.Module, decay) -> None:
    """ema <- decay * ema + (1 - decay) * model for parameters; buffers (BN statistics) copied.

    ``decay`` is a float or a 0-d tensor on the parameters' device (a tensor lets a CUDA graph
    replay the update with a decay that changes between steps)."""
    e_params, m_params = list(ema.parameters()), list(model.parameters())
    if isinstance(decay, torch.Tensor):  # ema <- model + decay * (ema - model): three launches, in place
        torch._foreach_sub_(e_params, m_params)
        torch._foreach_mul_(e_params, decay)
        torch._foreach_add_(e_params, m_params)
    else:
        torch._foreach_lerp_(e_params, m_params, 1.0 - decay)
    e_bufs, m_bufs = list(ema.buffers()), list(model.buffers())
    if e_bufs:
        torch._foreach_copy_(e_bufs, m_bufs)  # one launch for every buffer


def ema_decay_at(step: int, decay: float) -> float:
    """The EMA decay for G step ``step`` (0-based): min(decay, (1 + step) / (10 + step)).

    Ramping up lets the average follow G early on; a fixed 0.999 would keep G_ema within a
    few hundred steps of its random initialisation, and early sample grids would show nothing."""
    return min(decay, (1.0 + step) / (10.0 + step))
