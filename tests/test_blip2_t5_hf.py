"""Blip2T5 loaded from HuggingFace's Blip2ForConditionalGeneration (small random T5 config)."""

import pytest
import torch
from transformers import Blip2ForConditionalGeneration

from hf_helpers import build, tiny_hf_blip2_config
from qformer_lite.blip2_t5 import Blip2T5
from qformer_lite.hf import blip2_t5_from_hf, qformer_from_hf
from qformer_lite.testing import flan_t5_xl_blip2_config, tiny_hf_blip2_opt_config, tiny_t5_tokenizer, untie_lm_head_

IMAGE_TOKEN = 119  # the last id of the tiny vocabulary


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = tiny_hf_blip2_config(text_input=False, queries=6)
    cfg.image_token_id = IMAGE_TOKEN
    hf = build(Blip2ForConditionalGeneration, cfg, seed=11)
    path = tmp_path_factory.mktemp("blip2") / "blip2-t5-tiny"
    hf.save_pretrained(path)
    return hf, path


def prompts(q):
    """Two prompts of different lengths, right-padded; HF needs q image placeholders in front."""
    ids = torch.tensor([[17, 23, 5, 9, 1], [44, 12, 1, 0, 0]])
    mask = (torch.arange(5) < torch.tensor([[5], [3]])).long()
    hf_ids = torch.cat([torch.full((2, q), IMAGE_TOKEN), ids], dim=1)
    hf_mask = torch.cat([torch.ones(2, q, dtype=torch.long), mask], dim=1)
    return ids, mask, hf_ids, hf_mask


@torch.no_grad()
def test_logits_and_loss_match_from_a_saved_folder(saved):
    hf, path = saved
    lite = blip2_t5_from_hf(path)
    assert isinstance(lite, Blip2T5)
    q = hf.config.num_query_tokens
    ids, mask, hf_ids, hf_mask = prompts(q)
    px = torch.randn(2, 3, 32, 32)
    labels = torch.tensor([[30, 31, 32, 1], [40, 1, -100, -100]])
    ref = hf(pixel_values=px, input_ids=hf_ids, attention_mask=hf_mask, labels=labels)
    ours = lite(px, ids, mask, labels=labels)
    assert (ours.logits - ref.logits).abs().max() <= 1e-4
    assert abs(ours.loss.item() - ref.loss.item()) <= 1e-5


@pytest.mark.parametrize("num_beams", [1, 4])
@torch.no_grad()
def test_generation_gives_identical_ids(saved, num_beams):
    hf, path = saved
    lite = blip2_t5_from_hf(path)
    ids, mask, hf_ids, hf_mask = prompts(hf.config.num_query_tokens)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(num_beams))
    kw = dict(num_beams=num_beams, max_new_tokens=12, min_new_tokens=3)
    ref = hf.generate(pixel_values=px, input_ids=hf_ids, attention_mask=hf_mask, **kw)
    assert torch.equal(lite.generate(px, ids, mask, **kw), ref)


@torch.no_grad()
def test_empty_prompt_matches_hf_without_input_ids(saved):
    hf, _ = saved
    lite = blip2_t5_from_hf(hf)
    px = torch.randn(3, 3, 32, 32)
    ref = hf.generate(pixel_values=px, num_beams=3, max_new_tokens=8)  # HF: queries + bos (= </s>, id 1)
    assert torch.equal(lite.generate(px, num_beams=3, max_new_tokens=8), ref)


def test_only_the_qformer_and_projection_train(saved):
    hf, _ = saved
    lite = blip2_t5_from_hf(hf)
    trainable = {n.split(".")[0] for n, p in lite.named_parameters() if p.requires_grad}
    assert trainable == {"qformer", "language_projection"}
    lite.train()
    assert not lite.language_model.training and not lite.vision_encoder.training


def test_qformer_stays_in_float32_and_fp16_t5_is_refused(saved):
    hf, path = saved
    lite = blip2_t5_from_hf(path, dtype=torch.bfloat16)
    assert next(lite.qformer.parameters()).dtype == torch.float32
    assert lite.language_model.shared.weight.dtype == torch.bfloat16
    out = lite.generate(torch.randn(2, 3, 32, 32), num_beams=2, max_new_tokens=4)
    assert out.shape[0] == 2

    half = blip2_t5_from_hf(path, dtype=torch.float16)  # as HF: the feed-forward output layers stay fp32
    wo = [p.dtype for n, p in half.language_model.named_parameters() if n.endswith(".wo.weight")]
    assert wo and set(wo) == {torch.float32}
    assert half.language_model.shared.weight.dtype == torch.float16

    # read in float16 (HF keeps the Q-Former in float32 then), not rounded through bfloat16
    exact = qformer_from_hf(hf).state_dict()
    assert all(torch.equal(v, exact[k]) for k, v in lite.qformer.state_dict().items())

    all_half = build(Blip2ForConditionalGeneration, hf.config, randomize=False).half()
    with pytest.raises(ValueError, match="float16 overflows.*bfloat16 or float32"):
        blip2_t5_from_hf(all_half)


def test_an_opt_checkpoint_is_sent_to_the_opt_loader(tmp_path):
    model = Blip2ForConditionalGeneration(tiny_hf_blip2_opt_config())
    with pytest.raises(ValueError, match="language model is 'opt', not 't5'.*blip2_opt_from_hf"):
        blip2_t5_from_hf(model)
    model.save_pretrained(tmp_path / "opt")
    with pytest.raises(ValueError, match="blip2_opt_from_hf"):
        blip2_t5_from_hf(tmp_path / "opt")


def test_a_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no model folder at '.*nowhere'"):
        blip2_t5_from_hf(tmp_path / "nowhere")


@torch.no_grad()
def test_captioner_batches_prompts_of_different_lengths(saved):
    from qformer_lite.captioning import VQA_PROMPT, Captioner

    hf, _ = saved
    lite = blip2_t5_from_hf(hf)
    tok = tiny_t5_tokenizer()
    images = [torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    captioner = Captioner(lite, tok, lambda imgs: torch.stack(list(imgs)))
    texts = ["a photo of", "", VQA_PROMPT.format("what is it?")]
    got = captioner.caption(images, prompt=texts, num_beams=3, max_new_tokens=6)

    q = hf.config.num_query_tokens
    for image, text, caption in zip(images, texts, got):  # one at a time, no padding, through HF
        ids = tok(text, return_tensors="pt").input_ids
        hf_ids = torch.cat([torch.full((1, q), IMAGE_TOKEN), ids], dim=1)
        ref = hf.generate(pixel_values=image[None], input_ids=hf_ids, num_beams=3, max_new_tokens=6)
        assert caption == tok.decode(ref[0], skip_special_tokens=True).strip()
    assert captioner.answer(images[:1], ["what is it?"], max_new_tokens=4)[0] == captioner.generate(
        images[:1], [texts[2]], num_beams=5, max_new_tokens=4, min_length=1, length_penalty=-1.0
    )[0]
    with pytest.raises(ValueError, match="3 images, 2 prompts"):
        captioner.caption(images, prompt=texts[:2])


@torch.no_grad()
def test_chapter_8_loading_route_keeps_hf_equal(saved):
    """Chapter 8 on a GPU: load in float16 (HF then keeps query_tokens, qformer and T5's wo in
    float32; in bfloat16 it would not), then move the shared parts to bfloat16."""
    _, path = saved
    hf = Blip2ForConditionalGeneration.from_pretrained(path, dtype=torch.float16).eval()
    assert hf.qformer.layernorm.weight.dtype == torch.float32 and hf.query_tokens.dtype == torch.float32
    lite = blip2_t5_from_hf(hf, dtype=torch.bfloat16)  # the vision encoder, projection and T5 are shared
    assert hf.language_model.shared.weight.dtype == torch.bfloat16
    assert hf.qformer.layernorm.weight.dtype == torch.float32  # HF's own Q-Former is left as it was
    ids, mask, hf_ids, hf_mask = prompts(hf.config.num_query_tokens)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5)).to(torch.bfloat16)
    kw = dict(num_beams=3, max_new_tokens=10, min_new_tokens=2)
    ref = hf.generate(pixel_values=px, input_ids=hf_ids, attention_mask=hf_mask, **kw)
    assert torch.equal(lite.generate(px, ids, mask, **kw), ref)


def test_flan_t5_xl_architecture_counts_with_its_own_lm_head():
    """Built on the meta device (shapes only): T5 ties lm_head when built from a config."""
    config = flan_t5_xl_blip2_config()
    with torch.device("meta"):
        hf = Blip2ForConditionalGeneration(config)
    lm = hf.language_model
    assert lm.lm_head.weight is lm.shared.weight and not lm.config.scale_decoder_outputs
    tied = sum(p.numel() for p in lm.parameters())
    assert untie_lm_head_(hf) is hf and lm.lm_head.weight is not lm.shared.weight
    assert lm.encoder.embed_tokens.weight is lm.shared.weight  # those stay shared, as in the checkpoint
    untied = sum(p.numel() for p in lm.parameters())
    assert untied - tied == 32128 * 2048
    assert (tied, untied) == (2_783_959_040, 2_849_757_184)
    assert sum(p.numel() for p in hf.qformer.parameters()) + hf.query_tokens.numel() == 105_162_240
    assert config.text_config.dense_act_fn == "gelu" and config.image_token_id == 32100


def test_untie_needs_a_t5():
    with pytest.raises(ValueError, match="expected a T5 .*got a Linear"):
        untie_lm_head_(torch.nn.Linear(2, 2))
