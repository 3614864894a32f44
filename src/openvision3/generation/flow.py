"""Flow matching as RAE trains and samples it [C]: a linear path, a velocity target, logit-normal
times with RAE's dimension-dependent shift, and Euler / Heun ODE samplers with guidance.

Convention: t = 0 is data, t = 1 is noise.
    x_t = (1 - t) x + t eps,   eps ~ N(0, I),   target velocity v = dx_t/dt = eps - x
Training time: t = sigmoid(n), n ~ N(mean, std) (logit-normal(0, 1)), then the shift
    t' = s t / (1 + (s - 1) t),   s = sqrt(N * D / 4096)
(N tokens x D channels): a larger space keeps more signal at a given noise level, so its times are
pushed towards the noise end [C]. Sampling integrates dx/dt = v from t = 1 to 0 on a uniform grid
shifted the same way, with classifier-free guidance v = v_u + w (v_c - v_u) applied only while t
lies in the guidance interval [C].
"""
from __future__ import annotations

import math

import torch

from .config import FlowConfig


def shift_factor(num_tokens: int, token_dim: int, base: int = 4096) -> float:
    """[C] RAE: s = sqrt(N * D / base) (16 x 16 x 768 DINOv2 tokens -> 6.93)."""
    return math.sqrt(num_tokens * token_dim / base)


def time_shift(t: torch.Tensor, s: float) -> torch.Tensor:
    """t' = s t / (1 + (s - 1) t): identity at s = 1, keeps 0 and 1 fixed, s > 1 moves t towards 1."""
    return s * t / (1 + (s - 1) * t)


def sample_times(n: int, cfg: FlowConfig, shift: float, device=None, generator=None) -> torch.Tensor:
    if cfg.time_dist == "logit_normal":
        t = torch.sigmoid(torch.randn(n, device=device, generator=generator) * cfg.logit_std + cfg.logit_mean)
    else:
        t = torch.rand(n, device=device, generator=generator)
    return time_shift(t, shift)


def interpolate(x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x.ndim - 1)))
    return (1 - t) * x + t * noise


def flow_loss(model, x: torch.Tensor, y: torch.Tensor, cfg: FlowConfig, shift: float) -> torch.Tensor:
    """Mean squared error between the predicted and the true velocity at random times."""
    t = sample_times(x.shape[0], cfg, shift, device=x.device)
    noise = torch.randn_like(x)
    v = model(interpolate(x, noise, t).to(x.dtype), t, y)
    return ((v.float() - (noise - x).float()) ** 2).mean()


def guided_velocity(model, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, null_class: int,
                    scale: float = 1.0, interval=(0.0, 1.0)) -> torch.Tensor:
    """v_u + scale (v_c - v_u) where t (one value for the batch) lies in ``interval``, else v_c.
    Conditional and unconditional passes share one batch."""
    t0 = float(t.flatten()[0])
    if scale == 1.0 or not (interval[0] <= t0 <= interval[1]):
        return model(x, t, y)
    both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, torch.full_like(y, null_class)]))
    cond, uncond = both.chunk(2)
    return uncond + scale * (cond - uncond)


def time_grid(steps: int, shift: float, device=None) -> torch.Tensor:
    """steps + 1 times from 1 (noise) down to 0, uniform then shifted like the training times."""
    return time_shift(torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=torch.float64), shift)


@torch.no_grad()
def sample(velocity, noise: torch.Tensor, steps: int = 50, shift: float = 1.0, method: str = "euler") -> torch.Tensor:
    """Integrate dx/dt = velocity(x, t) from t = 1 (``noise``) to t = 0 (data).

    ``velocity(x, t)`` takes t as a (B,) tensor. Euler takes ``steps`` evaluations, Heun about twice
    as many (Heun's correction at every step, the last one included)."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown sampler '{method}'; choose euler or heun")
    grid = time_grid(steps, shift, device=noise.device)
    x = noise
    for t, t_next in zip(grid[:-1], grid[1:]):
        dt = float(t_next - t)
        tb = torch.full((x.shape[0],), float(t), device=x.device)
        v = velocity(x, tb).to(x.dtype)
        if method == "heun":
            x_pred = x + dt * v
            v_next = velocity(x_pred, torch.full_like(tb, float(t_next))).to(x.dtype)
            x = x + dt * 0.5 * (v + v_next)
        else:
            x = x + dt * v
    return x


__all__ = ["shift_factor", "time_shift", "sample_times", "interpolate", "flow_loss", "guided_velocity",
           "time_grid", "sample"]
