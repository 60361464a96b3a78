"""Stand-ins for what cannot be downloaded here: HuggingFace BLIP-2 configs (tiny ones, and
BLIP-2 Flan-T5-XL's architecture) to build with random weights, a small T5-like tokenizer,
and a drawn sample image.

The tests compare ``qformer_lite`` with HF's classes built from these, and chapters 4 and 8
use them where the real checkpoint is out of reach; chapter 3 reads the drawn image.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def flan_t5_xl_blip2_config(image_token_id: int = 32100):
    """The architecture of ``Salesforce/blip2-flan-t5-xl`` as an HF ``Blip2Config``, to build
    with random weights (no download): EVA ViT-g/14 (HF's vision defaults), BLIP-2's
    Q-Former (HF's Q-Former defaults, 32 queries) and Flan-T5-XL with the ``dense_act_fn``
    "gelu" that LAVIS and HF's converter set.

    A T5 built from a config ties ``lm_head`` to the shared embeddings (transformers 5 forces
    ``tie_word_embeddings``; ``False`` only turns off the decoder-output scaling, as T5 v1.1
    needs). Flan-T5-XL's checkpoint has a head of its own: apply ``untie_lm_head_`` to the
    built model to count and hold what the checkpoint holds.
    """
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, T5Config

    t5 = T5Config(
        vocab_size=32128, d_model=2048, d_kv=64, d_ff=5120, num_layers=24, num_decoder_layers=24,
        num_heads=32, feed_forward_proj="gated-gelu", dense_act_fn="gelu", tie_word_embeddings=False,
        pad_token_id=0, eos_token_id=1, bos_token_id=1, decoder_start_token_id=0,
    )
    config = Blip2Config(
        vision_config=Blip2VisionConfig().to_dict(), qformer_config=Blip2QFormerConfig().to_dict(),
        text_config=t5.to_dict(), num_query_tokens=32,
    )
    config.image_token_id = image_token_id
    return config


def opt_2_7b_blip2_config(image_token_index: int = 50265):
    """The architecture of ``Salesforce/blip2-opt-2.7b`` as an HF ``Blip2Config``, to build with
    random weights (no download): EVA ViT-g/14 and BLIP-2's Q-Former as in
    ``flan_t5_xl_blip2_config``, and OPT-2.7B (2560 wide, 32 layers, 50272 words, its output
    layer tied to its embeddings: 2,651,596,800 parameters). ``image_token_index``: the
    placeholder id transformers 5 expects, one per query, in ``input_ids``."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, OPTConfig

    opt = OPTConfig(
        vocab_size=50272, hidden_size=2560, num_hidden_layers=32, ffn_dim=10240, num_attention_heads=32,
        max_position_embeddings=2048, word_embed_proj_dim=2560, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )
    return Blip2Config(
        vision_config=Blip2VisionConfig().to_dict(), qformer_config=Blip2QFormerConfig().to_dict(),
        text_config=opt.to_dict(), num_query_tokens=32, image_token_index=image_token_index,
    )


def instructblip_flan_t5_xl_config(image_token_index: int = 32100):
    """The architecture of ``Salesforce/instructblip-flan-t5-xl`` as an HF
    ``InstructBlipConfig``, to build with random weights (no download): the vision encoder and
    Flan-T5-XL of ``flan_t5_xl_blip2_config``, and HF's InstructBLIP Q-Former defaults (BERT-base
    with its text parts: 768 wide, 12 layers, cross-attention every second layer, 512 positions)
    with LAVIS's 30523 words (BERT's and ``[DEC]``), 32 queries. ``image_token_index``: the placeholder id transformers 5 expects, one per
    query, before the prompt in ``input_ids``. As there, ``untie_lm_head_`` gives the built
    model's T5 its own head."""
    from transformers import InstructBlipConfig, InstructBlipQFormerConfig, InstructBlipVisionConfig

    t5 = flan_t5_xl_blip2_config().text_config
    return InstructBlipConfig(
        vision_config=InstructBlipVisionConfig().to_dict(), qformer_config=InstructBlipQFormerConfig(vocab_size=30523).to_dict(),
        text_config=t5.to_dict(), num_query_tokens=32, image_token_index=image_token_index,
    )


def untie_lm_head_(model: nn.Module) -> nn.Module:
    """Give T5's ``lm_head`` a weight of its own (a copy of the shared embeddings), as Flan-T5's
    checkpoints have. ``model``: a ``Blip2ForConditionalGeneration`` or a T5 built from a
    config, on any device, the meta device included. HF's ``tie_weights()`` would tie the
    two again. Returns ``model``."""
    lm = getattr(model, "language_model", model)
    head, shared = getattr(lm, "lm_head", None), getattr(lm, "shared", None)
    if not isinstance(head, nn.Linear) or not isinstance(shared, nn.Embedding):
        raise ValueError(f"expected a T5 (an lm_head and shared embeddings), got a {type(lm).__name__}")
    if head.weight is shared.weight:
        head.weight = nn.Parameter(shared.weight.detach().clone(), requires_grad=shared.weight.requires_grad)
    return model


def tiny_hf_blip2_config(
    *, hidden_size=64, num_layers=3, heads=4, freq=2, queries=8, vision_width=48, vocab=120,
    text_input=True, max_positions=40, image_size=32, patch=8, image_text_hidden_size=24,
):
    """A small HF ``Blip2Config`` (T5 language model) for parity checks without a download."""
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig, T5Config

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
        num_query_tokens=queries, image_text_hidden_size=image_text_hidden_size,
    )


def tiny_hf_blip2_opt_config(*, queries=4, vocab=120, **qformer_overrides):
    """A small HF ``Blip2Config`` with an OPT language model (``pad`` 1, ``</s>`` 2 as OPT's
    own, the last id as the image placeholder that transformers 5 expects in ``input_ids``)."""
    from transformers import Blip2Config, OPTConfig

    base = tiny_hf_blip2_config(text_input=False, queries=queries, vocab=vocab, **qformer_overrides)
    opt = OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2,
                    eos_token_id=2)
    return Blip2Config(vision_config=base.vision_config.to_dict(), qformer_config=base.qformer_config.to_dict(),
                       text_config=opt.to_dict(), num_query_tokens=queries, image_token_index=vocab - 1)


def tiny_hf_instructblip_config(language_model: str = "t5", *, queries=4, vocab=120, qformer_vocab=90):
    """A small HF ``InstructBlipConfig`` for parity checks without a download: the vision
    encoder and the Q-Former (with its text parts: it reads the instruction, in a vocabulary
    of its own, ``qformer_vocab``) of ``tiny_hf_blip2_config``, and a language model that is
    ``"t5"`` (Flan-T5's layout), ``"opt"`` or ``"llama"`` (Vicuna's). The last id of the
    language model's vocabulary is the image placeholder."""
    from transformers import InstructBlipConfig, InstructBlipQFormerConfig, LlamaConfig, OPTConfig

    base = tiny_hf_blip2_config(text_input=True, queries=queries, vocab=vocab)
    wanted = set(InstructBlipQFormerConfig().to_dict())
    qformer = {k: v for k, v in base.qformer_config.to_dict().items() if k in wanted}
    qformer.update(vocab_size=qformer_vocab, pad_token_id=0)
    if language_model == "t5":
        text = base.text_config
    elif language_model == "opt":
        text = OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                         max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2,
                         eos_token_id=2)
    elif language_model == "llama":
        text = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64,
                           pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    else:
        raise ValueError(f"language_model must be 't5', 'opt' or 'llama', got {language_model!r}")
    return InstructBlipConfig(vision_config=base.vision_config.to_dict(), qformer_config=qformer,
                              text_config=text.to_dict(), num_query_tokens=queries, image_token_index=vocab - 1)



def tiny_hf_instructblipvideo_config(language_model: str = "t5", *, queries=4, vocab=120, qformer_vocab=90):
    """A small HF ``InstructBlipVideoConfig``: ``tiny_hf_instructblip_config``'s vision encoder,
    Q-Former and language model (``"t5"``, ``"opt"`` or ``"llama"``), the last id of the
    language model's vocabulary as the video placeholder (``video_token_index``), one per query
    per frame."""
    from transformers import InstructBlipVideoConfig

    image = tiny_hf_instructblip_config(language_model, queries=queries, vocab=vocab, qformer_vocab=qformer_vocab)
    return InstructBlipVideoConfig(vision_config=image.vision_config.to_dict(),
                                   qformer_config=image.qformer_config.to_dict(),
                                   text_config=image.text_config.to_dict(), num_query_tokens=queries,
                                   video_token_index=vocab - 1)

def randomize_weights_(model: nn.Module, seed: int = 0, std: float = 0.1) -> nn.Module:
    """Give every parameter a distinct random value (LayerNorm weights around 1), so that a
    swapped or forgotten weight shows in the outputs. HF initialises the query tokens to
    zeros and LayerNorms to (1, 0), which would hide such mistakes."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen) * std
            is_norm_weight = ("layernorm" in name.lower() or "layer_norm" in name.lower()) and name.endswith("weight")
            p.copy_(1.0 + noise if is_norm_weight else noise)
    return model


def word_tokenizer(words: list[str], specials: dict[str, str], template: str, size: int | None = None,
                   split_punctuation: bool = True):
    """A word-level tokenizer built locally, for tests and the chapters' small models: the
    special tokens first (``specials``' values, in order, each once), then ``words``, then
    fillers ``w0``, ``w1``, ... up to ``size`` entries. ``template`` is what it wraps a text in
    ("[CLS] $A [SEP]", "$A </s>"); ``specials`` names their roles (``pad_token="<pad>"``, ...)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    entries = [*dict.fromkeys(specials.values()), *words]
    entries += [f"w{i}" for i in range((size or 0) - len(entries))]
    vocab = {w: i for i, w in enumerate(entries)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace() if split_punctuation else pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in dict.fromkeys(specials.values()) if t in template])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def tiny_t5_tokenizer(vocab_size: int = 120):
    """A word-level T5-like tokenizer (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2, then "a", "photo",
    "of", ... and ``w<i>`` words); it appends ``</s>`` as T5's does. Its last id stays free."""
    words = ["a", "photo", "of", "picture", "image", "showing", "an", "Question:", "what", "is", "it?", "Short",
             "answer:"]
    return word_tokenizer(words, dict(pad_token="<pad>", eos_token="</s>", unk_token="<unk>"), "$A </s>",
                          size=vocab_size - 1, split_punctuation=False)


def synthetic_image(size: int = 224) -> np.ndarray:
    """A small drawn scene (sky, sun, hills, a red house, a tree) as uint8 (size, size, 3).

    Made with numpy only, so that the book and the tests need no image download.
    """
    yy, xx = np.mgrid[0:size, 0:size] / size  # both in [0, 1)
    img = np.zeros((size, size, 3))
    sky = np.stack([0.45 + 0.25 * yy, 0.65 + 0.2 * yy, 0.95 - 0.05 * yy], axis=-1)
    img[:] = sky
    hill = yy > 0.62 + 0.06 * np.sin(6 * xx)
    img[hill] = [0.30, 0.62, 0.25]
    sun = (xx - 0.8) ** 2 + (yy - 0.18) ** 2 < 0.09 ** 2
    img[sun] = [1.0, 0.85, 0.15]
    wall = (xx > 0.14) & (xx < 0.44) & (yy > 0.50) & (yy < 0.78)
    img[wall] = [0.80, 0.15, 0.12]
    roof = (yy > 0.34) & (yy <= 0.50) & (np.abs(xx - 0.29) < (yy - 0.34) * 1.15)
    img[roof] = [0.45, 0.22, 0.12]
    door = (xx > 0.26) & (xx < 0.33) & (yy > 0.64) & (yy < 0.78)
    img[door] = [0.35, 0.18, 0.08]
    trunk = (xx > 0.66) & (xx < 0.70) & (yy > 0.55) & (yy < 0.75)
    img[trunk] = [0.40, 0.26, 0.13]
    crown = (xx - 0.68) ** 2 + (yy - 0.48) ** 2 < 0.10 ** 2
    img[crown] = [0.10, 0.42, 0.12]
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)
