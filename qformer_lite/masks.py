"""The three attention-mask modes of stage 1, as one boolean (B, Q+T, Q+T) matrix.

Rows attend, columns are attended to; True = may attend.

- ``"itc"`` (unimodal): queries see queries, text sees text. Equal to LAVIS's two separate
  passes (a query pass and a text pass).
- ``"itm"`` (bi-directional): everyone sees everyone.
- ``"itg"`` (multimodal causal, UniLM): queries see queries only; text token i sees all
  queries and text tokens 0..i. LAVIS builds it in ``get_extended_attention_mask``.

Padded text columns are closed in every mode; padded rows keep their mode's pattern (their
outputs are never used, and HF/LAVIS treat them the same way).
"""

from __future__ import annotations

import torch

MODES = ("itc", "itm", "itg")


def mode_pattern(mode: str, num_query_tokens: int, text_length: int, device=None) -> torch.Tensor:
    """The mode's visibility pattern without padding: bool (Q+T, Q+T)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    length = num_query_tokens + text_length
    idx = torch.arange(length, device=device)
    col_is_query = (idx < num_query_tokens)[None, :]  # (1, L)
    row_is_query = (idx < num_query_tokens)[:, None]  # (L, 1)
    if mode == "itm":
        return torch.ones(length, length, dtype=torch.bool, device=device)
    if mode == "itc":
        return row_is_query == col_is_query  # block diagonal: [Q->Q, T->T]
    causal = idx[None, :] <= idx[:, None]  # (L, L), column <= row
    return col_is_query | (~row_is_query & causal)  # itg


def build_attention_mask(mode: str, num_query_tokens: int, text_attention_mask: torch.Tensor) -> torch.Tensor:
    """Bool (B, Q+T, Q+T) mask for a joint pass over [queries; text].

    ``text_attention_mask``: (B, T), 1 (or True) for real tokens, 0 for padding.
    """
    if not isinstance(text_attention_mask, torch.Tensor) or text_attention_mask.dim() != 2:
        shape = tuple(text_attention_mask.shape) if isinstance(text_attention_mask, torch.Tensor) else type(text_attention_mask).__name__
        raise ValueError(f"text_attention_mask must have shape (B, T), got {shape}")
    if isinstance(num_query_tokens, bool) or not isinstance(num_query_tokens, int) or num_query_tokens < 0:
        raise ValueError(f"num_query_tokens must be an integer >= 0, got {num_query_tokens!r}")
    batch, text_length = text_attention_mask.shape
    device = text_attention_mask.device
    pattern = mode_pattern(mode, num_query_tokens, text_length, device)  # (L, L)
    key_is_real = torch.cat(
        [torch.ones(batch, num_query_tokens, dtype=torch.bool, device=device), text_attention_mask.bool()], dim=1
    )  # (B, L)
    return pattern[None] & key_is_real[:, None, :]  # (B, L, L)
