"""Small random HuggingFace BLIP-2 models built from configs (no download)."""

from __future__ import annotations

import torch
from transformers import (
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2ForImageTextRetrieval,
    Blip2Model,
    Blip2QFormerConfig,
    Blip2VisionConfig,
    T5Config,
)


def tiny_blip2_config(
    *, hidden_size=64, num_layers=3, heads=4, freq=2, queries=8, vision_width=48, vocab=120,
    text_input=True, max_positions=40, image_size=32, patch=8,
) -> Blip2Config:
    vision = Blip2VisionConfig(
        hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=2,
        num_attention_heads=4, image_size=image_size, patch_size=patch,
    )
    qformer = Blip2QFormerConfig(
        hidden_size=hidden_size, num_hidden_layers=num_layers, num_attention_heads=heads,
        intermediate_size=2 * hidden_size, cross_attention_frequency=freq, vocab_size=vocab,
        max_position_embeddings=max_positions, use_qformer_text_input=text_input,
    )
    text = T5Config(
        vocab_size=vocab, d_model=40, d_kv=10, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, bos_token_id=1,
    )
    return Blip2Config(
        vision_config=vision.to_dict(), qformer_config=qformer.to_dict(), text_config=text.to_dict(),
        num_query_tokens=queries, image_text_hidden_size=24,
    )


def randomize_(model: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
    """Give every parameter a distinct random value (LayerNorm weights around 1), so that a
    swapped or forgotten weight shows up in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            p.copy_(1.0 + noise if "layernorm" in name.lower() and name.endswith("weight") else noise)
    return model


def build(cls, config, seed=0, randomize=True):
    torch.manual_seed(seed)
    model = cls(config)
    if randomize:
        randomize_(model, seed)
    return model.eval()


HF_CLASSES = {
    "Blip2Model": Blip2Model,
    "Blip2ForConditionalGeneration": Blip2ForConditionalGeneration,
    "Blip2ForImageTextRetrieval": Blip2ForImageTextRetrieval,
}


def padded_text(batch: int, length: int, vocab: int, seed: int = 0):
    """Random ids with right padding of varied lengths (row i keeps length - i tokens, at least 2)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):
        keep = max(2, length - i)
        mask[i, keep:] = 0
        ids[i, keep:] = 0
    return ids, mask
