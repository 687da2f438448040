"""Critic networks for the variational losses. A critic maps a denoiser output to a logit V
(one per sample, or one per patch); the activation g_f is applied by the loss, not here.

As in the official code, the critic sees denoiser outputs only: P is the frozen model's output
for the anchor, Q the trained model's output for the target, on the same x_t.
"""
from __future__ import annotations

import torch
from torch import nn


class MLPCritic(nn.Module):
    """For vector outputs (B, D): an MLP with spectral norm on its hidden layers (as the official
    patch critic uses), giving one logit per sample.

    ``context_dim`` > 0 makes it conditional: ``critic(y, x_t, t)`` also sees the noisy input x_t
    (flattened) and the timestep t (as a fraction of the schedule), so it compares the two reverse
    steps at the same x_t instead of only the marginal distributions of the outputs.
    """

    def __init__(self, in_dim: int, hidden: int = 64, depth: int = 2, context_dim: int = 0):
        super().__init__()
        if in_dim < 1 or hidden < 1 or depth < 1 or context_dim < 0:
            raise ValueError(f"in_dim, hidden and depth must be >= 1 and context_dim >= 0, got "
                             f"{in_dim}, {hidden}, {depth}, {context_dim}")
        self.context_dim = context_dim
        layers, width = [], in_dim + context_dim + (1 if context_dim else 0)
        for _ in range(depth):
            layers += [nn.utils.parametrizations.spectral_norm(nn.Linear(width, hidden)),
                       nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor, x_t=None, t=None) -> torch.Tensor:
        parts = [y.flatten(1)]
        if self.context_dim:
            if x_t is None or t is None:
                raise ValueError("this critic is conditional (context_dim > 0): call critic(y, x_t, t)")
            parts += [x_t.flatten(1).to(y.dtype), t.reshape(-1, 1).to(y.dtype)]
        return self.net(torch.cat(parts, dim=1)).squeeze(-1)


class WithContext(nn.Module):
    """Binds (x_t, t) to a conditional critic for one step, so the losses can call critic(y)."""

    def __init__(self, critic: nn.Module):
        super().__init__()
        self.critic = critic
        self.context: tuple = ()

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.critic(y, *self.context)


class PatchCritic(nn.Module):
    """For images or latents (B, C, H, W): a small convolutional critic with spectral norm (as the
    official patch critic), one logit per patch, (B, 1, H', W'). ``conditional=True`` makes it see the
    noisy input x_t (same shape as y) and the timestep t (a constant channel) beside y."""

    def __init__(self, channels: int, hidden: int = 64, depth: int = 2, conditional: bool = True):
        super().__init__()
        if channels < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"channels, hidden and depth must be >= 1, got {channels}, {hidden}, {depth}")
        self.conditional = conditional
        width = 2 * channels + 1 if conditional else channels
        layers = []
        for i in range(depth):
            stride = 2 if i < depth - 1 else 1
            layers += [nn.utils.parametrizations.spectral_norm(nn.Conv2d(width, hidden, 3, stride, 1)),
                       nn.LeakyReLU(0.2)]
            width = hidden
        layers.append(nn.Conv2d(width, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, y: torch.Tensor, x_t=None, t=None) -> torch.Tensor:
        if self.conditional:
            if x_t is None or t is None:
                raise ValueError("this critic is conditional: call critic(y, x_t, t)")
            t_map = t.reshape(-1, 1, 1, 1).to(y.dtype).expand(y.shape[0], 1, *y.shape[2:])
            y = torch.cat([y, x_t.to(y.dtype), t_map], dim=1)
        return self.net(y)
