"""Video: BLIP-2's image Q-Former run on every frame, and two ways to hand the frames on.

A video is F images. Both models below run the image Q-Former on each frame as it runs on an
image, the frames folded into the batch; they differ in what reaches the language model.

- InstructBLIP-Video (HF ``InstructBlipVideoForConditionalGeneration``,
  ``get_video_features``) concatenates them: every frame's Q query outputs, read for the
  instruction repeated per frame, projected, frame after frame: F x Q soft tokens. Nothing
  says which frame a token came from except where it sits in the language model's input.
  ``InstructBlipVideoT5`` and ``InstructBlipVideoDecoder`` are ``InstructBlipT5`` and
  ``InstructBlipDecoder`` with that frame handling and nothing else.
  ``ConcatenatedFramesT5`` does the same with BLIP-2's Q-Former and no instruction;
  ``AveragedFramesT5`` averages the frames' tokens instead (Video-ChatGPT's temporal pooling),
  which keeps their number at Q and loses their order.
- Video-LLaMA (``video_llama/models/video_llama.py``, ``encode_videoQformer_visual``)
  compresses them: a learned frame position is added to every query output of its frame
  (``video_frame_position_embedding``), and a second, 2-layer Q-Former whose own queries
  cross-attend to all F x Q tokens hands the language model a fixed number of tokens
  (32), however many frames there are. ``VideoQFormer`` is that second stage;
  ``VideoLlamaT5`` and ``VideoLlamaDecoder`` put it behind a frozen image Q-Former.
  Cross-attention treats its keys as a set, so without the frame positions the video
  Q-Former cannot tell frame order: permuting the frames leaves its output unchanged.
"""

from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from .blip2_opt import Blip2OPT
from .blip2_t5 import Blip2T5
from .config import QFormerConfig
from .instructblip import InstructBlipDecoder, InstructBlipT5
from .qformer import QFormer, QFormerOutput


def video_shape(pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> tuple[int, int]:
    """(B, F) of a video given as ``pixel_values`` (B, F, 3, H, W) or ``image_embeds`` (B, F, N, C)."""
    if (pixel_values is None) == (image_embeds is None):
        raise ValueError("give either pixel_values (B, F, 3, H, W) or image_embeds (B, F, N, C), not both or neither")
    if pixel_values is not None and pixel_values.dim() != 5:
        raise ValueError(f"pixel_values must be videos of shape (B, F, 3, H, W), got {tuple(pixel_values.shape)}; "
                         "a batch of images (B, 3, H, W) is videos of one frame: pixel_values[:, None]")
    if image_embeds is not None and image_embeds.dim() != 4:
        raise ValueError(f"image_embeds must be per-frame features of shape (B, F, N, C), got "
                         f"{tuple(image_embeds.shape)}; one frame per video: image_embeds[:, None]")
    video = pixel_values if pixel_values is not None else image_embeds
    return video.shape[0], video.shape[1]


def frames_as_images(pixel_values, image_embeds):
    """The frames folded into the batch, frame f of video b at row b * F + f (HF's reshape)."""
    if pixel_values is not None:
        return pixel_values.flatten(0, 1), None  # (B * F, 3, H, W)
    return None, image_embeds.flatten(0, 1)  # (B * F, N, C)


# ---------------------------------------------------------------- InstructBLIP-Video


class PerFrame:
    """The frames folded into the batch and read by the model's own ``image_prefix``, as a
    batch of images; ``combine`` then joins each video's per-frame soft prompts."""

    def image_prefix(self, pixel_values, output_attentions: bool = False, image_embeds=None, **prefix_inputs):
        """The soft prompt (B, M, d_model) and the Q-Former's output over the B * F frames, its
        ``query_output`` unfolded to (B, F, Q, D)."""
        batch, frames = video_shape(pixel_values, image_embeds)
        prefix_inputs = self.per_frame_inputs(prefix_inputs, batch, frames)
        pixel_values, image_embeds = frames_as_images(pixel_values, image_embeds)
        prefix, out = super().image_prefix(pixel_values, output_attentions, image_embeds,
                                           **prefix_inputs)  # (B * F, Q, d_model)
        out = replace(out, query_output=out.query_output.unflatten(0, (batch, frames)))  # (B, F, Q, D)
        return self.combine(prefix.unflatten(0, (batch, frames))), out

    def per_frame_inputs(self, prefix_inputs: dict, batch: int, frames: int) -> dict:
        return prefix_inputs

    @staticmethod
    def combine(prefix: torch.Tensor) -> torch.Tensor:
        """(B, F, Q, d_model) -> (B, F * Q, d_model): every frame's tokens, frame after frame."""
        return prefix.flatten(1, 2)


class AveragedFrames(PerFrame):
    """Video-ChatGPT's temporal pooling, on the Q-Former's tokens: the frames' soft prompts
    averaged, Q tokens however many frames. The projection is linear, so this is the projection
    of the averaged query outputs."""

    @staticmethod
    def combine(prefix: torch.Tensor) -> torch.Tensor:
        return prefix.mean(dim=1)  # (B, Q, d_model)


class PerFrameInstruction(PerFrame):
    """What InstructBLIP-Video changes in InstructBLIP: the video's frames go through the
    Q-Former as a batch of images, each with the video's instruction, and the soft prompt is
    every frame's projected queries, frame after frame."""

    def per_frame_inputs(self, prefix_inputs: dict, batch: int, frames: int) -> dict:
        qformer_input_ids = prefix_inputs.get("qformer_input_ids")
        qformer_attention_mask = prefix_inputs.get("qformer_attention_mask")
        if qformer_input_ids is not None:
            if qformer_input_ids.dim() != 2 or qformer_input_ids.shape[0] != batch:
                raise ValueError(f"qformer_input_ids must have shape ({batch}, T), one instruction per video, "
                                 f"got {tuple(qformer_input_ids.shape)}")
            if qformer_attention_mask is not None and qformer_attention_mask.shape != qformer_input_ids.shape:
                raise ValueError(f"qformer_attention_mask must have the shape of qformer_input_ids "
                                 f"{tuple(qformer_input_ids.shape)}, got {tuple(qformer_attention_mask.shape)}")
            # every frame reads the same instruction: HF's repeat_interleave, rows in frames_as_images' order
            qformer_input_ids = qformer_input_ids.repeat_interleave(frames, dim=0)  # (B * F, T)
            if qformer_attention_mask is not None:
                qformer_attention_mask = qformer_attention_mask.repeat_interleave(frames, dim=0)  # (B * F, T)
        return prefix_inputs | {"qformer_input_ids": qformer_input_ids,
                                "qformer_attention_mask": qformer_attention_mask}


class InstructBlipVideoT5(PerFrameInstruction, InstructBlipT5):
    """InstructBLIP-Video with Flan-T5: every frame's instruction-aware queries, projected,
    frame after frame, in front of the instruction's T5 tokens in T5's encoder. Takes
    ``pixel_values`` (B, F, 3, H, W) or ``image_embeds`` (B, F, N, C)."""


class InstructBlipVideoDecoder(PerFrameInstruction, InstructBlipDecoder):
    """InstructBLIP-Video with a decoder-only language model (Vicuna, OPT): every frame's
    instruction-aware queries, projected, frame after frame, in front of the prompt in the
    decoder's input."""


class ConcatenatedFramesT5(PerFrame, Blip2T5):
    """BLIP-2's Q-Former on every frame, with no instruction, the frames' projected queries
    concatenated in front of T5's input: InstructBLIP-Video's frame handling on BLIP-2."""


class AveragedFramesT5(AveragedFrames, Blip2T5):
    """BLIP-2's Q-Former on every frame, the frames' projected queries averaged over time:
    Q tokens for T5, whatever the number of frames, and no trace of their order."""


# ---------------------------------------------------------------- Video-LLaMA


def video_qformer_config(encoder_hidden_size: int = 768, **overrides) -> QFormerConfig:
    """Video-LLaMA's video Q-Former (``init_video_Qformer``): bert-base-uncased's sizes,
    2 layers, cross-attention in every layer (``cross_attention_freq = 1``), 32 queries,
    reading the image Q-Former's ``encoder_hidden_size``-wide query outputs; query-only, since
    Video-LLaMA deletes its word and position embeddings and its text FFNs."""
    base = dict(num_hidden_layers=2, cross_attention_frequency=1, encoder_hidden_size=encoder_hidden_size,
                num_query_tokens=32, use_qformer_text_input=False)
    base.update(overrides)
    return QFormerConfig(**base)


class VideoQFormer(nn.Module):
    """Video-LLaMA's second stage: frame positions added to the per-frame query outputs,
    then a Q-Former whose queries cross-attend to all frames' tokens at once.

    ``forward(frame_queries)`` takes the image Q-Former's outputs (B, F, Q, D), D being this
    Q-Former's ``encoder_hidden_size``, and returns the video Q-Former's output, its
    ``query_output`` (B, Q_video, hidden_size) the video's tokens. ``max_frame_pos`` is
    Video-LLaMA's number of frame positions (32); ``use_frame_positions=False`` builds it
    without them, blind to frame order.
    """

    def __init__(self, config: QFormerConfig, max_frame_pos: int = 32, use_frame_positions: bool = True):
        super().__init__()
        if isinstance(max_frame_pos, bool) or not isinstance(max_frame_pos, int) or max_frame_pos < 1:
            raise ValueError(f"max_frame_pos must be a positive integer, got {max_frame_pos!r}")
        self.config = config
        self.max_frame_pos = max_frame_pos
        # one vector per frame index, shared by that frame's Q tokens; nn.Embedding's own N(0, 1)
        # init, as Video-LLaMA leaves it
        self.video_frame_position_embedding = (
            nn.Embedding(max_frame_pos, config.encoder_hidden_size) if use_frame_positions else None
        )
        self.qformer = QFormer(config)

    @property
    def use_frame_positions(self) -> bool:
        return self.video_frame_position_embedding is not None

    def forward(self, frame_queries: torch.Tensor, frame_attention_mask: torch.Tensor | None = None,
                output_attentions: bool = False) -> QFormerOutput:
        """``frame_queries``: (B, F, Q, D). ``frame_attention_mask``: (B, F), 1 for a real
        frame, 0 for padding in a batch of videos of different lengths (Video-LLaMA has none:
        all its videos have the same number of frames)."""
        batch, frames, per_frame, _ = self._check(frame_queries, frame_attention_mask)
        x = frame_queries.to(self.qformer.layernorm.weight.dtype)  # (B, F, Q, D)
        if self.use_frame_positions:
            positions = torch.arange(frames, device=x.device)  # (F,)
            x = x + self.video_frame_position_embedding(positions)[None, :, None, :]  # (B, F, Q, D), one per frame
        x = x.flatten(1, 2)  # (B, F * Q, D), frame after frame
        mask = None
        if frame_attention_mask is not None:
            mask = frame_attention_mask.repeat_interleave(per_frame, dim=1)  # (B, F * Q)
        return self.qformer(x, image_attention_mask=mask, output_attentions=output_attentions)

    def _check(self, frame_queries, frame_attention_mask):
        width = self.config.encoder_hidden_size
        if frame_queries.dim() != 4:
            raise ValueError(f"frame_queries must be the image Q-Former's outputs per frame, shape (B, F, Q, {width}), "
                             f"got {tuple(frame_queries.shape)}")
        batch, frames, per_frame, got = frame_queries.shape
        if got != width:
            raise ValueError(f"frame_queries must be {width} wide (the video Q-Former's encoder_hidden_size: "
                             f"the image Q-Former's hidden_size), got shape {tuple(frame_queries.shape)}")
        if self.use_frame_positions and frames > self.max_frame_pos:
            raise ValueError(f"a video of {frames} frames; the video Q-Former has frame positions for at most "
                             f"max_frame_pos={self.max_frame_pos}")
        if frame_attention_mask is not None and tuple(frame_attention_mask.shape) != (batch, frames):
            raise ValueError(f"frame_attention_mask must have shape (B, F) = ({batch}, {frames}), one entry per "
                             f"frame of frame_queries, got {tuple(frame_attention_mask.shape)}")
        return batch, frames, per_frame, got


class VideoLlama:
    """What Video-LLaMA's vision branch puts between the frozen ends: the frozen image
    Q-Former on every frame, then the trainable ``VideoQFormer`` and projection.

    What trains: the video Q-Former (its queries and frame positions included) and the
    projection (Video-LLaMA's ``llama_proj``, here ``language_projection``); the image
    encoder, the image Q-Former and the language model are frozen, as in Video-LLaMA's
    fine-tuning configs (``frozen_video_Qformer: False``, ``frozen_llama_proj: False``).
    """

    prefix_inputs = ("frame_attention_mask",)

    def __init__(self, vision_encoder: nn.Module, qformer: QFormer, video_qformer: VideoQFormer,
                 language_model: nn.Module, **kwargs):
        if video_qformer.config.encoder_hidden_size != qformer.config.hidden_size:
            raise ValueError(f"the video Q-Former reads the image Q-Former's outputs: its encoder_hidden_size "
                             f"({video_qformer.config.encoder_hidden_size}) must be the image Q-Former's "
                             f"hidden_size ({qformer.config.hidden_size})")
        super().__init__(vision_encoder, qformer, language_model, **kwargs)
        self.qformer.requires_grad_(False)  # query tokens included
        self.qformer.eval()
        self.video_qformer = video_qformer
        # the language model reads the video Q-Former's tokens, not the image Q-Former's
        width = self.language_projection.out_features
        self.language_projection = nn.Linear(video_qformer.config.hidden_size, width)

    @property
    def num_query_tokens(self) -> int:
        return self.video_qformer.config.num_query_tokens

    def train(self, mode: bool = True):
        super().train(mode)
        self.qformer.eval()  # the borrowed image Q-Former never switches on dropout
        return self

    def image_prefix(self, pixel_values, output_attentions: bool = False, image_embeds=None,
                     frame_attention_mask=None):
        """The soft prompt (B, Q_video, d_model) and the video Q-Former's output."""
        batch, frames = video_shape(pixel_values, image_embeds)
        pixel_values, image_embeds = frames_as_images(pixel_values, image_embeds)
        image_embeds = self.image_features(pixel_values, image_embeds)  # (B * F, N, C)
        per_frame = self.qformer(image_embeds).query_output  # (B * F, Q, D)
        frame_queries = per_frame.unflatten(0, (batch, frames))  # (B, F, Q, D)
        out = self.video_qformer(frame_queries, frame_attention_mask, output_attentions)
        projection: nn.Linear = self.language_projection
        return projection(out.query_output.to(projection.weight.dtype)), out  # (B, Q_video, d_model)


class VideoLlamaT5(VideoLlama, Blip2T5):
    """Video-LLaMA's vision branch in front of an encoder-decoder language model (T5):
    ``VideoLlamaT5(vision_encoder, qformer, video_qformer, language_model)``."""


class VideoLlamaDecoder(VideoLlama, Blip2OPT):
    """Video-LLaMA's vision branch in front of a decoder-only language model (Video-LLaMA's
    own: Vicuna / LLaMA). ``image_token_id``: the placeholder the video's tokens replace, as
    Video-LLaMA's ``<ImageHere>``."""
