"""Stage 2 with a decoder-only language model: frozen image encoder -> Q-Former (queries only)
-> projection -> frozen OPT (or any causal LM: Llama, GPT-2).

A decoder-only model has no encoder to read a soft prompt, so the projected queries go in
front of the prompt's embeddings in the *decoder's* own input: [queries; <s>; prompt], and the
model writes the caption after the last prompt token. Two details follow, both LAVIS's
``blip2_opt.py`` and HuggingFace's ``Blip2ForConditionalGeneration``:

- the loss is the language model's next-token cross-entropy on ``labels``, with the query
  positions (and whatever the caller marks -100: the prompt, the padding) left out;
- in a batch of prompts of different lengths the padding goes on the *left* of the whole
  sequence, so that every row's next token follows its own prompt. ``_decoder_inputs`` moves
  the padding there, however the prompts came padded; positions count the real tokens only.

The soft prompt need not come first. MiniGPT-4 writes its image *inside* a chat prompt,
``###Human: <Img><ImageHere></Img> Describe this image. ###Assistant:``: with
``image_token_id`` set, a text holding that token once per row gets the projected queries in
its place, the text before it and after it around them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blip2_t5 import FrozenEnds, query_prefix
from .qformer import QFormer


@dataclass
class Blip2OPTOutput:
    loss: torch.Tensor | None  # mean next-token cross-entropy over label tokens (-100 ignored)
    logits: torch.Tensor  # (B, Q + T, V), one row per input position, padding first
    query_output: torch.Tensor  # (B, Q, D) Q-Former outputs
    language_model_inputs: torch.Tensor  # (B, Q, d_model) the soft prompt: the projected queries


class Blip2OPT(FrozenEnds):
    """BLIP-2 with a decoder-only language model (OPT, as in BLIP-2; Vicuna/Llama in its
    successors). What trains: the Q-Former and the projection (LAVIS's ``opt_proj``, HF's
    ``language_projection``); the vision encoder and the language model are frozen."""

    def __init__(self, vision_encoder: nn.Module, qformer: QFormer, language_model: nn.Module,
                 image_token_id: int | None = None):
        self.check_qformer(qformer)
        if getattr(language_model.config, "is_encoder_decoder", False):
            raise ValueError(
                f"Blip2OPT needs a decoder-only language model, got the encoder-decoder "
                f"{type(language_model).__name__} (use blip2_t5.Blip2T5)"
            )
        super().__init__(vision_encoder, language_model)
        self.qformer = qformer
        self.language_projection = nn.Linear(qformer.config.hidden_size, language_model.config.hidden_size)
        self.image_token_id = image_token_id  # the placeholder the queries replace (MiniGPT-4's <ImageHere>)

    @property
    def num_query_tokens(self) -> int:
        return self.qformer.config.num_query_tokens

    def image_prefix(self, pixel_values: torch.Tensor | None, output_attentions: bool = False, image_embeds=None):
        """The soft prompt (B, Q, d_model) and the Q-Former's output (see ``Blip2T5.image_prefix``)."""
        image_embeds = self.image_features(pixel_values, image_embeds)  # (B, N, C)
        return query_prefix(self.qformer, self.language_projection, image_embeds, output_attentions)

    def _decoder_inputs(self, prefix, input_ids, attention_mask, labels=None):
        """[queries; text] as embeddings, its mask, its positions and its labels, each row's
        padding moved to the front."""
        batch, num_queries = prefix.shape[:2]
        if input_ids is None:  # no prompt: the one token every OPT text starts with, as HF's processor gives
            bos = self.language_model.config.bos_token_id
            input_ids = torch.full((batch, 1), bos, dtype=torch.long, device=prefix.device)
        if input_ids.dim() != 2 or input_ids.shape[0] != batch:
            raise ValueError(f"input_ids must have shape ({batch}, T), got {tuple(input_ids.shape)}")
        for name, other in (("attention_mask", attention_mask), ("labels", labels)):
            if other is not None and other.shape != input_ids.shape:
                raise ValueError(
                    f"{name} must have the shape of input_ids {tuple(input_ids.shape)}, got {tuple(other.shape)}"
                )
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        text = self.language_model.get_input_embeddings()(input_ids)  # (B, T, d_model)
        embeds = torch.cat([prefix.to(text.dtype), text], dim=1)  # (B, Q + T, d_model), the queries first
        mask = torch.cat([attention_mask.new_ones(batch, num_queries), attention_mask], dim=1)  # (B, Q + T)
        if labels is not None:
            labels = torch.cat([labels.new_full((batch, num_queries), -100), labels], dim=1)
        order = self._queries_in_place(input_ids, num_queries)  # (B, Q + T'), [text before; queries; text after]
        # then padding first, every real position in its order: a stable sort of the mask (0 before 1)
        order = order.gather(1, torch.sort(mask.gather(1, order), dim=1, stable=True).indices)
        embeds = embeds.gather(1, order[..., None].expand(-1, -1, embeds.shape[-1]))
        mask = mask.gather(1, order)
        positions = (mask.long().cumsum(1) - 1).masked_fill(mask == 0, 1)  # as HF's generate counts them
        if labels is not None:
            labels = labels.gather(1, order)
        return embeds, mask, positions, labels

    def _queries_in_place(self, input_ids: torch.Tensor, q: int) -> torch.Tensor:
        """Indices into [queries; text] that read the text with the ``q`` soft tokens where its
        placeholder is (the placeholder itself dropped), or the queries first if the text
        holds none. ``q`` is the soft prompt's length: the Q-Former's queries, or a video's
        F x Q."""
        batch, length = input_ids.shape
        if self.image_token_id is None or not (input_ids == self.image_token_id).any():
            return torch.arange(q + length, device=input_ids.device).expand(batch, -1)
        counts = (input_ids == self.image_token_id).sum(1)
        if (counts != 1).any():
            raise ValueError(f"each text must hold the image placeholder (id {self.image_token_id}) once or, in "
                             f"every row, not at all; counts per row: {counts.tolist()}")
        at = (input_ids == self.image_token_id).int().argmax(1, keepdim=True)  # (B, 1)
        j = torch.arange(q + length - 1, device=input_ids.device).expand(batch, -1)  # (B, Q + T - 1)
        # before the placeholder: text j; then query j - at; after: text j - Q + 1 (one token dropped)
        return torch.where(j < at, q + j, torch.where(j < at + q, j - at, j + 1))

    def forward(self, pixel_values=None, input_ids=None, attention_mask=None, labels=None, image_embeds=None,
                **prefix_inputs):
        """``input_ids``: the text after the queries, alone (no image placeholders): ``<s>``,
        the prompt, and in training the target after it, padded on either side.
        ``labels``: ``input_ids`` with -100 wherever no loss is wanted (the prompt, the
        padding); the query positions are left out here. ``image_embeds`` may replace
        ``pixel_values``; ``prefix_inputs``: what ``image_prefix`` reads besides (InstructBLIP's
        instruction)."""
        self.check_extra_inputs(prefix_inputs)
        prefix, out = self.image_prefix(pixel_values, image_embeds=image_embeds, **prefix_inputs)
        embeds, mask, positions, labels = self._decoder_inputs(prefix, input_ids, attention_mask, labels)
        logits = self.language_model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits
        loss = None
        if labels is not None:  # position t predicts token t + 1
            loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return Blip2OPTOutput(loss, logits, out.query_output, prefix)

    @torch.no_grad()
    def generate(self, pixel_values=None, input_ids=None, attention_mask=None, image_embeds=None,
                 **generate_kwargs) -> torch.Tensor:
        """The token ids written after each prompt (the prompt itself is not repeated).

        LAVIS's caption defaults: 5 beams, at most 30 new tokens; ``num_beams=1`` for greedy.
        """
        generate_kwargs.setdefault("num_beams", 5)
        generate_kwargs.setdefault("max_new_tokens", 30)
        extra = self.split_prefix_inputs(generate_kwargs)
        prefix, _ = self.image_prefix(pixel_values, image_embeds=image_embeds, **extra)
        embeds, mask, _, _ = self._decoder_inputs(prefix, input_ids, attention_mask)
        return self.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **generate_kwargs)
