"""InstructBLIP: the instruction enters the Q-Former, and the queries read the image for it.

BLIP-2's Q-Former sees no text after stage 1: at stage 2 and at inference its queries extract
the same vectors whatever the user asks. InstructBLIP (LAVIS ``blip2_t5_instruct.py``,
``blip2_vicuna_instruct.py``; HF ``InstructBlipForConditionalGeneration``) keeps the
Q-Former's text parts and hands it the instruction, in the Q-Former's own (BERT) tokens,
after the queries. That is a pass the Q-Former of chapters 4 and 5 already makes: queries and
text together under ITM's bi-directional mask, the text through the text FFN, only the
queries cross-attending to the image. So ``instruction_queries`` is one call,
``qformer(image_embeds, instruction_ids, instruction_mask, mode="itm")``, and only the query
outputs go on, projected, to the language model, which also reads the instruction in its own
tokens. ``InstructBlipT5`` and ``InstructBlipDecoder`` are ``Blip2T5`` and ``Blip2OPT`` with
that prefix; they take the instruction as HF does, ``qformer_input_ids`` and
``qformer_attention_mask``.
"""

from __future__ import annotations

import torch
from torch import nn

from .blip2_opt import Blip2OPT
from .blip2_t5 import Blip2T5
from .qformer import QFormer, QFormerOutput


def instruction_queries(qformer: QFormer, image_embeds: torch.Tensor, instruction_ids: torch.Tensor | None,
                        instruction_mask: torch.Tensor | None = None,
                        output_attentions: bool = False) -> QFormerOutput:
    """The queries after reading the image *for* the instruction: one Q-Former pass over
    [queries; instruction] with ITM's bi-directional mask. ``query_output`` is (B, Q, D)."""
    if instruction_ids is None:
        raise ValueError(
            "InstructBLIP's Q-Former reads an instruction: give qformer_input_ids (B, T), the instruction in the "
            "Q-Former's own tokens (BERT's), and qformer_attention_mask (B, T)"
        )
    if instruction_ids.dim() != 2 or instruction_ids.shape[0] != image_embeds.shape[0]:
        raise ValueError(
            f"qformer_input_ids must have shape ({image_embeds.shape[0]}, T), one instruction per image, "
            f"got {tuple(instruction_ids.shape)}"
        )
    return qformer(image_embeds, instruction_ids, instruction_mask, mode="itm", output_attentions=output_attentions)


class InstructionAware:
    """What InstructBLIP changes in a BLIP-2 model: a Q-Former with its text parts, and a soft
    prompt computed from the image and the instruction."""

    prefix_inputs = ("qformer_input_ids", "qformer_attention_mask")

    @classmethod
    def check_qformer(cls, qformer: QFormer) -> None:
        if qformer.embeddings is None or any(layer.text_ffn is None for layer in qformer.layers):
            raise ValueError(f"{cls.__name__} needs a Q-Former with its text parts (use_qformer_text_input=True): "
                             "InstructBLIP's Q-Former reads the instruction")

    def image_prefix(self, pixel_values, output_attentions: bool = False, image_embeds=None,
                     qformer_input_ids=None, qformer_attention_mask=None):
        """The soft prompt (B, Q, d_model) from the image and the instruction, and the Q-Former's
        output, in the Q-Former's own precision (float32) then the projection's."""
        image_embeds = self.image_features(pixel_values, image_embeds)  # (B, N, C)
        out = instruction_queries(self.qformer, image_embeds, qformer_input_ids, qformer_attention_mask,
                                  output_attentions)
        projection: nn.Linear = self.language_projection
        return projection(out.query_output.to(projection.weight.dtype)), out


class InstructBlipT5(InstructionAware, Blip2T5):
    """InstructBLIP with an encoder-decoder language model (Flan-T5): the instruction-aware
    queries, projected, in front of the instruction's T5 tokens in T5's encoder."""


class InstructBlipDecoder(InstructionAware, Blip2OPT):
    """InstructBLIP with a decoder-only language model (Vicuna, or OPT): the instruction-aware
    queries, projected, in front of the instruction's own tokens in the decoder's input."""
