"""Connectors: what turns the frozen image encoder's features into the language model's input.

Every connector here maps image features (B, N, C), the encoder's [CLS] token first, to M
vectors in the language model's input-embedding space (B, M, d_model), the soft prompt that
``ConnectorT5`` puts in front of T5's input (chapter 9 compares them). They differ in M and in how much
they compute:

    LinearProjection     LLaVA: one linear map of every patch                    M = N
    MLPProjection        LLaVA-1.5: linear, GELU, linear, on every patch         M = N
    PooledProjection     DeCo: the patch grid average-pooled to M cells, then an MLP
    PerceiverResampler   Flamingo: M learned latents attend to [patches; latents]
    QFormerProjection    BLIP-2: the Q-Former's M query outputs, then a linear map

The first three read the patch tokens only (LLaVA's ``select_feature="patch"``); the last two
attend to every token, [CLS] included, as BLIP-2 does (Flamingo's NFNet has no [CLS]).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .blip2_t5 import PrefixT5
from .qformer import QFormer


def _patches(image_embeds: torch.Tensor, width: int) -> torch.Tensor:
    if image_embeds.dim() != 3 or image_embeds.shape[-1] != width:
        raise ValueError(f"image_embeds must have shape (B, 1 + N, {width}), got {tuple(image_embeds.shape)}")
    return image_embeds[:, 1:]  # (B, N, C): [CLS] left out


class LinearProjection(nn.Module):
    """LLaVA's connector: one ``Linear(C, d_model)`` applied to every patch token."""

    def __init__(self, image_width: int, text_width: int):
        super().__init__()
        self.image_width = image_width
        self.proj = nn.Linear(image_width, text_width)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(_patches(image_embeds, self.image_width))  # (B, N, d_model)


class MLPProjection(nn.Module):
    """LLaVA-1.5's ``mlp2x_gelu``: Linear(C, d_model), GELU, Linear(d_model, d_model), per patch."""

    def __init__(self, image_width: int, text_width: int):
        super().__init__()
        self.image_width = image_width
        self.mlp = nn.Sequential(nn.Linear(image_width, text_width), nn.GELU(), nn.Linear(text_width, text_width))

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.mlp(_patches(image_embeds, self.image_width))  # (B, N, d_model)


class PooledProjection(nn.Module):
    """DeCo's connector: the square grid of patch tokens average-pooled to ``num_tokens`` cells
    (a square number), then LLaVA-1.5's MLP. The pooling has no parameters; the order of the
    cells is row by row, as the patches'."""

    def __init__(self, image_width: int, text_width: int, num_tokens: int):
        super().__init__()
        side = math.isqrt(num_tokens)
        if side * side != num_tokens:
            raise ValueError(f"num_tokens must be a square number (a side x side grid), got {num_tokens}")
        self.image_width, self.side = image_width, side
        self.mlp = MLPProjection(image_width, text_width).mlp

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        patches = _patches(image_embeds, self.image_width)  # (B, N, C)
        grid = math.isqrt(patches.shape[1])
        if grid * grid != patches.shape[1] or grid < self.side:
            raise ValueError(f"expected a square grid of at least {self.side}x{self.side} patches, got {patches.shape[1]}")
        x = rearrange(patches, "b (h w) c -> b c h w", h=grid)
        x = F.adaptive_avg_pool2d(x, self.side)  # (B, C, side, side)
        return self.mlp(rearrange(x, "b c h w -> b (h w) c"))  # (B, M, d_model)


class PerceiverAttention(nn.Module):
    """The latents' queries attend to the image tokens and the latents together (Flamingo)."""

    def __init__(self, width: int, heads: int, head_dim: int):
        super().__init__()
        self.heads, self.scale = heads, head_dim ** -0.5
        self.norm_media, self.norm_latents = nn.LayerNorm(width), nn.LayerNorm(width)
        self.to_q = nn.Linear(width, heads * head_dim, bias=False)
        self.to_kv = nn.Linear(width, 2 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, width, bias=False)

    def forward(self, x: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        x, latents = self.norm_media(x), self.norm_latents(latents)  # (B, N, C), (B, M, C)
        q = rearrange(self.to_q(latents), "b m (h d) -> b h m d", h=self.heads)
        k, v = self.to_kv(torch.cat([x, latents], dim=1)).chunk(2, dim=-1)  # (B, N + M, H*d) each
        k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (k, v))
        probs = (q @ k.transpose(-2, -1) * self.scale).softmax(dim=-1)  # (B, H, M, N + M)
        return self.to_out(rearrange(probs @ v, "b h m d -> b m (h d)"))  # (B, M, C)


class PerceiverResampler(nn.Module):
    """Flamingo's Perceiver resampler, then a linear map into the language model's width:
    ``num_tokens`` learned latents, ``depth`` times attention (residual) and a feed-forward
    (residual), a final LayerNorm. ``media_pos_emb`` is Flamingo's embedding of the frame's
    time, one learned vector for a single image; the names of the parameters are those of
    lucidrains' ``flamingo-pytorch`` 0.1.2 (on PyPI), so its weights load (all but ``proj``)."""

    def __init__(self, image_width: int, text_width: int, num_tokens: int, depth: int = 2, heads: int = 4,
                 head_dim: int = 32, ff_mult: int = 4):
        super().__init__()
        self.image_width = image_width
        self.latents = nn.Parameter(torch.randn(num_tokens, image_width))
        self.media_pos_emb = nn.Parameter(torch.randn(1, 1, image_width))
        self.layers = nn.ModuleList(nn.ModuleList([
            PerceiverAttention(image_width, heads, head_dim),
            nn.Sequential(nn.LayerNorm(image_width), nn.Linear(image_width, ff_mult * image_width, bias=False),
                          nn.GELU(), nn.Linear(ff_mult * image_width, image_width, bias=False)),
        ]) for _ in range(depth))
        self.norm = nn.LayerNorm(image_width)
        self.proj = nn.Linear(image_width, text_width)

    def resample(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """The latents after the last layer and the final LayerNorm: (B, M, C)."""
        if image_embeds.dim() != 3 or image_embeds.shape[-1] != self.image_width:
            raise ValueError(f"image_embeds must have shape (B, N, {self.image_width}), got {tuple(image_embeds.shape)}")
        x = image_embeds + self.media_pos_emb[0]  # (B, N, C)
        latents = self.latents.expand(image_embeds.shape[0], -1, -1)  # (B, M, C)
        for attn, ff in self.layers:
            latents = attn(x, latents) + latents
            latents = ff(latents) + latents
        return self.norm(latents)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.proj(self.resample(image_embeds))  # (B, M, d_model)


class QFormerProjection(nn.Module):
    """BLIP-2's connector: the (query-only) Q-Former's outputs, then ``Linear(D, d_model)``;
    ``Blip2T5`` holds the same two parts under the names of HuggingFace's checkpoints."""

    def __init__(self, qformer: QFormer, text_width: int):
        super().__init__()
        self.qformer = qformer
        self.language_projection = nn.Linear(qformer.config.hidden_size, text_width)

    def forward(self, image_embeds: torch.Tensor) -> torch.Tensor:
        return self.language_projection(self.qformer(image_embeds).query_output)  # (B, Q, d_model)


class ConnectorT5(PrefixT5):
    """A frozen image encoder and a frozen T5 joined by any connector above: the connector
    trains, the rest stays as it is (see ``PrefixT5``)."""

    def __init__(self, vision_encoder: nn.Module, connector: nn.Module, language_model: nn.Module):
        super().__init__(vision_encoder, language_model)
        self.connector = connector

    def image_prefix(self, pixel_values=None, output_attentions: bool = False, image_embeds=None):
        """The soft prompt (B, M, d_model), and None (no Q-Former output to return)."""
        if output_attentions:
            raise ValueError("ConnectorT5 returns no attention maps (output_attentions=False)")
        return self.connector(self.image_features(pixel_values, image_embeds)), None
