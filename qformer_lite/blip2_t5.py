"""Stage 2: frozen image encoder -> Q-Former (queries only) -> projection -> frozen T5 encoder.

The projected queries are a soft prompt: 32 vectors in T5's input-embedding space, put in
front of the text prompt's embeddings and read by the T5 *encoder*. The decoder only writes
the answer.

The loss is T5's cross-entropy on ``labels``. Whatever text goes in front (``input_ids``) is
the caller's choice, as in LAVIS, whose ``Blip2T5.forward`` reads ``text_input`` (encoder,
after the queries) and ``text_output`` (target) from the dataset: the paper's prefix language
modelling splits a text in two, the prefix as ``input_ids`` and the rest as ``labels``; LAVIS's
caption datasets give an empty ``text_input``, which is plain language modelling of the
caption conditioned on the queries, and what the miniature trains.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .qformer import QFormer


@dataclass
class Blip2T5Output:
    loss: torch.Tensor | None  # mean cross-entropy over label tokens (-100 ignored)
    logits: torch.Tensor  # (B, T_out, V)
    query_output: torch.Tensor | None  # (B, Q, D) Q-Former outputs (None for another connector)
    language_model_inputs: torch.Tensor  # (B, M, d_model) the soft prompt: the projected queries


FP16_T5_MESSAGE = (
    "T5 / Flan-T5 in float16 overflows (its feed-forward activations exceed float16's range) and "
    "writes garbage captions; run the language model in bfloat16 or float32, or keep its "
    "feed-forward output layers (`wo`) in float32 as HuggingFace does for float16 "
    "(qformer_lite.hf.blip2_t5_from_hf(..., dtype=torch.float16) does that)"
)


def check_language_model_precision(language_model: nn.Module) -> None:
    """Refuse a T5 whose feed-forward output layers are float16 (see ``FP16_T5_MESSAGE``)."""
    half = [n for n, p in language_model.named_parameters() if n.endswith(".wo.weight") and p.dtype == torch.float16]
    if half:
        raise ValueError(f"{FP16_T5_MESSAGE}; float16 found in {half[0]} and {len(half) - 1} more")


class FrozenEnds(nn.Module):
    """A frozen image encoder and a frozen language model, kept in eval mode, with what lies
    between them left to a subclass (``image_prefix``): ``PrefixT5`` for encoder-decoder
    language models, ``blip2_opt.Blip2OPT`` for decoder-only ones.

    ``vision_encoder`` maps pixels to image features (B, N, C), its final LayerNorm
    (LAVIS's ``ln_vision``, HF's ``post_layernorm``) included; it may return a tensor or an
    object with ``last_hidden_state``. Both ends are frozen; so the encoder's features can be
    computed once and reused (``image_embeds``), as the miniature does.
    """

    # what ``image_prefix`` reads besides the image, passed by name to ``forward`` and ``generate``
    # (InstructBLIP: the instruction); BLIP-2 reads nothing else
    prefix_inputs: tuple[str, ...] = ()

    def __init__(self, vision_encoder: nn.Module, language_model: nn.Module):
        super().__init__()
        self.vision_encoder = vision_encoder
        self.language_model = language_model
        for module in (self.vision_encoder, self.language_model):
            module.requires_grad_(False)
            module.eval()

    def train(self, mode: bool = True) -> "FrozenEnds":
        super().train(mode)
        self.vision_encoder.eval()  # frozen parts never switch on dropout
        self.language_model.eval()
        return self

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision_encoder(pixel_values)
        return getattr(out, "last_hidden_state", out)  # (B, N, C)

    def split_prefix_inputs(self, kwargs: dict) -> dict:
        """Take the ``prefix_inputs`` out of ``kwargs``; the rest goes to the language model."""
        return {name: kwargs.pop(name) for name in self.prefix_inputs if name in kwargs}

    def check_extra_inputs(self, extra: dict) -> None:
        unknown = sorted(set(extra) - set(self.prefix_inputs))
        if unknown:
            takes = f"; it reads {', '.join(self.prefix_inputs)} besides the image" if self.prefix_inputs else ""
            raise ValueError(f"{type(self).__name__} got unexpected inputs {unknown}{takes}")

    @classmethod
    def check_qformer(cls, qformer: QFormer) -> None:
        """BLIP-2's stage 2 uses the Q-Former's query path only (InstructBLIP's keeps its text parts)."""
        require_query_only(qformer, cls.__name__)

    def image_features(self, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """The frozen encoder's features (B, N, C): ``image_embeds`` as given, or computed from
        ``pixel_values`` (exactly one of the two)."""
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("give either pixel_values (B, 3, H, W) or image_embeds (B, N, C), not both or neither")
        return self.encode_image(pixel_values) if image_embeds is None else image_embeds


def require_query_only(qformer: QFormer, model: str) -> None:
    if qformer.embeddings is not None or any(layer.text_ffn is not None for layer in qformer.layers):
        raise ValueError(f"{model} uses a query-only Q-Former (use_qformer_text_input=False), as stage 2 does")


def query_prefix(qformer: QFormer, projection: nn.Linear, image_embeds: torch.Tensor, output_attentions: bool = False):
    """BLIP-2's soft prompt: the Q-Former's query outputs (B, Q, D), computed in the
    Q-Former's own precision (float32, as in LAVIS), projected into the language model's width
    (B, Q, d_model) in the projection's; and the Q-Former's output."""
    out = qformer(image_embeds, output_attentions=output_attentions)
    return projection(out.query_output.to(projection.weight.dtype)), out


class PrefixT5(FrozenEnds):
    """A frozen image encoder and a frozen encoder-decoder language model (T5 / Flan-T5),
    joined by a trainable part that turns image features into a soft prompt: vectors in
    T5's input-embedding space, put in front of the prompt's embeddings and read by the T5
    *encoder* (``image_prefix``). BLIP-2's part is the Q-Former and a projection
    (``Blip2T5``); ``connectors.ConnectorT5`` takes any other connector. See ``FrozenEnds``
    for the two frozen ends.
    """

    def __init__(self, vision_encoder: nn.Module, language_model: nn.Module):
        if not getattr(language_model.config, "is_encoder_decoder", False):
            raise ValueError(
                f"{type(self).__name__} needs an encoder-decoder language model (T5), got {type(language_model).__name__}"
                " (decoder-only language models: blip2_opt.Blip2OPT)"
            )
        check_language_model_precision(language_model)
        super().__init__(vision_encoder, language_model)

    def image_prefix(self, pixel_values, output_attentions: bool = False, image_embeds=None):
        """(soft prompt (B, M, d_model), what the trainable part returned besides, or None)."""
        raise NotImplementedError

    def _encoder_inputs(self, prefix, input_ids, attention_mask):
        embed = self.language_model.get_input_embeddings()
        batch = prefix.shape[0]
        if input_ids is None:  # an empty prompt: T5's tokenizer turns "" into "</s>"
            eos = self.language_model.config.eos_token_id
            input_ids = torch.full((batch, 1), eos, dtype=torch.long, device=prefix.device)
        if input_ids.dim() != 2 or input_ids.shape[0] != batch:
            raise ValueError(f"input_ids must have shape ({batch}, T), got {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}, "
                f"got {tuple(attention_mask.shape)}"
            )
        prompt = embed(input_ids)  # (B, T, d_model)
        inputs_embeds = torch.cat([prefix.to(prompt.dtype), prompt], dim=1)  # (B, M + T, d_model), the soft prompt first
        mask = torch.cat([torch.ones(prefix.shape[:2], dtype=attention_mask.dtype, device=prefix.device),
                          attention_mask], dim=1)  # (B, M + T)
        return inputs_embeds, mask

    def forward(
        self, pixel_values=None, input_ids=None, attention_mask=None, labels=None, decoder_input_ids=None,
        image_embeds=None, **prefix_inputs,
    ):
        """``input_ids``: the text the encoder reads after the queries, alone (no image
        placeholders): a prompt, or the prefix of a text split for prefix language
        modelling; ``None`` is the empty prompt (``</s>``). ``labels``: the target ids with
        padding at -100. T5 shifts the labels right to make its decoder inputs. Without
        labels or ``decoder_input_ids``, the logits are those of the decoder's first step.
        ``image_embeds`` may replace ``pixel_values`` (see ``image_prefix``); ``prefix_inputs``:
        what the model's ``image_prefix`` reads besides (``prefix_inputs``)."""
        self.check_extra_inputs(prefix_inputs)
        prefix, extra = self.image_prefix(pixel_values, image_embeds=image_embeds, **prefix_inputs)
        inputs_embeds, mask = self._encoder_inputs(prefix, input_ids, attention_mask)
        if labels is None and decoder_input_ids is None:
            start = self.language_model.config.decoder_start_token_id
            decoder_input_ids = torch.full((prefix.shape[0], 1), start, device=prefix.device, dtype=torch.long)
        out = self.language_model(
            inputs_embeds=inputs_embeds, attention_mask=mask, labels=labels, decoder_input_ids=decoder_input_ids
        )
        return Blip2T5Output(out.loss, out.logits, getattr(extra, "query_output", None), prefix)

    @torch.no_grad()
    def generate(
        self, pixel_values=None, input_ids=None, attention_mask=None, image_embeds=None, **generate_kwargs
    ) -> torch.Tensor:
        """Token ids written by T5's decoder (starting with its decoder start token).

        Defaults are LAVIS's: 5 beams, at most 30 new tokens; pass ``num_beams=1`` for greedy.
        ``image_embeds`` may replace ``pixel_values`` (see ``image_prefix``).
        """
        generate_kwargs.setdefault("num_beams", 5)
        generate_kwargs.setdefault("max_new_tokens", 30)
        extra = self.split_prefix_inputs(generate_kwargs)
        prefix, _ = self.image_prefix(pixel_values, image_embeds=image_embeds, **extra)
        inputs_embeds, mask = self._encoder_inputs(prefix, input_ids, attention_mask)
        return self.language_model.generate(inputs_embeds=inputs_embeds, attention_mask=mask, **generate_kwargs)


class Blip2T5(PrefixT5):
    """BLIP-2 with an encoder-decoder language model (T5 / Flan-T5).

    What trains: the Q-Former (its query tokens included) and the projection. The whole
    vision encoder, that last LayerNorm included, and the language model are frozen (see
    ``PrefixT5``). LAVIS freezes a little less: ``freeze_vit`` freezes ``visual_encoder``
    only, and ``ln_vision`` is a LayerNorm outside it, so it trains in stage 2 as in stage 1;
    its COCO-caption fine-tune (``caption_coco_flant5xl``) also unfreezes the ViT itself, run
    in float32 at 364 pixels. ``Blip2T5`` does neither.
    """

    def __init__(self, vision_encoder: nn.Module, qformer: QFormer, language_model: nn.Module):
        self.check_qformer(qformer)
        super().__init__(vision_encoder, language_model)
        self.qformer = qformer
        self.language_projection = nn.Linear(qformer.config.hidden_size, language_model.config.d_model)

    @property
    def num_query_tokens(self) -> int:
        return self.qformer.config.num_query_tokens

    def image_prefix(self, pixel_values: torch.Tensor | None, output_attentions: bool = False, image_embeds=None):
        """The soft prompt: Q-Former query outputs (B, Q, D) projected to (B, Q, d_model), and
        the Q-Former's output.

        ``image_embeds`` (B, N, C), the frozen encoder's output computed beforehand, may be
        given instead of ``pixel_values``: the encoder is frozen, so its features can be cached.
        """
        image_embeds = self.image_features(pixel_values, image_embeds)  # (B, N, C)
        return query_prefix(self.qformer, self.language_projection, image_embeds, output_attentions)  # (B, Q, d_model)
