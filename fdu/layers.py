"""Building blocks shared by the toy and digits denoisers."""
from __future__ import annotations

import math

import torch


def timestep_embedding(t: torch.Tensor, dim: int = 32) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: dim/2 sines and dim/2 cosines of t at
    frequencies 1000^(-k / (dim/2)), k = 0 .. dim/2 - 1."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


CROSS_ATTENTION_KV = (".attn2.to_k.", ".attn2.to_v.")


def is_cross_attention_kv(name: str) -> bool:
    """Whether a parameter name (diffusers' naming, which the digits model follows) belongs to a
    cross-attention key or value projection: what the official code trains by default."""
    return any(part in name for part in CROSS_ATTENTION_KV)


def is_attention(name: str) -> bool:
    """Whether a parameter belongs to a self- (attn1) or cross-attention (attn2) block."""
    return ".attn1." in name or ".attn2." in name


def is_cross_attention(name: str) -> bool:
    """Whether a parameter belongs to a cross-attention block (attn2: its query, key, value and output
    projections): ESD-x's parameters (Gandikota et al., 2023)."""
    return ".attn2." in name
