"""Stable Diffusion and its successors: load an SD 1.x/2.x, SDXL, SD3 or FLUX diffusers pipeline (or build a
tiny one of each family), build prompts and anchor images, unlearn through :func:`fdu.unlearn.unlearn`,
evaluate with CLIP and KID. What differs between the families lives in :mod:`fdu.sd.families`."""
from .families import FAMILIES, UnsupportedFamilyError
from .pipeline import ModelNotAvailableError, build_tiny_clip, build_tiny_pipeline, load_pipeline
from .prompts import build_prompts
from .tiny import build_tiny_family_pipeline
from .train import PARAMETER_GROUPS, RunConfig, load_unlearned, run, unlearning_task

__all__ = ["FAMILIES", "UnsupportedFamilyError", "ModelNotAvailableError", "build_tiny_clip", "build_tiny_pipeline",
           "build_tiny_family_pipeline", "load_pipeline", "build_prompts", "PARAMETER_GROUPS", "RunConfig",
           "load_unlearned", "run", "unlearning_task"]
