"""The two frozen models of the miniature, briefly pretrained, and the tokenizer they share.

BLIP-2 borrows a ViT that has already learned to see (EVA-CLIP) and an LLM that already
knows language (Flan-T5). Ours learn in seconds:

- The image encoder, a tiny timm ViT, learns with dense supervision: for every patch token,
  what colour and what shape sits in the cell under that patch (or nothing), and which
  patch it is. By default each object fills one patch (in ``compare.connector_world``,
  several), so after this the patch tokens say *what sits where*, which is exactly what the
  captions need; the Q-Former then only has to read it out. A randomly initialised encoder
  would leave the Q-Former to learn vision too, with far too little data and time.
- The tokenizer is word-level, built locally with the ``tokenizers`` library from the caption
  language's words; one vocabulary serves both models, with BERT-style framing for the
  Q-Former (``[CLS] words [SEP]``, and ``[DEC]`` for generation) and T5-style for T5
  (``words </s>``).
- The T5 is pretrained as a denoising autoencoder of captions: it reads a corrupted caption
  (some words dropped or masked, or nothing at all) and writes the whole caption back. That
  matters for stage 2: the Q-Former's soft prompt then only has to *resemble* a caption in
  T5's input space for T5 to write it out cleanly. A T5 trained only to continue text
  (prefix LM) barely listens to its encoder, and a soft prompt can hardly steer it.

``load_standins`` builds both (or reads them from the cache).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from torch import nn
from transformers import OPTConfig, OPTForCausalLM, T5Config, T5ForConditionalGeneration

from . import cache
from .config import DecoderConfig, LanguageConfig, MiniatureConfig, VisionConfig
from .data import COLOURS, GRID, SHAPES, SPECIAL_TOKENS, ImagePool, Scene, ShapesDataset, all_captions, vocabulary
from .trainer import fit, freeze, seeded

# --- the image encoder ---------------------------------------------------------------------


class ImageEncoder(nn.Module):
    """pixels (B, 3, H, W) -> tokens (B, 1 + N, C): [CLS; one per patch], after the final LayerNorm."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.config = config
        self.vit = VisionTransformer(
            img_size=config.image_size, patch_size=config.patch_size, embed_dim=config.embed_dim,
            depth=config.depth, num_heads=config.num_heads, mlp_ratio=config.mlp_ratio,
            num_classes=0, global_pool="",
        )
        nn.init.normal_(self.vit.pos_embed, std=config.pos_embed_std)

    @property
    def hidden_size(self) -> int:
        return self.config.embed_dim

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != (3, size, size):
            raise ValueError(f"pixel_values must have shape (B, 3, {size}, {size}), got {tuple(pixel_values.shape)}")
        return self.vit.forward_features(pixel_values)  # (B, 1 + N, C)


class PatchProbe(nn.Module):
    """Pretraining heads on each patch token: colour (or none), shape (or none), which patch."""

    def __init__(self, config: VisionConfig):
        super().__init__()
        self.colour = nn.Linear(config.embed_dim, len(COLOURS) + 1)
        self.shape = nn.Linear(config.embed_dim, len(SHAPES) + 1)
        self.place = nn.Linear(config.embed_dim, config.num_patches)

    def forward(self, patch_tokens: torch.Tensor):  # (B, N, C)
        return self.colour(patch_tokens), self.shape(patch_tokens), self.place(patch_tokens)


def patch_labels(scenes: list[Scene], patches_per_side: int = GRID) -> tuple[torch.Tensor, torch.Tensor]:
    """Per patch: colour index + 1 and shape index + 1 of the object in the cell that holds the
    patch's centre, 0 where that cell is empty. (B, N) each, N = patches_per_side ** 2, row by
    row. With one patch per cell (the default) a patch's cell is the patch itself."""
    colours, shapes = list(COLOURS), list(SHAPES)
    cell = torch.zeros(len(scenes), GRID, GRID, 2, dtype=torch.long)
    for i, scene in enumerate(scenes):
        for o in scene.objects:
            cell[i, o.row, o.col] = torch.tensor([colours.index(o.colour) + 1, shapes.index(o.shape) + 1])
    of = ((torch.arange(patches_per_side) + 0.5) * GRID / patches_per_side).long()  # patch row -> cell row
    grid = cell[:, of][:, :, of]  # (B, side, side, 2)
    grid = grid.reshape(len(scenes), patches_per_side ** 2, 2)
    return grid[..., 0], grid[..., 1]


def probe_loss(probe: PatchProbe, patch_tokens, colour, shape) -> torch.Tensor:
    c_logits, s_logits, p_logits = probe(patch_tokens)  # (B, N, *)
    place = torch.arange(patch_tokens.shape[1]).expand(patch_tokens.shape[0], -1)  # (B, N)
    return (
        F.cross_entropy(c_logits.flatten(0, 1), colour.flatten())
        + F.cross_entropy(s_logits.flatten(0, 1), shape.flatten())
        + F.cross_entropy(p_logits.flatten(0, 1), place.flatten())
    )


def pretrain_image_encoder(
    config: VisionConfig, pool: ImagePool, seed: int = 0, progress: bool = True
) -> tuple[ImageEncoder, dict[str, list[float]]]:
    """Train a fresh encoder on the dense patch labels of a pool of images; returns it frozen."""
    with seeded(seed):  # the only draws from the global generator; the caller's state is kept
        encoder, probe = ImageEncoder(config), PatchProbe(config)
    colour, shape = patch_labels(pool.scenes, config.patches_per_side)
    gen = torch.Generator().manual_seed(seed)

    def step(_: int) -> dict[str, torch.Tensor]:
        idx = torch.randint(len(pool), (config.optim.batch_size,), generator=gen)
        tokens = encoder(pool.pixels(idx))[:, 1:]  # (B, N, C), the patch tokens
        return {"loss": probe_loss(probe, tokens, colour[idx], shape[idx])}

    params = list(encoder.parameters()) + list(probe.parameters())
    history = fit(params, config.optim, step, "image encoder", progress)
    return freeze(encoder), history

# --- the tokenizer and the language model --------------------------------------------------


class CaptionTokenizer:
    """Word-level tokenizer over the captions' words. ``<pad>`` is 0 (T5's pad and decoder
    start, and the Q-Former's pad), ``</s>`` is T5's end, ``[CLS]``/``[SEP]`` frame the
    Q-Former's text, ``[DEC]`` replaces ``[CLS]`` for its ITG pass."""

    def __init__(self, words: list[str] | None = None, framing: str = "t5"):
        words = vocabulary() if words is None else list(words)
        clash = sorted(set(words) & set(SPECIAL_TOKENS))
        if clash:
            raise ValueError(f"words must not contain special tokens, got {clash}")
        if len(set(words)) != len(words):
            raise ValueError("words must not repeat: each word gets one id")
        if framing not in ("t5", "opt"):
            raise ValueError(f"framing must be 't5' or 'opt' (the language model the tokenizer's calls serve), "
                             f"got {framing!r}")
        self.framing = framing
        self.vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *words])}
        self.words = words
        self._t5 = self._build("$A </s>", [("</s>", self.eos_token_id)])
        self._qformer = self._build("[CLS] $A [SEP]", [("[CLS]", self.cls_token_id), ("[SEP]", self.sep_token_id)])
        self._opt = self._build("</s> $A </s>", [("</s>", self.eos_token_id)])
        self._opt_prompt = self._build("</s> $A", [("</s>", self.eos_token_id)])

    def _build(self, template: str, specials) -> Tokenizer:
        tok = Tokenizer(models.WordLevel(self.vocab, unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tok.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
        tok.enable_padding(pad_id=self.pad_token_id, pad_token="<pad>")
        return tok

    def __len__(self) -> int:
        return len(self.vocab)

    pad_token_id = property(lambda self: self.vocab["<pad>"])
    eos_token_id = property(lambda self: self.vocab["</s>"])
    unk_token_id = property(lambda self: self.vocab["<unk>"])
    cls_token_id = property(lambda self: self.vocab["[CLS]"])
    sep_token_id = property(lambda self: self.vocab["[SEP]"])
    dec_token_id = property(lambda self: self.vocab["[DEC]"])
    mask_token_id = property(lambda self: self.vocab["<mask>"])

    @staticmethod
    def _batch(tok: Tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        if isinstance(texts, str):
            raise ValueError("expected a list of texts, got one string; wrap it in a list")
        enc = tok.encode_batch(list(texts))
        ids = torch.tensor([e.ids for e in enc], dtype=torch.long)  # (B, T)
        mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.long)  # (B, T)
        return ids, mask

    def t5(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``words </s>``, right-padded: ids and mask, (B, T) each."""
        return self._batch(self._t5, texts)

    def opt(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``</s> words </s>``, right-padded, as OPT frames a text (``</s>`` is its start and its
        end): ids and mask, (B, T) each."""
        return self._batch(self._opt, texts)

    def opt_prompt(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``</s> text``, right-padded: OPT's start token and the text, no end token (a prompt
        to continue, or a text that writes its own end, as a chat turn ends with ``###``)."""
        return self._batch(self._opt_prompt, texts)

    def qformer(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[CLS] words [SEP]``, right-padded: ids and mask, (B, T) each."""
        return self._batch(self._qformer, texts)

    def __call__(self, texts: list[str], padding: str | bool = "longest", return_tensors: str = "pt"):
        """The HuggingFace tokenizer call that ``Captioner`` makes, framed as the language
        model's own tokenizer frames a text: T5's ``words </s>``, or OPT's ``</s> words``
        (``framing="opt"``); right-padded to the longest. Returns an object with
        ``.input_ids`` and ``.attention_mask``."""
        if padding not in ("longest", True) or return_tensors != "pt":
            raise ValueError(
                f"CaptionTokenizer pads to the longest text and returns torch tensors: expected "
                f'padding="longest" and return_tensors="pt", got padding={padding!r}, '
                f"return_tensors={return_tensors!r}"
            )
        ids, mask = self.t5(texts) if self.framing == "t5" else self.opt_prompt(texts)
        return SimpleNamespace(input_ids=ids, attention_mask=mask)

    def decode(self, ids) -> str:
        """Words of one sequence, stopping at ``</s>`` and skipping the other special tokens."""
        inv = {i: t for t, i in self.vocab.items()}
        out = []
        for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
            if i == self.eos_token_id:
                break
            tok = inv.get(int(i), "<unk>")
            if tok not in SPECIAL_TOKENS:
                out.append(tok)
        return " ".join(out)

    def batch_decode(self, ids, skip_special_tokens: bool = True) -> list[str]:
        """Words of each row; special tokens are always skipped (as HF's ``skip_special_tokens``)."""
        return [self.decode(row) for row in ids]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"words": self.words, "framing": self.framing}, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "CaptionTokenizer":
        saved = json.loads(Path(path).read_text())
        return cls(saved["words"], saved.get("framing", "t5"))


def t5_config(config: LanguageConfig, tokenizer: CaptionTokenizer) -> T5Config:
    """The T5 stand-in's configuration, without building the model."""
    return T5Config(
        vocab_size=len(tokenizer), d_model=config.d_model, d_kv=config.d_kv, d_ff=config.d_ff,
        num_layers=config.num_layers, num_decoder_layers=config.num_decoder_layers, num_heads=config.num_heads,
        relative_attention_num_buckets=config.relative_attention_num_buckets,
        relative_attention_max_distance=config.relative_attention_max_distance, dropout_rate=0.0,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False,  # Flan-T5's (T5 v1.1) layout
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )


def build_t5(config: LanguageConfig, tokenizer: CaptionTokenizer) -> T5ForConditionalGeneration:
    return T5ForConditionalGeneration(t5_config(config, tokenizer))


def corrupt(caption: str, rng: np.random.Generator, config: LanguageConfig) -> str:
    """One corrupted copy of a caption: unchanged, some words dropped, some masked, or two
    neighbours swapped (one of ``config.corruptions`` at random); or, with ``empty_prob``,
    nothing at all."""
    words = caption.split()
    if rng.random() < config.empty_prob:
        return ""
    kind = config.corruptions[int(rng.integers(len(config.corruptions)))]
    if kind == "none":
        pass
    elif kind == "drop":
        keep = rng.random(len(words)) >= config.drop_prob
        keep[rng.integers(len(words))] = True
        words = [w for w, k in zip(words, keep) if k]
    elif kind == "mask":
        words = ["<mask>" if rng.random() < config.mask_prob else w for w in words]
    else:  # "swap"
        i = int(rng.integers(len(words) - 1))
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def pretrain_t5(
    config: LanguageConfig, tokenizer: CaptionTokenizer, captions: list[str], seed: int = 0, progress: bool = True
) -> tuple[T5ForConditionalGeneration, dict[str, list[float]]]:
    """Train a fresh tiny T5 to rebuild captions from corrupted ones; returns it frozen."""
    with seeded(seed):  # the only draws from the global generator; the caller's state is kept
        model = build_t5(config, tokenizer)
    rng = np.random.default_rng([seed, 11])

    def step(_: int) -> dict[str, torch.Tensor]:
        targets = [captions[i] for i in rng.integers(len(captions), size=config.optim.batch_size)]
        inputs = [corrupt(c, rng, config) for c in targets]
        ids, mask = tokenizer.t5(inputs)  # (B, T_in)
        labels, label_mask = tokenizer.t5(targets)  # (B, T_out)
        labels = labels.masked_fill(label_mask == 0, -100)
        return {"loss": model(input_ids=ids, attention_mask=mask, labels=labels).loss}

    history = fit(model.parameters(), config.optim, step, "language model", progress)
    return freeze(model), history

# MiniGPT-4's stage-2 chat template, in words the word-level tokenizer splits on spaces:
# "###Human: <Img><ImageHere></Img> Describe this image in detail. ###Assistant: {caption}###"
CHAT_PROMPT = "###Human: <Img> <ImageHere> </Img> Describe this image. ###Assistant:"
CHAT_END = "###"
CHAT_WORDS = ("###Human:", "<Img>", "<ImageHere>", "</Img>", "Describe", "this", "image.", "###Assistant:", CHAT_END)


def chat_tokenizer() -> CaptionTokenizer:
    """The decoder-only stand-in's tokenizer: the caption words with their usual ids, then the
    chat template's words (so T5 and the Q-Former, which never see a chat, keep theirs);
    called as HuggingFace's, it frames a text as OPT's tokenizer does, ``</s> words``."""
    words = vocabulary()
    clash = sorted(set(words) & set(CHAT_WORDS))
    if clash:
        raise ValueError(f"the chat words must not be caption words, got {clash}")
    return CaptionTokenizer([*words, *CHAT_WORDS], framing="opt")


def chat_text(image_words: str, caption: str | None = None) -> str:
    """The chat template with ``image_words`` where the image goes (``<ImageHere>`` itself, or,
    in pretraining, a corrupted copy of the caption), followed by the answer and the end
    symbol when ``caption`` is given."""
    text = CHAT_PROMPT.replace("<ImageHere>", image_words)
    return text if caption is None else f"{text} {caption} {CHAT_END}"


def answer_labels(ids: torch.Tensor, mask: torch.Tensor, marker: int) -> torch.Tensor:
    """Labels for a chat turn: what follows the first ``marker`` (``###Assistant:``), the
    answer and its ``###``, are targets; the prompt, the image and the padding are -100."""
    after = (ids == marker).long().cumsum(1) > 0
    target = after & (ids != marker) & (mask == 1)
    return ids.masked_fill(~target, -100)


def opt_config(config: DecoderConfig, tokenizer: CaptionTokenizer) -> OPTConfig:
    """The decoder-only stand-in's configuration: OPT's layout, no dropout."""
    return OPTConfig(
        vocab_size=len(tokenizer), hidden_size=config.hidden_size, num_hidden_layers=config.num_hidden_layers,
        ffn_dim=config.ffn_dim, num_attention_heads=config.num_attention_heads,
        max_position_embeddings=config.max_position_embeddings, word_embed_proj_dim=config.hidden_size,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
    )


def build_opt(config: DecoderConfig, tokenizer: CaptionTokenizer) -> OPTForCausalLM:
    return OPTForCausalLM(opt_config(config, tokenizer))


def rebuild_labels(ids: torch.Tensor, mask: torch.Tensor, eos: int) -> torch.Tensor:
    """Labels for ``</s> context </s> caption </s>``: the caption's words and its final
    ``</s>`` are targets, the context and the padding are -100."""
    seen = (ids == eos).long().cumsum(1)  # 1 at the start, 2 from the middle </s>, 3 at the end
    target = (seen >= 2) & ~((seen == 2) & (ids == eos)) & (mask == 1)
    return ids.masked_fill(~target, -100)


def pretrain_opt(
    config: DecoderConfig, corruption: LanguageConfig, tokenizer: CaptionTokenizer, captions: list[str],
    seed: int = 0, progress: bool = True,
) -> tuple[OPTForCausalLM, dict[str, list[float]]]:
    """Train a fresh tiny OPT to write a caption after a corrupted copy of it (``corrupt``
    with ``corruption``'s settings), the decoder-only form of the T5 stand-in's task; returns
    it frozen. A ``config.chat_fraction`` of the examples come in MiniGPT-4's chat template
    (``chat_text``), the copy between ``<Img>`` and ``</Img>`` and the caption as the answer,
    ``###`` its end; the others as ``</s> copy </s> caption </s>``. ``tokenizer`` must hold
    the chat words (``chat_tokenizer``) when ``chat_fraction`` > 0."""
    with seeded(seed):
        model = build_opt(config, tokenizer)
    rng = np.random.default_rng([seed, 13])
    assistant = tokenizer.vocab.get("###Assistant:") if config.chat_fraction else None
    if config.chat_fraction and assistant is None:
        raise ValueError("chat_fraction > 0 needs the chat words in the tokenizer: use standins.chat_tokenizer()")

    def step(_: int) -> dict[str, torch.Tensor]:
        targets = [captions[i] for i in rng.integers(len(captions), size=config.optim.batch_size)]
        chat = rng.random(len(targets)) < config.chat_fraction  # (B,)
        copies = [corrupt(c, rng, corruption) for c in targets]
        texts = [chat_text(copy, c) if in_chat else f"{copy} </s> {c} </s>"
                 for c, copy, in_chat in zip(targets, copies, chat)]
        ids, mask = tokenizer.opt_prompt(texts)  # (B, T), each "</s> ..."
        labels = rebuild_labels(ids, mask, tokenizer.eos_token_id)
        if chat.any():
            labels = torch.where(torch.from_numpy(chat)[:, None], answer_labels(ids, mask, assistant), labels)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, T, V)
        return {"loss": F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)}

    history = fit(model.parameters(), config.optim, step, "decoder-only language model", progress)
    return freeze(model), history


def cached_decoder(config: MiniatureConfig, progress: bool = True, use_cache: bool = True):
    """The decoder-only stand-in read from the cache, or pretrained (and cached): (model,
    history, from_cache). It reads the training split's captions, as T5 does, with the chat
    words in its vocabulary (``chat_tokenizer``)."""
    tokenizer = chat_tokenizer()
    captions = ShapesDataset("train", config.data, seed=config.seed).captions
    model, history, hit = cache.cached_training(
        cache.entry_for("decoder-model", config), build_opt(config.decoder, tokenizer),
        lambda: pretrain_opt(config.decoder, config.language, tokenizer, captions, seed=config.seed,
                             progress=progress), use_cache)
    return freeze(model), history, hit


# --- both, built or read from the cache ----------------------------------------------------


@dataclass
class StandIns:
    """What stays frozen while the Q-Former trains, and the images it trains on."""

    image_encoder: ImageEncoder
    language_model: nn.Module  # a tiny T5ForConditionalGeneration
    tokenizer: CaptionTokenizer
    train_pool: ImagePool
    vision_history: dict = field(default_factory=dict)  # {"loss": one value per step}
    language_history: dict = field(default_factory=dict)
    from_cache: bool = False


def train_pool(config: MiniatureConfig) -> ImagePool:
    return ShapesDataset("train", config.data, seed=config.seed).pool(range(config.train_images))


def test_pool(config: MiniatureConfig) -> ImagePool:
    """Every image of the held-out split."""
    test = ShapesDataset("test", config.data, seed=config.seed)
    return test.pool(range(len(test)))


def load_standins(config: MiniatureConfig, progress: bool = True, use_cache: bool = True,
                  seconds: dict | None = None) -> StandIns:
    """The pretrained image encoder and T5, read from the cache, or pretrained (and cached) if
    absent. ``seconds``, if given, receives the wall time of each part."""
    seconds = {} if seconds is None else seconds
    t = time.perf_counter()
    pool = train_pool(config)
    seconds["images"] = time.perf_counter() - t
    tokenizer = CaptionTokenizer()
    # T5 reads the training split's captions (or every sentence of the language), never the test's
    captions = (all_captions() if config.language.corpus == "all"
                else ShapesDataset("train", config.data, seed=config.seed).captions)
    t = time.perf_counter()
    encoder, v_hist, v_hit = cache.cached_training(
        cache.entry_for("image-encoder", config), ImageEncoder(config.vision),
        lambda: pretrain_image_encoder(config.vision, pool, seed=config.seed, progress=progress), use_cache)
    seconds["image_encoder"] = time.perf_counter() - t
    t = time.perf_counter()
    t5, l_hist, l_hit = cache.cached_training(
        cache.entry_for("language-model", config), build_t5(config.language, tokenizer),
        lambda: pretrain_t5(config.language, tokenizer, captions, seed=config.seed, progress=progress), use_cache)
    seconds["language_model"] = time.perf_counter() - t
    return StandIns(freeze(encoder), freeze(t5), tokenizer, pool, v_hist, l_hist, from_cache=v_hit and l_hit)


@torch.no_grad()
def encode_images(encoder: nn.Module, pool: ImagePool, batch_size: int = 1024) -> torch.Tensor:
    """The frozen encoder's features of every image of a pool: (N, 1 + patches, C).

    The encoder never changes, so both stages read these, computed once per image, instead
    of running it again at every step."""
    encoder.eval()
    chunks = [encoder(pool.pixels(slice(i, i + batch_size))) for i in range(0, len(pool), batch_size)]
    return torch.cat(chunks)
