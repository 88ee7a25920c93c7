"""StyleGAN2's training recipe on the Trainer's loop (``TrainConfig(model="stylegan2")``).

Per iteration (one optimiser step per network, the regularisers added to its loss):
  D step: loss = softplus(D(fake)) + softplus(-D(real))   (non-saturating logistic, ``loss="ns"``)
          + every ``reg_interval``-th (16) D step: R1 = gamma * interval / 2 * mean ||dD(real)/dreal||^2,
          gamma by default 0.0002 * R^2 / batch (NVlabs' heuristic); D runs once on the real batch.
          ``penalty="r1+r2"`` (the R3GAN recipe): R1 + R2 (the same on the fake batch) on every D step,
          each pass's logits reused for the loss.
  G step: loss = softplus(-D(G(z)))
          + every ``pl_interval``-th (4) G step: the path-length penalty on batch // pl_batch_shrink samples,
            weight pl_weight * pl_interval:
                J = d(sum(G(w) * y)) / dw,  y ~ N(0, I) / sqrt(H W);   l = sqrt(mean_layers ||J||^2)
                a <- a + pl_decay * (mean(l) - a);                    P = mean (l - a)^2
          (its input gradient is taken inside ``no_weight_gradients()``, as R1's).
  Style mixing: each generated image takes, with probability ``style_mixing`` (0.9), the ws of a
  second latent from a random layer on (per sample, drawn on the device: no host sync).
  w_avg (the mapping network's, for truncation) follows the D step's latents.
  EMA: G_ema <- beta G_ema + (1 - beta) G, beta = 0.5 ** (batch / h), the half-life
  h = ema_kimg * 1000 images, ramped up as h = min(h, images_seen * ema_rampup).
Class-conditional (``conditional``): c = one_hot(label) feeds G's mapping network (both
latents of a style mix, and the path-length batch) and D's projection; labels as in the Trainer.
Augmentation: D sees every real and fake batch (G's loss included) through ``augment.diff_augment``
(``augment="diffaug"``) or ADA's pipeline ``ada.ada_augment`` (``augment="ada"``), whose
probability p ``ada.AdaController`` adjusts from the D steps' real logits (every 4 D steps:
p += sign(mean(sign(D(real))) - ada_target) * batch * 4 / (ada_kimg * 1000), clamped to [0, 1]);
R1 is taken through either. p and the controller's accumulators are checkpointed.
Precision: with ``amp`` (CUDA) the top 4 resolutions of G and D run in bfloat16 with the conv
clamp 256 (the models do it per block; no autocast).
CUDA graphs (``cuda_graphs``): the D step, the D step with lazy R1, the G step and the G step
with lazy path length are four graphs (R1 + R2 on every step: one D graph), each step's
regularisers captured with it; ADA then runs in its capturable form (``ada`` module doc: p on
the device, the maximum padding). A conditional run warns and runs eager steps.
"""
from __future__ import annotations

import contextlib
import math

import torch

from .. import functional as FG
from ..functional.gradfix import no_weight_gradients
from ..models.stylegan2 import build_stylegan2
from . import distributed as dist_util
from .ada import AdaController, ada_augment
from .augment import diff_augment
from .checkpoint import CheckpointError
from .config import STYLEGAN2_RESOLUTIONS
from .ema import ema_update_
from .trainer import Trainer, save_image_grid

__all__ = ["StyleGAN2Trainer", "ema_half_life_beta", "BF16_RESOLUTIONS"]

BF16_RESOLUTIONS = 4  # with amp: the top 4 resolutions of G and D in bfloat16 (NVlabs: fp16 in the top 4)


def ema_half_life_beta(batch: int, images_seen: int, ema_kimg: float, ema_rampup: float | None) -> float:
    """The EMA decay whose half-life is ``ema_kimg`` thousand images (ramped up), for one batch."""
    nimg = ema_kimg * 1000
    if ema_rampup is not None:
        nimg = min(nimg, images_seen * ema_rampup)
    return 0.5 ** (batch / max(nimg, 1e-8))


class StyleGAN2Trainer(Trainer):
    """The Trainer with StyleGAN2's models and recipe (see the module doc)."""

    resolutions = STYLEGAN2_RESOLUTIONS
    stat_names = (Trainer.stat_names[0], Trainer.stat_names[1] + ("pl_penalty", "pl_mean"))

    def _build_models(self):
        cfg = self.cfg
        self.pl_mean = torch.zeros((), device=self.device)  # the path lengths' running mean (checkpointed)
        self._update_w_avg = False
        self.ada = None  # ADA's probability controller (augment="ada")
        if cfg.augment == "ada":
            self.ada = AdaController(cfg.batch_size, cfg.ada_target, cfg.ada_kimg, cfg.ada_p, device=self.device,
                                     reduce=lambda t: dist_util.sum_over_ranks_(t, self.dist),
                                     capturable=cfg.cuda_graphs)  # no host reads (also in an eager fallback)
        return build_stylegan2(cfg.resolution, cfg.z_dim, cfg.z_dim, self.n_classes, cfg.channel_base,
                               cfg.channel_max, cfg.mapping_layers, num_bf16_res=BF16_RESOLUTIONS if self.amp else 0,
                               fused=cfg.fused)

    def _autocast(self):
        return contextlib.nullcontext()  # the models choose each block's precision

    def ema_beta(self) -> float:
        cfg = self.cfg
        return ema_half_life_beta(cfg.batch_size, self.step * cfg.batch_size * cfg.n_critic, cfg.ema_kimg,
                                  cfg.ema_rampup)

    def log_fields(self, step: int, step_s: float) -> dict:
        """kimg (thousands of real images shown to D) and seconds per kimg of the last steps."""
        per_step = self.cfg.batch_size * self.cfg.n_critic
        out = {"kimg": step * per_step / 1000, "s_per_kimg": step_s * 1000 / per_step if step_s > 0 else None}
        if self.ada is not None:
            out["augment_p"] = self.ada.p
        return out

    def progress_fields(self, rec: dict) -> dict:
        out = {"kimg": f"{rec['kimg']:.3f}", "pl": f"{rec['pl_penalty']:.3g}"}
        if "penalty" in rec:  # only records with a step that computed it carry the penalty
            out["r1"] = f"{rec['penalty']:.3g}"
        if rec.get("s_per_kimg") is not None:
            out["s_kimg"] = f"{rec['s_per_kimg']:.1f}"
        if "augment_p" in rec:
            out["p"] = f"{rec['augment_p']:.3f}"
        return out

    # ------------------------------------------------------------------ generation

    def _cond(self, labels: torch.Tensor) -> torch.Tensor:
        """StyleGAN2's c: the one-hot labels [N, n_classes]."""
        return torch.nn.functional.one_hot(labels, self.n_classes).to(torch.float32)

    def _ws(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        """ws [n, num_ws, w_dim] with per-sample style mixing (both latents of the class ``labels``)."""
        G, cfg = self.G, self.cfg
        c = None if labels is None else self._cond(labels)
        ws = G.mapping(self._z(n), c, update_emas=self._update_w_avg)
        if cfg.style_mixing > 0:
            ws2 = G.mapping(self._z(n), c)
            mix = torch.rand(n, device=self.device, generator=self.noise) < cfg.style_mixing
            cutoff = torch.randint(1, G.num_ws, (n,), device=self.device, generator=self.noise)
            layer = torch.arange(G.num_ws, device=self.device)
            take2 = (mix[:, None] & (layer[None] >= cutoff[:, None]))[:, :, None]
            ws = torch.where(take2, ws2, ws)
        return ws

    def _fake(self, n: int, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.G.synthesis(self._ws(n, labels), generator=self.noise)

    def _path_length(self, n: int) -> torch.Tensor:
        """The path-length penalty P (module doc) on ``n // pl_batch_shrink`` samples; updates pl_mean."""
        cfg = self.cfg
        m = max(n // cfg.pl_batch_shrink, 1)
        ws = self._ws(m, self._draw_labels(m))
        with no_weight_gradients():
            img = self.G.synthesis(ws, generator=self.noise)
            y = torch.randn(img.shape, device=self.device, generator=self.noise) / math.sqrt(img[0, 0].numel())
            (grad,) = torch.autograd.grad((img * y).sum(), ws, create_graph=True)
        lengths = grad.square().sum(dim=2).mean(dim=1).sqrt()
        mean = self.pl_mean.lerp(lengths.mean(), cfg.pl_decay)
        self.pl_mean.copy_(mean.detach())
        return (lengths - mean).square().mean()

    # ------------------------------------------------------------------ steps

    def _disc(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """D on (augmented, with ``augment`` "diffaug" or "ada") images (of the classes ``c``, one-hot)."""
        if self.cfg.augment == "diffaug":
            x = diff_augment(x, self.noise)
        elif self.cfg.augment == "ada":
            x = ada_augment(x, self.ada.p_arg, self.noise, fused=self.cfg.fused)  # fused=False: F.grid_sample
        return self.D(x) if c is None else self.D(x, c)

    def _critic(self, labels: torch.Tensor | None):
        """``_disc`` as a function of the image alone (the labels fixed)."""
        if labels is None:
            return self._disc
        c = self._cond(labels)
        return lambda x: self._disc(x, c)

    def _d_update(self, real, r1, set_to_none=True, labels=None):
        cfg = self.cfg
        with self._ops():
            n = real.shape[0]
            self.D.requires_grad_(True)
            fake_labels = self._draw_labels(n) if labels is not None else None
            self._update_w_avg = True  # w_avg follows the latents of the D step
            try:
                with torch.no_grad():
                    fake = self._fake(n, fake_labels).to(real.dtype)
            finally:
                self._update_w_avg = False
            d_real, d_fake = self._critic(labels), self._critic(fake_labels)
            penalty = None
            fake_logits = None
            if cfg.penalty == "r1+r2":  # every step: R1 on the real batch, R2 on the fake one
                r1_term, real_logits = FG.gradient_penalty(d_real, real, kind="r1", gamma=cfg.effective_gamma,
                                                           return_logits=True)
                r2_term, fake_logits = FG.gradient_penalty(d_fake, real, fake, kind="r2",
                                                           gamma=cfg.effective_gamma, return_logits=True)
                penalty = r1_term + r2_term
            elif r1:  # through the augmentation: the gradient is with respect to the un-augmented image
                gamma = FG.lazy_regularization(cfg.effective_gamma, cfg.reg_interval)
                penalty, real_logits = FG.gradient_penalty(d_real, real, kind="r1", gamma=gamma,
                                                           return_logits=True)
            else:
                real_logits = d_real(real)
            if fake_logits is None:
                fake_logits = d_fake(fake)
            if self.ada is not None:  # after both batches: an adjusted p applies from the next pass on
                self.ada.accumulate(real_logits)
            return self._d_loss_step(real_logits, fake_logits, penalty, set_to_none)

    def _pl_due(self) -> bool:
        return self.cfg.pl_weight > 0 and self.step % self.cfg.pl_interval == 0

    # ------------------------------------------------------------------ CUDA graphs

    @property
    def graph_kinds(self) -> tuple[str, ...]:
        """The D kinds (``Trainer.graph_kinds``), "g" (G step + EMA) and "g_pl" (with lazy path length)."""
        cfg = self.cfg
        g = ("g",) if cfg.pl_weight == 0 else ("g_pl",) if cfg.pl_interval == 1 else ("g", "g_pl")
        return self._d_graph_kinds() + g

    def g_graph_kind(self) -> str:
        return "g_pl" if self._pl_due() else "g"

    def _g_update(self, n: int, set_to_none: bool = True) -> dict:
        cfg = self.cfg
        with self._ops():
            self.D.requires_grad_(False)
            labels = self._draw_labels(n)
            fake_logits = self._critic(labels)(self._fake(n, labels))
            loss = FG.g_loss(fake_logits.float(), kind=cfg.loss)
            pl = torch.zeros((), device=self.device)
            total = loss
            if self._pl_due():
                pl = self._path_length(n)
                total = loss + pl * (cfg.pl_weight * cfg.pl_interval)
            self.opt_g.zero_grad(set_to_none=set_to_none)
            total.backward()
            dist_util.average_gradients_(self.G.parameters(), self.dist)
            self.opt_g.step()
            dist_util.broadcast_buffers_(self.G, self.dist)
            self.D.requires_grad_(True)
            ema_update_(self.G_ema, self.G, self._ema_decay)
            return {"g_loss": loss.detach(), "pl_penalty": pl.detach(), "pl_mean": self.pl_mean.clone()}

    # ------------------------------------------------------------------ state and samples

    def state_dict(self, rng_per_rank=None) -> dict:
        state = super().state_dict(rng_per_rank)
        state["pl_mean"] = self.pl_mean.detach().cpu().clone()
        if self.ada is not None:
            state["ada"] = self.ada.state_dict()
        return state

    def _load_state(self, state: dict, path: str) -> None:
        super()._load_state(state, path)
        self.pl_mean.copy_(torch.as_tensor(state.get("pl_mean", 0.0), dtype=torch.float32))
        if self.ada is not None and "ada" in state:
            try:
                self.ada.load_state_dict(state["ada"])
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(f"{path}: malformed ada entry ({type(exc).__name__}: {exc})") from None

    def _eval_forward(self, z: torch.Tensor, noise_seed: int) -> torch.Tensor:
        """No truncation; the noise inputs from a generator of their own (not the trainer's)."""
        noise = torch.Generator(device=self.device).manual_seed(noise_seed)
        return self.G_ema(z, noise_mode="random", generator=noise)

    def sample(self, path: str) -> torch.Tensor:
        z, labels = self.sample_inputs()
        with torch.no_grad(), self._ops():
            images = self.G_ema(z, None if labels is None else self._cond(labels),
                                truncation_psi=self.cfg.truncation_psi, noise_mode="const")
        save_image_grid(images, path, nrow=8)
        return images


Trainer.model_trainers["stylegan2"] = StyleGAN2Trainer
