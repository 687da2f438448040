"""Unified Concept Editing (UCE; Gandikota et al., 2024): erase concepts by a closed-form edit of the
cross-attention key and value projections, with no training loop.

Each projection W (``attn2.to_k`` and ``attn2.to_v`` of every cross-attention block) sees the text
encoder's hidden states c. UCE asks W to map the embeddings c_i of the concepts to erase to what the
original projection makes of the anchor's embeddings, v_i* = W_old c_i*, to leave the preserved
concepts' embeddings c_j where they were, and (a regulariser, λ) to stay near W_old:

    min_W  Σ_i ‖W c_i − v_i*‖² + s Σ_j ‖W c_j − W_old c_j‖² + λ ‖W − W_old‖²_F
    W = (Σ_i v_i* c_iᵀ + s Σ_j W_old c_j c_jᵀ + λ W_old) (Σ_i c_i c_iᵀ + s Σ_j c_j c_jᵀ + λ I)⁻¹.

Which embeddings stand for a concept is our choice, said here: every token position of the target text
up to its end-of-text token, each mapped to the anchor text's hidden state at the same position (both
padded to the same length), so "van gogh" → "painting" edits the positions a prompt naming the target
fills. The preserved concepts contribute their own token positions. UCE has no divergence and no loop;
``python -m fdu unlearn --method uce`` runs it and writes the same outputs as a trained run.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .layers import is_cross_attention_kv


def token_states(pipe, prompts: Sequence[str], length: int | None = None) -> list[torch.Tensor]:
    """The text encoder's hidden states of each prompt, (n_tokens, d) in float64: its positions up to
    and including the end-of-text token, or the first ``length`` positions when given."""
    tok = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0].double().cpu()
    lengths = tok.attention_mask.sum(1).tolist()
    return [s[: (length or n)] for s, n in zip(states, lengths)]


def edit_pairs(pipe, targets: Sequence[str], anchors: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, C*): the target texts' token states and the anchor texts' at the same positions, stacked
    (rows: one token position each)."""
    if not targets or len(targets) != len(anchors):
        raise ValueError(f"UCE needs one anchor per target, and at least one target; got {len(targets)} "
                         f"targets and {len(anchors)} anchors")
    cs, stars = [], []
    for target, anchor in zip(targets, anchors):
        n = max(len(token_states(pipe, [target])[0]), len(token_states(pipe, [anchor])[0]))
        cs.append(token_states(pipe, [target], n)[0])
        stars.append(token_states(pipe, [anchor], n)[0])
    return torch.cat(cs), torch.cat(stars)


#: the texts a concept is edited through (UCE edits a concept through a few prompts that name it)
TEMPLATES = ("{}", "art by {}", "a painting by {}", "in the style of {}", "a picture of {}")


def concept_texts(target: str, anchor: str, templates: Sequence[str] = TEMPLATES) -> tuple[list, list]:
    """Aligned (target texts, anchor texts): each template filled with the target and with the anchor
    (the empty prompt stays empty)."""
    return ([t.format(target) for t in templates],
            [t.format(anchor) if anchor else "" for t in templates])


def uce_edit(pipe, targets: Sequence[str], anchors: Sequence[str], preserve: Sequence[str] = (), *,
             lam: float = 0.1, preserve_scale: float = 1.0) -> dict:
    """Edit ``pipe.unet``'s cross-attention K/V projections in place (see the module docstring);
    returns {parameter name: new weight}. ``lam`` (λ > 0) keeps W near W_old and the system invertible;
    ``preserve_scale`` (s ≥ 0) weighs the preserved concepts."""
    if not lam > 0:
        raise ValueError(f"lam (UCE's regulariser λ) must be > 0, got {lam}")
    if not preserve_scale >= 0:
        raise ValueError(f"preserve_scale must be >= 0, got {preserve_scale}")
    c, c_star = edit_pairs(pipe, targets, anchors)
    kept = torch.cat(token_states(pipe, preserve)) if preserve else c.new_zeros(0, c.shape[1])
    eye = torch.eye(c.shape[1], dtype=torch.float64)
    gram = c.T @ c + preserve_scale * kept.T @ kept + lam * eye
    edited = {}
    for name, weight in pipe.unet.named_parameters():
        if not (is_cross_attention_kv(name) and name.endswith(".weight")):
            continue
        old = weight.detach().double().cpu()
        rhs = (old @ c_star.T) @ c + preserve_scale * (old @ kept.T) @ kept + lam * old
        new = torch.linalg.solve(gram, rhs.T).T          # rhs @ gram⁻¹ (gram is symmetric)
        with torch.no_grad():
            weight.copy_(new.to(weight.dtype))
        edited["unet." + name] = weight
    if not edited:
        raise ValueError("this UNet has no cross-attention key/value projections (attn2.to_k / attn2.to_v) to edit")
    return edited
