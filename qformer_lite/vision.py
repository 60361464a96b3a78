"""The frozen image encoder of the miniature: a tiny timm ViT, briefly pretrained.

BLIP-2 borrows a ViT that has already learned to see (EVA-CLIP). Ours learns in seconds,
with dense supervision: for every patch token, what colour and what shape sits in that
patch (or nothing), and which patch it is. Each object fills one patch, so after this the
patch tokens say *what sits where*, which is exactly what the captions need; the Q-Former
then only has to read it out. A randomly initialised encoder would leave the Q-Former to
learn vision too, with far too little data and time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from tqdm.auto import tqdm

from . import cache
from .seeding import seeded
from .data import COLOURS, GRID, SHAPES, DataConfig, ImagePool, Scene


@dataclass
class VisionConfig:
    image_size: int = 48
    patch_size: int = 16  # = the data's cell size: one object per patch token
    embed_dim: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: float = 2.0
    pos_embed_std: float = 0.5  # timm's 0.02 hides "where" under "what" for the first ~200 steps
    # pretraining
    steps: int = 200
    batch_size: int = 128
    lr: float = 4e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


class ImageEncoder(nn.Module):
    """pixels (B, 3, H, W) -> tokens (B, 1 + N, C): [CLS; one per patch], after the final LayerNorm."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.vit = VisionTransformer(
            img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
            depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
            num_classes=0, global_pool="",
        )
        nn.init.normal_(self.vit.pos_embed, std=config.pos_embed_std)

    @property
    def hidden_size(self) -> int:
        return self.config.embed_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(f"pixel_values must have shape (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}")
        return self.vit.forward_features(pixel_values)  # (B, 1 + N, C)


class PatchProbe(nn.Module):
    """Pretraining heads on each patch token: colour (or none), shape (or none), which patch."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.colour = nn.Linear(config.embed_dim, len(COLOURS) + 1)
        self.shape = nn.Linear(config.embed_dim, len(SHAPES) + 1)
        self.place = nn.Linear(config.embed_dim, config.num_patches)

    def forward(self, patch_tokens: torch.Tensor):  # (B, N, C)
        return self.colour(patch_tokens), self.shape(patch_tokens), self.place(patch_tokens)


def patch_labels(scenes: list[Scene]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch: colour index + 1 and shape index + 1, 0 where the patch is empty. (B, N) each."""
    colours, shapes = list(COLOURS), list(SHAPES)
    colour = torch.zeros(len(scenes), GRID * GRID, dtype=torch.long)
    shape = torch.zeros_like(colour)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            colour[i, o.row * GRID + o.col] = colours.index(o.colour) + 1
            shape[i, o.row * GRID + o.col] = shapes.index(o.shape) + 1
    return colour, shape


def probe_loss(probe: PatchProbe, patch_tokens, colour, shape) -> torch.Tensor:
    c_logits, s_logits, p_logits = probe(patch_tokens)  # (B, N, *)
    place = torch.arange(patch_tokens.shape[1]).expand(patch_tokens.shape[0], -1)  # (B, N)
    return (
        F.cross_entropy(c_logits.flatten(0, 1), colour.flatten())
        + F.cross_entropy(s_logits.flatten(0, 1), shape.flatten())
        + F.cross_entropy(p_logits.flatten(0, 1), place.flatten())
    )


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def pretrain_image_encoder(
    config: VisionConfig, pool: ImagePool, seed: int = 0, progress: bool = True
) -> tuple[ImageEncoder, list[float]]:
    """Train a fresh encoder on the dense patch labels of a pool of images; returns it frozen."""
    with seeded(seed):  # the only draws from the global generator; the caller's state is kept
        encoder, probe = ImageEncoder(config), PatchProbe(config)
    colour, shape = patch_labels(pool.scenes)
    scenes = pool.scenes
    params = list(encoder.parameters()) + list(probe.parameters())
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    history = []
    bar = tqdm(range(config.steps), desc="image encoder", disable=not progress, leave=False)
    for step in bar:
        idx = torch.randint(len(scenes), (config.batch_size,), generator=gen)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, config.steps, config.lr, config.warmup_steps)
        tokens = encoder(pool.pixels(idx))[:, 1:]  # (B, N, C), the patch tokens
        loss = probe_loss(probe, tokens, colour[idx], shape[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        history.append(loss.item())
        if step % 20 == 0:
            bar.set_postfix(loss=f"{history[-1]:.3f}")
    return freeze(encoder), history


def freeze(module: nn.Module) -> nn.Module:
    module.requires_grad_(False)
    return module.eval()


def cache_key(config: VisionConfig, data: DataConfig, seed: int, pool: int) -> str:
    return cache.key_of("image-encoder", {"vision": asdict(config), "data": asdict(data), "seed": seed, "pool": pool})
