"""The Q-Former: learnable queries and (optionally) text, through a stack of BERT layers that
cross-attend to frozen image features."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .config import QFormerConfig
from .layer import QFormerLayer
from .masks import MODES, build_attention_mask
from .queries import LearnableQueries


@dataclass
class QFormerOutput:
    query_output: torch.Tensor | None  # (B, Q, D), None in a text-only pass
    text_output: torch.Tensor | None  # (B, T, D), None without text
    last_hidden_state: torch.Tensor  # (B, Q + T, D), [queries; text]
    attentions: tuple[torch.Tensor, ...] | None = None  # per layer (B, H, L, L_k)
    cross_attentions: tuple[torch.Tensor, ...] | None = None  # per cross layer (B, H, Q, N)
    past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None  # queries' self-attn K/V


class TextEmbeddings(nn.Module):
    """Word + absolute position embeddings for text; positions start at 0 at the first text
    token (queries have none). LayerNorm comes later, over [queries; text]."""

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        return self.word_embeddings(input_ids) + self.position_embeddings(positions)  # (B, T, D)


class QFormer(nn.Module):
    """BLIP-2's Querying Transformer.

    ``forward(image_embeds, input_ids, attention_mask, mode)`` runs, in one pass:
    queries only (``input_ids=None``), text only (``image_embeds=None``), or queries and text
    together under the ``mode``'s mask (``"itc"``, ``"itm"``, ``"itg"``; see masks.py).
    """

    def __init__(self, config: QFormerConfig):
        super().__init__()
        self.config = config
        self.query_tokens = LearnableQueries(config.num_query_tokens, config.hidden_size, config.initializer_range)
        self.embeddings = TextEmbeddings(config) if config.use_qformer_text_input else None
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(QFormerLayer(config, i) for i in range(config.num_hidden_layers))
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range  # BERT's init: N(0, 0.02), zero biases, unit LayerNorms
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
            if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def forward(
        self,
        image_embeds: torch.Tensor | None = None,  # (B, N, C)
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T), 1 = real token
        mode: str = "itm",
        image_attention_mask: torch.Tensor | None = None,  # (B, N), 1 = real image token
        output_attentions: bool = False,
        use_cache: bool = False,
        past_key_values: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None,
    ) -> QFormerOutput:
        """``use_cache=True`` returns the queries' self-attention keys/values per layer;
        passing them back as ``past_key_values`` with ``input_ids`` runs the text alone,
        reading the cached queries: LAVIS's ITG pass (equal to a joint ``"itg"`` pass)."""
        cfg = self.config
        batch = self._check_inputs(image_embeds, input_ids, attention_mask, mode, image_attention_mask, past_key_values)
        run_queries = image_embeds is not None and past_key_values is None
        if image_embeds is not None:
            image_embeds = image_embeds.to(self.layernorm.weight.dtype)  # the Q-Former runs in its own dtype (fp32)
        num_queries = cfg.num_query_tokens if run_queries else 0

        parts = []
        if run_queries:
            parts.append(self.query_tokens(batch))  # (B, Q, D)
        if input_ids is not None:
            parts.append(self.embeddings(input_ids))  # (B, T, D)
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
        x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, L, D), no positions for queries
        x = self.dropout(self.layernorm(x))

        mask = self._self_attention_mask(mode, num_queries, attention_mask, past_key_values)
        image_mask = None
        if run_queries and image_attention_mask is not None and not bool(image_attention_mask.all()):
            image_mask = image_attention_mask.bool()[:, None, None, :]  # (B, 1, 1, N)

        self_maps, cross_maps, cache = [], [], []
        for i, layer in enumerate(self.layers):
            past = past_key_values[i] if past_key_values is not None else None
            x, self_probs, cross_probs, kv = layer(
                x, num_queries, mask, image_embeds, image_mask, output_attentions, past
            )
            if output_attentions:
                self_maps.append(self_probs)
                if cross_probs is not None:
                    cross_maps.append(cross_probs)
            if use_cache:
                cache.append(tuple(t[:, :, :num_queries] for t in kv))

        return QFormerOutput(
            query_output=x[:, :num_queries] if num_queries else None,
            text_output=x[:, num_queries:] if input_ids is not None else None,
            last_hidden_state=x,
            attentions=tuple(self_maps) if output_attentions else None,
            cross_attentions=tuple(cross_maps) if output_attentions and run_queries else None,
            past_key_values=tuple(cache) if use_cache and run_queries else None,
        )

    def _self_attention_mask(self, mode, num_queries, text_mask, past_key_values):
        if text_mask is None:
            return None  # queries only: they all see each other
        if past_key_values is not None:  # text rows only, cached queries as the key prefix
            q = past_key_values[0][0].shape[2]
            return build_attention_mask(mode, q, text_mask)[:, None, q:, :]  # (B, 1, T, Q + T)
        full = build_attention_mask(mode, num_queries, text_mask)  # num_queries = 0: the text block alone
        if bool(full.all()):
            return None  # nothing to hide: let SDPA take its unmasked path
        return full[:, None]  # (B, 1, L, L)

    def _check_inputs(self, image_embeds, input_ids, attention_mask, mode, image_attention_mask, past_key_values):
        cfg = self.config
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if image_embeds is None and input_ids is None:
            raise ValueError("QFormer needs image_embeds (B, N, C), input_ids (B, T), or both; got neither")
        batch = None
        if image_embeds is not None:
            if image_embeds.dim() != 3:
                raise ValueError(
                    f"image_embeds must have shape (B, N, {cfg.encoder_hidden_size}), got {tuple(image_embeds.shape)}"
                )
            if image_embeds.shape[-1] != cfg.encoder_hidden_size:
                raise ValueError(
                    f"image_embeds must be {cfg.encoder_hidden_size} wide (config.encoder_hidden_size), "
                    f"got shape {tuple(image_embeds.shape)}"
                )
            batch, num_image_tokens = image_embeds.shape[:2]
            if image_attention_mask is not None:
                _check_mask("image_attention_mask", image_attention_mask, (batch, num_image_tokens))
        elif image_attention_mask is not None:
            raise ValueError("image_attention_mask was given without image_embeds")
        if input_ids is not None:
            if self.embeddings is None:
                raise ValueError(
                    "this QFormer has no text parts (built with use_qformer_text_input=False, as BLIP-2's stage-2 "
                    "checkpoints are): it cannot take input_ids; run it on image_embeds alone"
                )
            if input_ids.dim() != 2:
                raise ValueError(f"input_ids must have shape (B, T), got {tuple(input_ids.shape)}")
            if input_ids.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
                raise ValueError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
            if batch is not None and input_ids.shape[0] != batch:
                raise ValueError(
                    f"image_embeds and input_ids must have the same batch size, got {batch} and {input_ids.shape[0]}"
                )
            batch, text_length = input_ids.shape
            if text_length > cfg.max_position_embeddings:
                raise ValueError(
                    f"text is {text_length} tokens long; the Q-Former has position embeddings for at most "
                    f"max_position_embeddings={cfg.max_position_embeddings}"
                )
            if text_length and (int(input_ids.min()) < 0 or int(input_ids.max()) >= cfg.vocab_size):
                raise ValueError(
                    f"input_ids must lie in [0, vocab_size={cfg.vocab_size}), "
                    f"got values in [{int(input_ids.min())}, {int(input_ids.max())}]"
                )
            if attention_mask is not None:
                _check_mask("attention_mask", attention_mask, (batch, text_length))
        elif attention_mask is not None:
            raise ValueError("attention_mask was given without input_ids")
        if past_key_values is not None:
            if input_ids is None:
                raise ValueError("past_key_values (cached queries) need input_ids: the text that reads them")
            if mode != "itg":
                raise ValueError(f"past_key_values (cached queries) are for the 'itg' text pass, got mode={mode!r}")
            if len(past_key_values) != cfg.num_hidden_layers:
                raise ValueError(
                    f"past_key_values must hold one (key, value) pair per layer ({cfg.num_hidden_layers}), "
                    f"got {len(past_key_values)}"
                )
        return batch


def _check_mask(name: str, mask: torch.Tensor, expected: tuple[int, int]) -> None:
    if tuple(mask.shape) != expected:
        raise ValueError(f"{name} must have shape {expected}, got {tuple(mask.shape)}")
    if not bool(mask.bool().any(dim=1).all()):
        raise ValueError(f"{name} has a row with no real token (all zeros): nothing to attend to")
