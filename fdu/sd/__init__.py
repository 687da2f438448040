"""Stable Diffusion: load any SD 1.x/2.x diffusers pipeline (or build a tiny one), build prompts and
anchor images, unlearn through :func:`fdu.unlearn.unlearn`, evaluate with CLIP and KID."""
from .pipeline import ModelNotAvailableError, build_tiny_clip, build_tiny_pipeline, load_pipeline
from .prompts import build_prompts
from .train import PARAMETER_GROUPS, RunConfig, load_unlearned, run, unlearning_task

__all__ = ["ModelNotAvailableError", "build_tiny_clip", "build_tiny_pipeline", "load_pipeline", "build_prompts",
           "PARAMETER_GROUPS", "RunConfig", "load_unlearned", "run", "unlearning_task"]
