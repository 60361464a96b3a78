"""qformer_lite: BLIP-2's Q-Former, one small module per idea, equal to the reference implementations.

What the chapters teach, in their order:

    config.py       the Q-Former's settings, named as HuggingFace's Blip2QFormerConfig  all
    queries.py      the learnable queries; how many tokens a ViT gives an image         ch. 1
    attention.py    multi-head attention, as self- and cross-attention                  ch. 2-3
    layer.py        one Q-Former layer                                                  ch. 4
    qformer.py      the stack                                                           ch. 4
    masks.py        the ITC / ITM / ITG attention masks                                 ch. 5

The models built from it, and the bridge to real checkpoints:

    losses.py       the stage-1 losses, as LAVIS computes them                          ch. 6
    pretraining.py  stage 1: the Q-Former with its ITC, ITM and ITG heads               ch. 6
    blip2_t5.py     stage 2: Q-Former -> projection -> T5                               ch. 7
    blip2_opt.py    stage 2 with a decoder-only LLM (OPT): the queries in its input     ch. 10
    minigpt4.py     MiniGPT-4: the Q-Former frozen, one linear layer, a chat prompt     ch. 10
    instructblip.py InstructBLIP: the instruction enters the Q-Former (ITM's mask)       ch. 11
    video.py        video: the image Q-Former per frame; InstructBLIP-Video's F x Q      ch. 12
                    tokens, Video-LLaMA's frame positions and video Q-Former
    hf.py           HuggingFace BLIP-2 weights into these modules, through a key map    ch. 4, 8
    captioning.py   captions (and answers) from images, for any BLIP-2 T5 model         ch. 8
    testing.py      stand-ins where no download can be: HF configs, a drawn image       ch. 3, 4, 8
    connectors.py   other ways from image features to the LLM: linear, MLP, pooling,    ch. 9
                    a Perceiver resampler, and the Q-Former beside them

Two folders of their own: ``miniature/`` (the world BLIP-2 is trained in on a CPU, chapters
6, 7 and 9-12 and the ``qformer-lite`` command; its README.md maps it) and ``book/`` (the exercises'
checkers and the figures, imported by the notebooks).
"""

from .attention import MultiHeadAttention, attention_from_scratch
from .config import QFormerConfig
from .masks import MODES, build_attention_mask
from .pretraining import QFormerPretraining
from .qformer import QFormer, QFormerOutput
from .queries import LearnableQueries

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "LearnableQueries",
    "MultiHeadAttention",
    "QFormer",
    "QFormerConfig",
    "QFormerOutput",
    "QFormerPretraining",
    "attention_from_scratch",
    "build_attention_mask",
]
