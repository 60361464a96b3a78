"""Load HuggingFace BLIP-2 weights into ``qformer_lite``, through an explicit key map.

HF splits what LAVIS calls the Q-Former across a model: ``query_tokens`` and the text
``embeddings`` sit at the top level, the layers under ``qformer.``. The table below says where
each HF weight goes; any HF Q-Former weight it does not place, and any ``qformer_lite``
weight left unfilled, is an error that lists them.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import torch
from torch import nn

from .config import QFormerConfig
from .pretraining import QFormerPretraining
from .qformer import QFormer

# (HF name, qformer_lite name) as regular expressions; \1 carries the layer index.
QFORMER_KEY_MAP = [
    (r"query_tokens", r"query_tokens.weight"),
    (r"embeddings\.word_embeddings\.weight", r"embeddings.word_embeddings.weight"),
    (r"embeddings\.position_embeddings\.weight", r"embeddings.position_embeddings.weight"),
    (r"qformer\.layernorm\.(weight|bias)", r"layernorm.\1"),
    (r"qformer\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)",
     r"layers.\1.self_attention.attention.\2.\3"),
    (r"qformer\.encoder\.layer\.(\d+)\.attention\.output\.(dense|LayerNorm)\.(weight|bias)",
     r"layers.\1.self_attention.output.\2.\3"),
    (r"qformer\.encoder\.layer\.(\d+)\.crossattention\.attention\.(query|key|value)\.(weight|bias)",
     r"layers.\1.cross_attention.attention.\2.\3"),
    (r"qformer\.encoder\.layer\.(\d+)\.crossattention\.output\.(dense|LayerNorm)\.(weight|bias)",
     r"layers.\1.cross_attention.output.\2.\3"),
    (r"qformer\.encoder\.layer\.(\d+)\.intermediate_query\.dense\.(weight|bias)", r"layers.\1.query_ffn.intermediate.\2"),
    (r"qformer\.encoder\.layer\.(\d+)\.output_query\.(dense|LayerNorm)\.(weight|bias)",
     r"layers.\1.query_ffn.output.\2.\3"),
    (r"qformer\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"layers.\1.text_ffn.intermediate.\2"),
    (r"qformer\.encoder\.layer\.(\d+)\.output\.(dense|LayerNorm)\.(weight|bias)", r"layers.\1.text_ffn.output.\2.\3"),
]
HEAD_KEY_MAP = [
    (r"vision_projection\.(weight|bias)", r"vision_proj.\1"),
    (r"text_projection\.(weight|bias)", r"text_proj.\1"),
    (r"itm_head\.(weight|bias)", r"itm_head.\1"),
]
# Stage-1 parameters that HF does not port (LAVIS's Qformer.cls and temp): kept at their init.
NOT_IN_HF = ("temp", "lm_head.")
# HF weights that are not the Q-Former's: the vision tower, the LLM and its projection.
OTHER_PARTS = ("vision_model.", "language_model.", "language_projection.")
HEAD_PARTS = ("vision_projection.", "text_projection.", "itm_head.")

SUPPORTED = ("Blip2Model", "Blip2ForConditionalGeneration", "Blip2ForImageTextRetrieval")

# InstructBLIP's Q-Former keeps its text embeddings, and the LayerNorm over [queries; text], in
# qformer.embeddings; the layers are named as in BLIP-2
INSTRUCTBLIP_KEY_MAP = [
    (r"qformer\.embeddings\.(word_embeddings|position_embeddings)\.weight", r"embeddings.\1.weight"),
    (r"qformer\.embeddings\.layernorm\.(weight|bias)", r"layernorm.\1"),
] + [(p, t) for p, t in QFORMER_KEY_MAP if not p.startswith(("embeddings", r"qformer\.layernorm"))]


def map_key(name: str, table=QFORMER_KEY_MAP) -> str | None:
    """The ``qformer_lite`` name of an HF weight, or None if the table has no entry for it."""
    for pattern, target in table:
        if re.fullmatch(pattern, name):
            return re.sub(pattern, target, name)
    return None


def config_from_hf(hf_config) -> QFormerConfig:
    """A ``QFormerConfig`` from an HF ``Blip2Config`` (its ``qformer_config`` plus the top level)."""
    q = hf_config.qformer_config
    return QFormerConfig(
        hidden_size=q.hidden_size,
        num_hidden_layers=q.num_hidden_layers,
        num_attention_heads=q.num_attention_heads,
        intermediate_size=q.intermediate_size,
        hidden_act=q.hidden_act,
        hidden_dropout_prob=float(q.hidden_dropout_prob),
        attention_probs_dropout_prob=float(q.attention_probs_dropout_prob),
        layer_norm_eps=q.layer_norm_eps,
        max_position_embeddings=q.max_position_embeddings,
        vocab_size=q.vocab_size,
        cross_attention_frequency=q.cross_attention_frequency,
        encoder_hidden_size=q.encoder_hidden_size,
        initializer_range=q.initializer_range,
        num_query_tokens=hf_config.num_query_tokens,
        image_text_hidden_size=getattr(hf_config, "image_text_hidden_size", 256),  # InstructBLIP has no ITC
        use_qformer_text_input=bool(getattr(q, "use_qformer_text_input", True)),  # InstructBLIP's always reads text
        pad_token_id=q.pad_token_id if q.pad_token_id is not None else 0,
    )


def load_hf_model(model_or_path, classes=SUPPORTED, dtype=torch.float32, check_config=None, device=None,
                  model_type="blip-2"):
    """Return an HF BLIP-2 model (or, with ``model_type="instructblip"`` or
    ``"instructblipvideo"``, an InstructBLIP or InstructBLIP-Video one; a tuple accepts any of
    its types): the one given, or one loaded from a local folder or a hub id.

    ``check_config(config)`` may refuse a checkpoint before its weights are read."""
    import transformers

    if isinstance(model_or_path, nn.Module):
        name = type(model_or_path).__name__
        if name not in classes:
            raise ValueError(f"expected one of {', '.join(classes)}, got a {name}")
        if check_config is not None:
            check_config(model_or_path.config)
        return model_or_path
    if not isinstance(model_or_path, (str, os.PathLike)):
        raise ValueError(f"expected an HF BLIP-2 model, a model id or a folder, got {type(model_or_path).__name__}")
    path = Path(model_or_path)
    text = str(model_or_path)
    looks_local = path.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1  # hub ids: "org/name"
    if looks_local and not path.is_dir():
        raise FileNotFoundError(f"no model folder at '{text}'")
    try:
        hf_config = transformers.AutoConfig.from_pretrained(text)
    except OSError as err:
        where = f"the folder '{text}'" if looks_local else f"the HuggingFace hub id '{text}' (offline, or no such model?)"
        raise OSError(f"could not read a model config from {where}: {err}") from None
    arch = (getattr(hf_config, "architectures", None) or [classes[0]])[0]
    wanted = (model_type,) if isinstance(model_type, str) else tuple(model_type)
    if getattr(hf_config, "model_type", None) not in wanted:
        raise ValueError(f"'{text}' is a {getattr(hf_config, 'model_type', '?')!r} model, not a "
                         f"{' or '.join(map(repr, wanted))} one")
    if arch not in classes:
        raise ValueError(f"'{text}' holds a {arch}; expected one of {', '.join(classes)}")
    if check_config is not None:
        check_config(hf_config)
    extra = {}
    if device is not None and str(device) != "cpu" and importlib.util.find_spec("accelerate") is not None:
        extra["device_map"] = str(device)  # straight onto the GPU: a Colab VM has less RAM than a T4 + the model
    return getattr(transformers, arch).from_pretrained(text, dtype=dtype, **extra)


def load_mapped(hf_state: dict, target: nn.Module, tables, prefix_skip=()) -> None:
    """Copy HF weights into ``target`` through the key maps ``tables`` (HF name -> qformer_lite
    name); raise listing the weights left unplaced and those left unfilled."""
    own = target.state_dict()
    filled, unexpected = set(), []
    for hf_name, tensor in hf_state.items():
        if hf_name.startswith(OTHER_PARTS + tuple(prefix_skip)):
            continue
        lite_name = next((n for table in tables if (n := map_key(hf_name, table)) is not None), None)
        if lite_name is None or lite_name not in own:
            unexpected.append(hf_name if lite_name is None else f"{hf_name} -> {lite_name}")
            continue
        if own[lite_name].shape != tensor.shape:
            raise ValueError(
                f"shape mismatch for {hf_name} -> {lite_name}: HF {tuple(tensor.shape)}, "
                f"qformer_lite {tuple(own[lite_name].shape)}"
            )
        own[lite_name] = tensor.detach().to(own[lite_name].dtype)
        filled.add(lite_name)
    missing = [n for n in own if n not in filled and not n.startswith(NOT_IN_HF)]
    if unexpected or missing:
        raise ValueError(
            "the HF checkpoint does not fit qformer_lite's key map:\n"
            f"  unexpected HF weights ({len(unexpected)}): {unexpected}\n"
            f"  qformer_lite weights left unfilled ({len(missing)}): {missing}"
        )
    target.load_state_dict(own)


def qformer_from_hf(model_or_path) -> QFormer:
    """A ``QFormer`` holding the Q-Former of an HF ``Blip2Model``, ``Blip2ForConditionalGeneration``
    or ``Blip2ForImageTextRetrieval`` (or of a model id / local folder holding one).

    Stage-2 checkpoints have no text embeddings and no text FFN (BLIP-2 deleted them); the
    result is then a query-only ``QFormer`` that refuses ``input_ids``.
    """
    hf = load_hf_model(model_or_path)
    state = hf.state_dict()
    config = config_from_hf(hf.config)
    has_text = "embeddings.word_embeddings.weight" in state
    text_ffn_keys = [k for k in state if re.fullmatch(r"qformer\.encoder\.layer\.\d+\.(intermediate|output)\..*", k)]
    # A Blip2Model can carry the text FFN without word embeddings: no usable text path then.
    skip = () if has_text else tuple(text_ffn_keys)
    config.use_qformer_text_input = has_text
    model = QFormer(config)
    load_mapped(state, model, [QFORMER_KEY_MAP], prefix_skip=skip + HEAD_PARTS)
    return model.eval()


def pretraining_from_hf(model_or_path) -> QFormerPretraining:
    """A ``QFormerPretraining`` from an HF ``Blip2ForImageTextRetrieval`` (the ITM/ITC checkpoint
    ``Salesforce/blip2-itm-vit-g``). HF has no ``temp`` and no LM head: they keep their init."""
    hf = load_hf_model(model_or_path, classes=("Blip2ForImageTextRetrieval",))
    config = config_from_hf(hf.config)
    config.use_qformer_text_input = True
    model = QFormerPretraining(config)
    prefixed = [(p, "qformer." + t) for p, t in QFORMER_KEY_MAP]
    load_mapped(hf.state_dict(), model, [prefixed, HEAD_KEY_MAP])
    return model.eval()


LANGUAGE_MODELS = {"t5": "blip2_t5_from_hf", "opt": "blip2_opt_from_hf"}  # BLIP-2's two kinds


def _require_language_model(kind: str):
    def check(hf_config) -> None:
        found = getattr(hf_config.text_config, "model_type", "?")
        if found not in LANGUAGE_MODELS:
            raise ValueError(f"this BLIP-2 checkpoint's language model is {found!r}; qformer_lite loads "
                             f"{' and '.join(LANGUAGE_MODELS)} ones")
        if found != kind:
            raise ValueError(f"this BLIP-2 checkpoint's language model is {found!r}, not {kind!r}: "
                             f"load it with qformer_lite.hf.{LANGUAGE_MODELS[found]}")
    return check


def _blip2_parts(model_or_path, kind: str, dtype, device):
    """The HF model (its weights read in float16 for a 16-bit ``dtype``, see
    ``blip2_t5_from_hf``) and its Q-Former converted, in float32."""
    load_dtype = torch.float16 if dtype in (torch.float16, torch.bfloat16) else (dtype or torch.float32)
    hf = load_hf_model(model_or_path, ("Blip2ForConditionalGeneration",), load_dtype,
                       check_config=_require_language_model(kind), device=device)
    return hf, qformer_from_hf(hf).float()


def _assembled(model, hf, device):
    model.language_projection = hf.language_projection  # same weights and dtype as HF's
    model.requires_grad_(False)
    for part in (model.qformer, model.language_projection):
        part.requires_grad_(True)
    model.eval()
    return model.to(device) if device is not None else model


def blip2_t5_from_hf(model_or_path, dtype: torch.dtype | None = None, device=None):
    """A ``Blip2T5`` from an HF ``Blip2ForConditionalGeneration`` with a T5 language model (or a
    model id such as ``Salesforce/blip2-flan-t5-xl``, or a local folder holding one).

    HF's vision encoder (its ``post_layernorm`` is LAVIS's ``ln_vision``), projection and T5
    are reused as they are and shared with the HF model; the query tokens and the Q-Former are
    converted into ``qformer_lite`` and kept in float32. Only the Q-Former and the projection
    require grad, as ``Blip2T5`` trains; LAVIS's stage 2 also trains ``ln_vision`` (here
    ``vision_encoder.post_layernorm``).

    Precision. LAVIS runs the ViT in float16 (``ln_vision`` computes in float32), the Q-Former
    and ``t5_proj`` in float32, and T5 in bfloat16. ``dtype`` moves the vision encoder, the
    projection and T5 together: with ``torch.bfloat16`` the Q-Former (float32) and T5
    (bfloat16) are as in LAVIS, while the ViT and the projection are bfloat16, not float16
    and float32. ``torch.float16`` (for GPUs without fast bfloat16, such as a T4) keeps T5's
    feed-forward output layers (``wo``) in float32, as HF does, since Flan-T5 overflows
    float16 there; a T5 with float16 ``wo`` is refused. ``None`` leaves every part as it is.

    From a folder or an id with a 16-bit ``dtype``, the weights are read in float16, the one
    dtype for which HF keeps ``query_tokens``, ``qformer`` and T5's ``wo`` in float32, and
    then moved to ``dtype``: read in bfloat16, the Q-Former would be rounded to bfloat16
    before its conversion to float32. Without ``dtype`` they are read in float32.
    """
    from .blip2_t5 import Blip2T5

    hf, qformer = _blip2_parts(model_or_path, "t5", dtype, device)
    if dtype is not None:
        for part in (hf.vision_model, hf.language_projection, hf.language_model):
            part.to(dtype)
        if dtype == torch.float16:
            for name, module in hf.language_model.named_modules():
                if name.endswith(".wo"):
                    module.float()
    return _assembled(Blip2T5(hf.vision_model, qformer, hf.language_model), hf, device)


def blip2_opt_from_hf(model_or_path, dtype: torch.dtype | None = None, device=None):
    """A ``Blip2OPT`` from an HF ``Blip2ForConditionalGeneration`` with an OPT language model (or
    a model id such as ``Salesforce/blip2-opt-2.7b``, or a local folder holding one), through
    the same key map as ``blip2_t5_from_hf``: the vision encoder, the projection and OPT are
    HF's own, the Q-Former is converted and kept in float32.

    Precision. LAVIS runs OPT in float16 (``blip2_opt.py``), and OPT, unlike T5, is at home
    there: ``dtype=torch.float16`` moves the vision encoder, the projection and OPT to it.
    ``None`` leaves every part as it is.
    """
    from .blip2_opt import Blip2OPT

    hf, qformer = _blip2_parts(model_or_path, "opt", dtype, device)
    if dtype is not None:
        for part in (hf.vision_model, hf.language_projection, hf.language_model):
            part.to(dtype)
    return _assembled(Blip2OPT(hf.vision_model, qformer, hf.language_model), hf, device)


def instructblip_from_hf(model_or_path, dtype: torch.dtype | None = None, device=None):
    """An ``InstructBlipT5`` (Flan-T5) or ``InstructBlipDecoder`` (Vicuna, OPT) from an HF
    ``InstructBlipForConditionalGeneration`` (or a model id such as
    ``Salesforce/instructblip-flan-t5-xl`` or ``Salesforce/instructblip-vicuna-7b``, or a local
    folder holding one). The Q-Former, with its text parts, is converted through the key map
    (``INSTRUCTBLIP_KEY_MAP``) and kept in float32; the vision encoder, the projection and the
    language model are HF's own, shared with the HF model.

    Precision. ``dtype`` moves the vision encoder, the projection and the language model, as
    ``blip2_t5_from_hf`` does (T5's ``wo`` stays float32 in float16). HF keeps only the query
    tokens in float32 when it reads InstructBLIP in 16 bits, not the Q-Former: from a folder or
    an id with a 16-bit ``dtype``, the Q-Former's weights arrive rounded to float16 before they
    are converted to float32. LAVIS keeps its Q-Former's weights in float32 (its ViT in float16,
    T5 in bfloat16).
    """
    from .instructblip import InstructBlipDecoder, InstructBlipT5

    return _instructblip_family(model_or_path, dtype, device, ("InstructBlipForConditionalGeneration",),
                                "instructblip", "InstructBLIP", InstructBlipT5, InstructBlipDecoder)


def instructblipvideo_from_hf(model_or_path, dtype: torch.dtype | None = None, device=None):
    """An ``InstructBlipVideoT5`` (Flan-T5) or ``InstructBlipVideoDecoder`` (Vicuna, OPT) from an
    HF ``InstructBlipVideoForConditionalGeneration`` (or a model id or a local folder holding
    one). InstructBLIP-Video is InstructBLIP run on every frame, with
    InstructBLIP's weights under InstructBLIP's names: they go through the same key map
    (``INSTRUCTBLIP_KEY_MAP``), with the same precision rules as ``instructblip_from_hf``, and an
    InstructBLIP checkpoint is taken too (HF's own example loads
    ``Salesforce/instructblip-vicuna-7b`` into ``InstructBlipVideoForConditionalGeneration``)."""
    from .video import InstructBlipVideoDecoder, InstructBlipVideoT5

    return _instructblip_family(model_or_path, dtype, device,
                                ("InstructBlipVideoForConditionalGeneration", "InstructBlipForConditionalGeneration"),
                                ("instructblipvideo", "instructblip"), "InstructBLIP-Video", InstructBlipVideoT5,
                                InstructBlipVideoDecoder)


def _instructblip_family(model_or_path, dtype, device, hf_classes, model_type, name, t5_class, decoder_class):
    load_dtype = torch.float16 if dtype in (torch.float16, torch.bfloat16) else (dtype or torch.float32)
    hf = load_hf_model(model_or_path, hf_classes, load_dtype, device=device, model_type=model_type)
    config = config_from_hf(hf.config)
    qformer = QFormer(config)
    load_mapped(hf.state_dict(), qformer, [INSTRUCTBLIP_KEY_MAP])
    qformer = qformer.float().eval()
    kind = getattr(hf.config.text_config, "model_type", "?")
    if dtype is not None:
        for part in (hf.vision_model, hf.language_projection, hf.language_model):
            part.to(dtype)
        if dtype == torch.float16 and kind == "t5":
            for module_name, module in hf.language_model.named_modules():
                if module_name.endswith(".wo"):
                    module.float()
    if hf.config.use_decoder_only_language_model:
        model = decoder_class(hf.vision_model, qformer, hf.language_model)
    elif kind == "t5":
        model = t5_class(hf.vision_model, qformer, hf.language_model)
    else:
        raise ValueError(f"this {name} checkpoint's language model is {kind!r}; qformer_lite loads T5 "
                         "and decoder-only (causal) ones")
    return _assembled(model, hf, device)
