"""The model families ``fdu.sd`` unlearns: what differs between SD 1.x/2.x, SDXL, SD3 and FLUX, in one place.

========  =============================  =====================  ==================================================
family    diffusers pipeline             denoiser (output)      conditioning the denoiser reads
========  =============================  =====================  ==================================================
``sd``    StableDiffusionPipeline        UNet (ε or v)          one CLIP encoder's last hidden states
``sdxl``  StableDiffusionXLPipeline      UNet (ε or v)          two CLIP encoders' penultimate states, the second's
                                                                pooled embedding, and the time ids (size, crop)
``sd3``   StableDiffusion3Pipeline       MMDiT (flow: v)        two CLIP encoders (+ T5, optional: zeros without
                                                                it), pooled embeddings of both
``flux``  FluxPipeline                   MMDiT (flow: v)        T5 states, CLIP pooled embedding, packed 2x2
                                                                latent patches with their position ids, and the
                                                                guidance embedding (FLUX.1-dev)
========  =============================  =====================  ==================================================

The unlearning loop sees none of this: :class:`FamilyDenoiser` is ``denoiser(x_t, t, prompts)`` for every
family, with x_t an unpacked latent (B, C, h, w) and t an integer timestep of the family's training schedule
(:func:`training_schedule`: diffusers' DDPM schedule for UNets, :class:`fdu.flow.FlowSchedule` for
flow-matching models, whose δ² per step :mod:`fdu.flow` derives). Prompts are encoded exactly as the
family's pipeline encodes them (its own ``encode_prompt``), so training sees what sampling sees.

Parameter groups (``GROUPS``, the ``--params`` of ``python -m fdu unlearn``) name tensors of each
architecture; one that an architecture does not have is an error, not an empty selection.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

#: family -> the diffusers pipeline class
FAMILIES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
            "sd3": "StableDiffusion3Pipeline", "flux": "FluxPipeline"}
FLOW_FAMILIES = ("sd3", "flux")
#: the guidance value FLUX.1-dev's guidance embedding gets during training (its pipeline's default)
FLUX_GUIDANCE = 3.5

UNET_GROUPS = {
    "kv": "the cross-attention key/value projections: unet.*.attn2.to_k, unet.*.attn2.to_v (official)",
    "attention": "every attention projection of the UNet (attn1 and attn2: to_q, to_k, to_v, to_out)",
    "cross_attention": "every parameter of the cross-attention blocks unet.*.attn2 (ESD-x)",
    "non_cross_attention": "every UNet parameter outside attn2 (ESD-u)",
    "unet": "the whole UNet",
}
TRANSFORMER_GROUPS = {
    "kv": "the text stream's key/value projections of the joint-attention blocks: transformer.transformer_blocks"
          ".*.attn.add_k_proj, .add_v_proj (FLUX's single-stream blocks have none)",
    "attention": "every attention projection of the transformer (*.attn.*, *.attn2.*)",
    "transformer": "the whole transformer",
}
EMBEDDING = "the token embedding of every text encoder"
#: every group name, in the order --help lists them
PARAMETER_GROUPS = ("kv", "attention", "cross_attention", "non_cross_attention", "unet", "transformer", "embedding")


class UnsupportedFamilyError(ValueError):
    """A pipeline class ``fdu.sd`` does not unlearn."""


def _supported() -> str:
    return ", ".join(f"{k} ({v})" for k, v in FAMILIES.items())


def family_of_class(class_name: str) -> str:
    """The family of a diffusers pipeline class name; :class:`UnsupportedFamilyError` naming the supported ones."""
    for family, name in FAMILIES.items():
        if class_name == name:
            return family
    raise UnsupportedFamilyError(f"the pipeline class {class_name!r} is not one fdu.sd unlearns; it takes "
                                 f"{_supported()}")


def family_of(pipe) -> str:
    return family_of_class(type(pipe).__name__)


def check_family(family: str) -> str:
    if family not in FAMILIES:
        raise UnsupportedFamilyError(f"unknown model family {family!r}: fdu.sd takes {_supported()}")
    return family


def read_model_index(folder) -> dict:
    return json.loads((Path(folder) / "model_index.json").read_text())


def pipeline_class(family: str):
    import diffusers

    return getattr(diffusers, FAMILIES[check_family(family)])


def is_flow(family: str) -> bool:
    return family in FLOW_FAMILIES


def denoiser_name(pipe) -> str:
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def denoiser_of(pipe) -> nn.Module:
    return getattr(pipe, denoiser_name(pipe))


def text_encoder_names(pipe) -> list:
    return [n for n in ("text_encoder", "text_encoder_2", "text_encoder_3") if getattr(pipe, n, None) is not None]


def weight_owners(pipe) -> dict:
    """name -> module of everything whose tensors a run may train (denoiser and text encoders)."""
    return {n: getattr(pipe, n) for n in [denoiser_name(pipe), *text_encoder_names(pipe)]}


def groups_of(family: str) -> dict:
    """group -> what it trains, for one family."""
    base = UNET_GROUPS if not is_flow(check_family(family)) else TRANSFORMER_GROUPS
    return {**base, "embedding": EMBEDDING}


def groups_help() -> str:
    unet = "; ".join(f"{k}: {v}" for k, v in UNET_GROUPS.items())
    mmdit = "; ".join(f"{k}: {v}" for k, v in TRANSFORMER_GROUPS.items())
    return (f"what to train. UNets (SD 1.x/2.x, SDXL) — {unet}. MMDiTs (SD3, FLUX) — {mmdit}. Every family — "
            f"embedding: {EMBEDDING}")


def check_group(family: str, group: str):
    """ValueError, naming the family's groups, when ``group`` does not exist in its architecture."""
    if group not in groups_of(family):
        kind = "an MMDiT (SD3, FLUX): its text enters through joint attention" if is_flow(family) else \
            "a UNet (SD 1.x/2.x, SDXL)"
        raise ValueError(f"the parameter group {group!r} does not exist in {family!r}, {kind}; its groups are "
                         f"{', '.join(groups_of(family))}")


def _group_predicate(family: str, group: str):
    from ..layers import is_attention, is_cross_attention, is_cross_attention_kv

    check_group(family, group)
    if not is_flow(family):
        return {"kv": is_cross_attention_kv, "attention": is_attention, "cross_attention": is_cross_attention,
                "non_cross_attention": lambda name: not is_cross_attention(name)}.get(group, lambda name: True)
    return {"kv": lambda name: ".attn.add_k_proj." in name or ".attn.add_v_proj." in name,
            "attention": lambda name: ".attn." in name or ".attn2." in name}.get(group, lambda name: True)


def select(pipe, group: str) -> dict:
    """name -> parameter of ``group`` in the pipeline's denoiser (prefixed "unet." / "transformer.") or
    text encoders ("text_encoder.", ...): marks them trainable and everything else frozen."""
    family = family_of(pipe)
    keep = _group_predicate(family, group)
    owners = weight_owners(pipe)
    for module in owners.values():
        module.requires_grad_(False)
    if group == "embedding":
        chosen = {}
        for name in text_encoder_names(pipe):
            emb = owners[name].get_input_embeddings().weight
            chosen.update({f"{name}.{n}": p for n, p in owners[name].named_parameters() if p is emb})
    else:
        net = denoiser_name(pipe)
        chosen = {f"{net}.{n}": p for n, p in owners[net].named_parameters() if keep(n)}
    if not chosen:
        raise ValueError(f"the parameter group {group!r} selects nothing in this model")
    for p in chosen.values():
        p.requires_grad_(True)
    return chosen


# ---------------------------------------------------------------- latents and schedules

def latent_channels(pipe) -> int:
    """Channels of the unpacked latent (FLUX's transformer reads 2x2 patches: in_channels / 4)."""
    net = denoiser_of(pipe)
    return net.config.in_channels // (4 if family_of(pipe) == "flux" else 1)


def default_size(pipe) -> int:
    """The pipeline's default image size in pixels."""
    scale = getattr(pipe, "vae_scale_factor", 8)
    if getattr(pipe, "unet", None) is not None:
        return pipe.unet.config.sample_size * scale
    return int(getattr(pipe, "default_sample_size", 128)) * scale


def latent_size(pipe, height: int, width: int) -> tuple[int, int]:
    scale = getattr(pipe, "vae_scale_factor", 8)
    if family_of(pipe) == "flux":   # FLUX's latent sides are even (2x2 packing)
        return 2 * (height // (scale * 2)), 2 * (width // (scale * 2))
    return height // scale, width // scale


def training_schedule(pipe, latent_hw: tuple[int, int] | None = None):
    """What x_t is made with, and whose reverse steps δ² compares: a ``DDPMScheduler`` with the pipeline's
    noise schedule and prediction type (UNets), or a :class:`fdu.flow.FlowSchedule` (SD3, FLUX; FLUX's
    size-dependent shift is fixed by ``latent_hw``)."""
    if is_flow(family_of(pipe)):
        from ..flow import FlowSchedule

        seq = None if latent_hw is None else (latent_hw[0] // 2) * (latent_hw[1] // 2)
        return FlowSchedule.from_scheduler(pipe.scheduler, image_seq_len=seq)
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def prediction_type(pipe) -> str:
    if is_flow(family_of(pipe)):
        return "flow"
    return pipe.scheduler.config.get("prediction_type", "epsilon")


def pack(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, h, w) in the shape the pipeline's ``latents=`` argument takes (FLUX: packed)."""
    if family_of(pipe) != "flux":
        return latents
    b, c, h, w = latents.shape
    return pipe._pack_latents(latents, b, c, h, w)


def unpack(pipe, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The pipeline's ``output_type="latent"`` images as (B, C, h, w) (FLUX's are packed)."""
    if family_of(pipe) != "flux":
        return latents
    return pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor)


def _vae_shift(pipe):
    """The VAE's shift_factor (SD3, FLUX), or None (SD 1.x/2.x, SDXL)."""
    return getattr(pipe.vae.config, "shift_factor", None)


def to_vae_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Model latents back to the VAE's own: / scaling_factor (+ shift_factor, SD3 and FLUX)."""
    cfg, shift = pipe.vae.config, _vae_shift(pipe)
    return latents / cfg.scaling_factor + (shift or 0.0)


def from_vae_latents(pipe, z: torch.Tensor) -> torch.Tensor:
    """The VAE's latents to the model's: (z − shift_factor) · scaling_factor (no shift for SD 1.x/2.x, SDXL)."""
    cfg, shift = pipe.vae.config, _vae_shift(pipe)
    return (z - shift) * cfg.scaling_factor if shift else z * cfg.scaling_factor


# ---------------------------------------------------------------- the denoiser

class FamilyDenoiser(nn.Module):
    """``denoiser(x_t, t, prompts)``: the pipeline's denoiser output for the prompts, for any family;
    x_t (B, C, h, w) unpacked, t integer timesteps of ``schedule`` (:func:`training_schedule`). The text
    encoders run without gradients unless one of their tensors is trained."""

    def __init__(self, pipe, schedule=None):
        super().__init__()
        self.family = family_of(pipe)
        self.net_name = denoiser_name(pipe)
        self.owners = nn.ModuleDict(weight_owners(pipe))
        self.pipe = pipe
        self.schedule = schedule

    @property
    def net(self):
        return self.owners[self.net_name]

    def _encode_unique(self, prompts: list) -> dict:
        pipe, device = self.pipe, self.net.device
        if self.family == "sdxl":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            return {"encoder_hidden_states": embeds, "text_embeds": pooled}
        if self.family == "sd3":
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompts, prompt_2=None, prompt_3=None, device=device,
                                                      do_classifier_free_guidance=False)
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled}
        if self.family == "flux":
            embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompts, prompt_2=None, device=device)
            return {"encoder_hidden_states": embeds, "pooled_projections": pooled, "txt_ids": text_ids}
        ids = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        return {"encoder_hidden_states": pipe.text_encoder(ids)[0]}

    def encode(self, prompts) -> dict:
        """The conditioning of each prompt (each distinct prompt encoded once)."""
        position = {p: i for i, p in enumerate(dict.fromkeys(prompts))}
        train_text = any(p.requires_grad for n, m in self.owners.items() if n != self.net_name
                         for p in m.parameters())
        with torch.set_grad_enabled(train_text and torch.is_grad_enabled()):
            cond = self._encode_unique(list(position))
        index = torch.tensor([position[p] for p in prompts], device=self.net.device)
        return {k: (v if k == "txt_ids" else v[index]) for k, v in cond.items()}

    def forward(self, x_t, t, prompts):
        cond = self.encode(list(prompts))
        net, dtype = self.net, self.net.dtype
        cond = {k: (v if k == "txt_ids" else v.to(dtype)) for k, v in cond.items()}
        x = x_t.to(dtype)
        t = t.to(x_t.device)
        if self.family in ("sd", "sdxl"):
            extra = {}
            if self.family == "sdxl":
                h, w = (s * self.pipe.vae_scale_factor for s in x.shape[-2:])
                ids = self.pipe._get_add_time_ids((h, w), (0, 0), (h, w), dtype=dtype,
                                                  text_encoder_projection_dim=self.pipe.text_encoder_2.config.projection_dim)
                extra = {"added_cond_kwargs": {"text_embeds": cond["text_embeds"],
                                               "time_ids": ids.to(x.device).repeat(len(x), 1)}}
            return net(x, t, encoder_hidden_states=cond["encoder_hidden_states"], **extra).sample
        level = self.schedule.model_timestep(t.cpu()).to(x.device)   # 1000 · t_k
        if self.family == "sd3":
            return net(hidden_states=x, timestep=level.to(dtype), encoder_hidden_states=cond["encoder_hidden_states"],
                       pooled_projections=cond["pooled_projections"]).sample
        b, c, h, w = x.shape
        img_ids = self.pipe._prepare_latent_image_ids(b, h // 2, w // 2, x.device, dtype)
        guidance = torch.full((b,), FLUX_GUIDANCE, device=x.device, dtype=torch.float32) \
            if net.config.guidance_embeds else None
        out = net(hidden_states=self.pipe._pack_latents(x, b, c, h, w), timestep=(level / 1000).to(dtype),
                  guidance=guidance, pooled_projections=cond["pooled_projections"],
                  encoder_hidden_states=cond["encoder_hidden_states"], txt_ids=cond["txt_ids"].to(dtype),
                  img_ids=img_ids).sample
        return self.pipe._unpack_latents(out, h * self.pipe.vae_scale_factor, w * self.pipe.vae_scale_factor,
                                         self.pipe.vae_scale_factor)


def describe(pipe) -> dict:
    """What ``--params kv`` trains in a pipeline, and its sizes: for the families table."""
    family = family_of(pipe)
    net = denoiser_of(pipe)
    kv = select(pipe, "kv")
    for p in net.parameters():
        p.requires_grad_(False)
    return {"family": family, "pipeline": FAMILIES[family], "denoiser": type(net).__name__,
            "output": prediction_type(pipe), "denoiser_parameters": sum(p.numel() for p in net.parameters()),
            "text_encoders": [type(getattr(pipe, n)).__name__ for n in text_encoder_names(pipe)],
            "kv_tensors": len(kv), "kv_parameters": sum(p.numel() for p in kv.values()),
            "kv_example": sorted({n.rsplit(".", 2)[-2] for n in kv})}
