"""MiniGPT-4: BLIP-2's Q-Former taken as it is, frozen, and one linear layer trained into a
chat language model, with the image written *inside* the chat prompt.

MiniGPT-4 (``minigpt4/models/mini_gpt4.py``) loads the ViT and the Q-Former of a BLIP-2
that has been through both stages with Flan-T5-XXL (``blip2_pretrained_flant5xxl.pth``),
freezes them, keeps them in eval mode, and trains one ``nn.Linear`` (``llama_proj``, 768 ->
Vicuna's 4096) into a frozen Vicuna. The projected queries replace ``<ImageHere>`` in

    <s>###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: {caption}###

and the loss covers the caption and its end symbol ``###`` only. That is ``Blip2OPT`` with
a placeholder (``image_token_id``) and a frozen Q-Former: all ``MiniGPT4`` adds is the
freezing. Its trainable part keeps HuggingFace's name, ``language_projection``.
"""

from __future__ import annotations

from torch import nn

from .blip2_opt import Blip2OPT
from .qformer import QFormer

# MiniGPT-4's stage-2 template, its first instruction and its end symbol
# (train_configs/minigpt4_stage2_finetune.yaml, prompts/alignment.txt)
PROMPT_TEMPLATE = "###Human: {} ###Assistant: "
INSTRUCTION = "<Img><ImageHere></Img> Describe this image in detail."
IMAGE_PLACEHOLDER = "<ImageHere>"
END_SYMBOL = "###"


class MiniGPT4(Blip2OPT):
    """A frozen image encoder and Q-Former, a trainable linear layer, a frozen decoder-only
    language model; the queries go where each text holds ``image_token_id``."""

    def __init__(self, vision_encoder: nn.Module, qformer: QFormer, language_model: nn.Module,
                 image_token_id: int):
        if image_token_id is None:
            raise ValueError("MiniGPT4 needs image_token_id: the placeholder its prompt holds where the image goes")
        super().__init__(vision_encoder, qformer, language_model, image_token_id=image_token_id)
        self.qformer.requires_grad_(False)  # query tokens included
        self.qformer.eval()

    def train(self, mode: bool = True) -> "MiniGPT4":
        super().train(mode)
        self.qformer.eval()  # as MiniGPT-4's disabled_train: the borrowed Q-Former never changes mode
        return self
