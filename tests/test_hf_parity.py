"""qformer_lite against HuggingFace's BLIP-2 classes, random weights from configs (no download)."""

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2Model, Blip2QFormerConfig
from transformers import Blip2QFormerModel

from hf_helpers import build, padded_text, randomize_weights_, tiny_hf_blip2_config
from qformer_lite import QFormerConfig, build_attention_mask
from qformer_lite.attention import cross_attention_form
from qformer_lite.hf import QFORMER_KEY_MAP, load_mapped, pretraining_from_hf, qformer_from_hf
from qformer_lite.qformer import QFormer

TOL = 1e-5

CONFIGS = {
    "freq1": dict(freq=1),
    "freq2": dict(freq=2),
    "freq3-5layers": dict(freq=3, num_layers=5),
    "odd-layers": dict(num_layers=3, freq=2),
    "one-query": dict(queries=1),
    "many-queries": dict(queries=32, num_layers=2),
    "wide-image": dict(vision_width=96, hidden_size=64),
    "image-as-wide-as-hidden": dict(vision_width=64, hidden_size=64),
}


def max_diff(a, b):
    return (a - b).abs().max().item()


@pytest.fixture(params=list(CONFIGS), scope="module")
def retrieval(request):
    cfg = tiny_hf_blip2_config(**CONFIGS[request.param])
    hf = build(Blip2ForImageTextRetrieval, cfg, seed=len(request.param))
    return hf, pretraining_from_hf(hf)


def batch(hf, b=3, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    size = hf.config.vision_config.image_size
    px = torch.randn(b, 3, size, size, generator=g)
    ids, mask = padded_text(b, t, hf.config.qformer_config.vocab_size, seed)
    with torch.no_grad():
        img = hf.vision_model(px).last_hidden_state  # (B, N, C), post_layernorm (LAVIS ln_vision) applied
    return px, ids, mask, img


@torch.no_grad()
def test_query_output_matches_blip2_qformer_model(retrieval):
    hf, lite = retrieval
    _, _, _, img = batch(hf)
    q = hf.query_tokens.expand(img.shape[0], -1, -1)
    ref = hf.qformer(query_embeds=q, encoder_hidden_states=img).last_hidden_state
    for form in ("plain", "query_side"):
        with cross_attention_form(form):
            assert max_diff(lite.qformer(img).query_output, ref) <= TOL


@torch.no_grad()
def test_itm_logits_match(retrieval):
    hf, lite = retrieval
    px, ids, mask, img = batch(hf)
    ref = hf(px, ids, mask, use_image_text_matching_head=True).logits_per_image  # (B, 2)
    assert max_diff(lite.itm_logits(img, ids, mask), ref) <= TOL


@torch.no_grad()
def test_itc_similarity_matches(retrieval):
    hf, lite = retrieval
    px, ids, mask, img = batch(hf, b=4)
    ref = hf(px, ids, mask, use_image_text_matching_head=False).logits_per_image  # (B_img, B_txt)
    ours = lite.itc_similarity(img, ids, mask)
    assert ours.shape == ref.shape == (4, 4)
    assert max_diff(ours, ref) <= TOL


@pytest.mark.parametrize("mode", ["itc", "itm", "itg"])
@torch.no_grad()
def test_joint_passes_match_hf_fed_our_4d_masks(retrieval, mode):
    """HF has no ITG mode, but takes a 4-D mask: give it ours over the embedded [queries; text]."""
    hf, lite = retrieval
    _, ids, mask, img = batch(hf)
    q = hf.query_tokens.expand(img.shape[0], -1, -1)
    nq = q.shape[1]
    embeds = hf.embeddings(input_ids=ids, query_embeds=q)  # (B, Q + T, D)
    mask4d = build_attention_mask(mode, nq, mask)[:, None]  # (B, 1, Q + T, Q + T), True = may attend
    ref = hf.qformer(
        query_embeds=embeds, query_length=nq, attention_mask=mask4d, encoder_hidden_states=img
    ).last_hidden_state
    out = lite.qformer(img, ids, mask, mode=mode)
    assert max_diff(out.query_output, ref[:, :nq]) <= TOL
    assert max_diff(out.text_output, ref[:, nq:]) <= TOL


@pytest.mark.parametrize("cls", [Blip2Model, Blip2ForConditionalGeneration])
@torch.no_grad()
def test_get_qformer_features_and_stage2_checkpoints(cls):
    cfg = tiny_hf_blip2_config(freq=2, num_layers=3, text_input=False)
    hf = build(cls, cfg, seed=3)
    lite = qformer_from_hf(hf)
    px, ids, mask, img = batch(hf)
    if cls is Blip2Model:
        ref = hf.get_qformer_features(px)
    else:
        ref = hf.get_image_features(px).qformer_outputs.last_hidden_state
    assert max_diff(lite(img).query_output, ref) <= TOL
    assert lite.embeddings is None  # stage 2 deleted the text parts
    with pytest.raises(ValueError, match="no text parts"):
        lite(img, ids, mask)


@torch.no_grad()
def test_loading_from_a_local_folder(tmp_path):
    hf = build(Blip2ForImageTextRetrieval, tiny_hf_blip2_config(freq=1), seed=5)
    hf.save_pretrained(tmp_path / "itm")
    px, ids, mask, img = batch(hf)
    q = qformer_from_hf(tmp_path / "itm")
    assert max_diff(q(img).query_output, pretraining_from_hf(hf).qformer(img).query_output) <= TOL
    p = pretraining_from_hf(str(tmp_path / "itm"))
    ref = hf(px, ids, mask, use_image_text_matching_head=True).logits_per_image
    assert max_diff(p.itm_logits(img, ids, mask), ref) <= TOL


def test_loading_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder at"):
        qformer_from_hf(tmp_path / "absent")
    with pytest.raises(ValueError, match="Blip2ForImageTextRetrieval"):
        pretraining_from_hf(build(Blip2Model, tiny_hf_blip2_config(), randomize=False))
    with pytest.raises(ValueError, match="got a Linear"):
        qformer_from_hf(torch.nn.Linear(2, 2))


def test_missing_and_unexpected_weights_are_listed():
    hf = build(Blip2ForImageTextRetrieval, tiny_hf_blip2_config(), randomize=False)
    hf.qformer.encoder.layer[0].surprise = torch.nn.Linear(2, 2)
    hf.qformer.layernorm = torch.nn.LayerNorm(64, bias=False)
    with pytest.raises(ValueError) as err:
        qformer_from_hf(hf)
    text = str(err.value)
    assert "qformer.encoder.layer.0.surprise.weight" in text and "qformer.encoder.layer.0.surprise.bias" in text
    assert "unfilled (1): ['layernorm.bias']" in text


def test_every_hf_qformer_key_has_a_place():
    hf = build(Blip2ForImageTextRetrieval, tiny_hf_blip2_config(freq=1), randomize=False)
    lite = pretraining_from_hf(hf)
    own = set(lite.state_dict())
    from qformer_lite.hf import HEAD_KEY_MAP, map_key

    for name in hf.state_dict():
        if name.startswith(("vision_model.", "language_model.")):
            continue
        target = map_key(name, [(p, "qformer." + t) for p, t in QFORMER_KEY_MAP]) or map_key(name, HEAD_KEY_MAP)
        assert target in own, name


@torch.no_grad()
def test_full_size_query_path_in_float64():
    """BLIP-2 size (768 wide, 12 layers, 32 queries, 257 x 1408 image tokens) in float64."""
    torch.manual_seed(0)
    hf = Blip2QFormerModel(Blip2QFormerConfig()).double().eval()  # HF's defaults are BLIP-2's
    randomize_weights_(hf, seed=1, std=0.02)
    queries = torch.randn(1, 32, 768, dtype=torch.float64) * 0.02
    state = {"qformer." + k: v for k, v in hf.state_dict().items()} | {"query_tokens": queries}
    lite = QFormer(QFormerConfig.blip2(use_qformer_text_input=False)).double().eval()
    load_mapped(state, lite, [QFORMER_KEY_MAP])
    img = torch.randn(2, 257, 1408, dtype=torch.float64)
    ref = hf(query_embeds=queries.expand(2, -1, -1), encoder_hidden_states=img).last_hidden_state
    for form in ("plain", "query_side"):
        with cross_attention_form(form):
            assert max_diff(lite(img).query_output, ref) <= 1e-10
