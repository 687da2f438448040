"""fdu: f-divergence unlearning for diffusion models (a companion to Novello et al., ICML 2026)."""
from .divergences import DIVERGENCES, Divergence, alpha_divergence, get_divergence, register_divergence
from .gaussian import gaussian_divergence
from .losses import closed_form_loss, critic_loss, generator_loss, variational_losses

__version__ = "0.1.0"
__all__ = ["DIVERGENCES", "Divergence", "alpha_divergence", "get_divergence",
           "register_divergence", "gaussian_divergence", "closed_form_loss", "critic_loss",
           "generator_loss", "variational_losses"]
