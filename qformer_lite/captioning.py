"""Captions and short answers from a ``Blip2T5`` or a ``Blip2OPT``, batched, with LAVIS's
generation settings (``blip2_t5.py`` and ``blip2_opt.py``: ``generate``, ``predict_answers``)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .blip2_opt import Blip2OPT
from .blip2_t5 import Blip2T5

CAPTION_DEFAULTS = dict(num_beams=5, max_new_tokens=30, min_length=1)  # LAVIS generate, both kinds
# zero-shot VQA prompts of the BLIP-2 paper (Sec. 4.2): "Short answer" for Flan-T5, "Answer" for OPT
# (LAVIS's OPT eval config, vqav2_zeroshot_opt_eval.yaml, writes "Short answer" for both)
VQA_PROMPT = "Question: {} Short answer:"
OPT_VQA_PROMPT = "Question: {} Answer:"
VQA_DEFAULTS = dict(num_beams=5, max_new_tokens=10, min_length=1, length_penalty=-1.0)  # blip2_t5 predict_answers
OPT_VQA_DEFAULTS = dict(num_beams=5, max_new_tokens=10, min_length=1, length_penalty=0.0)  # blip2_opt's


class Captioner:
    """Pairs a ``Blip2T5`` or ``Blip2OPT`` with its tokenizer and image preprocessing.

    ``image_processor(images) -> pixel_values (B, 3, H, W)``; ``tokenizer`` is a HuggingFace
    tokenizer (T5's pads on the right, which the T5 encoder's mask handles; for OPT, ``Blip2OPT``
    moves the padding to the left itself, so either side will do). LAVIS ends OPT's captions
    with "\\n" and passes its id as ``eos_token_id``; pass it too to stop where LAVIS stops.
    """

    def __init__(self, model: Blip2T5 | Blip2OPT, tokenizer, image_processor: Callable[[Sequence], torch.Tensor]):
        self.model = model
        self.tokenizer = tokenizer
        self.image_processor = image_processor

    @property
    def device(self) -> torch.device:
        return next(self.model.qformer.parameters()).device

    def pixel_values(self, images) -> torch.Tensor:
        pixels = self.image_processor(images)
        dtype = next(self.model.vision_encoder.parameters()).dtype
        return pixels.to(self.device, dtype)

    def encode_prompts(self, prompts: Sequence[str]):
        """Token ids and mask of a batch of prompts of different lengths, padded by the tokenizer."""
        enc = self.tokenizer(list(prompts), padding="longest", return_tensors="pt")
        return enc.input_ids.to(self.device), enc.attention_mask.to(self.device)

    def generate(self, images, prompts: Sequence[str], **generate_kwargs) -> list[str]:
        if len(prompts) != len(images):
            raise ValueError(f"one prompt per image expected: {len(images)} images, {len(prompts)} prompts")
        ids, mask = self.encode_prompts(prompts)
        out = self.model.generate(self.pixel_values(images), ids, mask, **generate_kwargs)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def caption(self, images, prompt: str | Sequence[str] = "", **generate_kwargs) -> list[str]:
        """Captions; ``prompt`` "" for the pretrained models, "a photo of" for the COCO-tuned one."""
        prompts = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        return self.generate(images, prompts, **{**CAPTION_DEFAULTS, **generate_kwargs})

    def answer(self, images, questions: Sequence[str], **generate_kwargs) -> list[str]:
        """Short answers, with the zero-shot VQA prompt and LAVIS's settings for the model's kind."""
        opt = isinstance(self.model, Blip2OPT)
        prompts = [(OPT_VQA_PROMPT if opt else VQA_PROMPT).format(q) for q in questions]
        defaults = OPT_VQA_DEFAULTS if opt else VQA_DEFAULTS
        return self.generate(images, prompts, **{**defaults, **generate_kwargs})
