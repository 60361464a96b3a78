"""InstructBLIP-Video against HuggingFace, built from small random configs (no download):
``InstructBlipVideoT5`` / ``InstructBlipVideoDecoder`` loaded through
``hf.instructblipvideo_from_hf`` from a saved ``InstructBlipVideoForConditionalGeneration`` with
a T5, an OPT and a Llama language model: the same per-frame query outputs, soft prompts, logits,
loss and generated ids, for videos of 3 frames (HF's own default prompt assumes 4); an InstructBLIP
checkpoint read as a video model."""

import pytest
import torch
from transformers import (Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration,
                          InstructBlipVideoForConditionalGeneration)

from hf_helpers import (assert_generated_ids_equal, assert_logits_and_loss_equal, build, instructions,
                        placeholder_inputs, prompts)
from qformer_lite.hf import instructblip_from_hf, instructblipvideo_from_hf
from qformer_lite.video import InstructBlipVideoDecoder, InstructBlipVideoT5
from qformer_lite.testing import (tiny_hf_blip2_opt_config, tiny_hf_instructblip_config,
                                  tiny_hf_instructblipvideo_config)

Q, F = 4, 3


@pytest.fixture(scope="module", params=["t5", "opt", "llama"])
def pair(request, tmp_path_factory):
    """(kind, HF model, ours loaded from the HF model saved to a folder)."""
    hf = build(InstructBlipVideoForConditionalGeneration, tiny_hf_instructblipvideo_config(request.param, queries=Q))
    folder = tmp_path_factory.mktemp(f"instructblipvideo-{request.param}")
    hf.save_pretrained(folder)
    return request.param, hf, instructblipvideo_from_hf(folder)


def hf_inputs(kind, hf, ids, mask):
    """transformers 5's input: one placeholder per query per frame before the prompt."""
    return placeholder_inputs(kind, ids, mask, F * Q, hf.config.video_token_index)


def videos(batch, frames=F, seed=2):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_loader_builds_the_right_model_with_the_qformer_and_projection_trainable(pair):
    kind, _, ours = pair
    assert isinstance(ours, InstructBlipVideoT5 if kind == "t5" else InstructBlipVideoDecoder)
    trainable = {n.split(".")[0] for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {"qformer", "language_projection"}
    assert ours.qformer.embeddings is not None  # the text parts stay: they read the instruction


@torch.no_grad()
def test_per_frame_queries_and_the_soft_prompt_equal_hfs_video_features(pair):
    _, hf, ours = pair
    x, (ids, mask) = videos(3), instructions()
    want = hf.get_video_features(pixel_values=x, qformer_input_ids=ids, qformer_attention_mask=mask)
    got, out = ours.image_prefix(x, qformer_input_ids=ids, qformer_attention_mask=mask)
    assert got.shape == (3, F * Q, hf.config.text_config.hidden_size)
    torch.testing.assert_close(got, want.pooler_output, atol=1e-5, rtol=1e-5)
    hf_queries = want.qformer_outputs.last_hidden_state[:, :Q].unflatten(0, (3, F))  # (B, F, Q, D)
    torch.testing.assert_close(out.query_output, hf_queries, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_each_frame_is_read_as_an_image_and_its_tokens_keep_the_frames_order(pair):
    _, _, ours = pair
    x, (ids, mask) = videos(3), instructions()
    video, _ = ours.image_prefix(x, qformer_input_ids=ids, qformer_attention_mask=mask)  # (B, F * Q, d)
    for f in range(F):
        alone, _ = ours.image_prefix(x[:, f:f + 1], qformer_input_ids=ids, qformer_attention_mask=mask)  # (B, Q, d)
        torch.testing.assert_close(video[:, f * Q:(f + 1) * Q], alone, atol=1e-5, rtol=1e-5)
    reversed_video, _ = ours.image_prefix(x.flip(1), qformer_input_ids=ids, qformer_attention_mask=mask)
    torch.testing.assert_close(reversed_video, video.unflatten(1, (F, Q)).flip(1).flatten(1, 2), atol=1e-5, rtol=1e-5)
    assert (reversed_video - video).abs().max() > 1e-3  # the frames do differ


@torch.no_grad()
def test_image_embeds_per_frame_give_what_pixel_values_give(pair):
    _, hf, ours = pair
    x, (ids, mask) = videos(2), instructions((4, 2))
    embeds = hf.vision_model(pixel_values=x.flatten(0, 1)).last_hidden_state.unflatten(0, (2, F))  # (B, F, N, C)
    from_pixels, _ = ours.image_prefix(x, qformer_input_ids=ids, qformer_attention_mask=mask)
    from_embeds, _ = ours.image_prefix(None, image_embeds=embeds, qformer_input_ids=ids, qformer_attention_mask=mask)
    torch.testing.assert_close(from_embeds, from_pixels, atol=1e-6, rtol=1e-6)


def test_logits_and_loss_equal_hf(pair):
    kind, hf, ours = pair
    ids, mask = prompts(kind)
    got = assert_logits_and_loss_equal(kind, hf, ours, videos(3), instructions(), ids, mask,
                                       *hf_inputs(kind, hf, ids, mask))  # F * Q soft tokens, then the prompt
    assert got.query_output.shape == (3, F, Q, hf.config.qformer_config.hidden_size)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generated_ids_equal_hf(pair, num_beams):
    kind, hf, ours = pair
    ids, mask = prompts(kind)
    assert_generated_ids_equal(kind, hf, ours, videos(3), instructions(), ids, mask, *hf_inputs(kind, hf, ids, mask),
                               num_beams)


def test_without_a_prompt_ours_equals_hfs_default_which_assumes_4_frames(pair):
    kind, hf, ours = pair
    x, (q_ids, q_mask) = videos(3, frames=4), instructions()
    settings = dict(num_beams=1, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    want = hf.generate(pixel_values=x, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, **settings)
    got = ours.generate(x, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, **settings)
    # HF's default prompt: 4 x Q placeholders and text_config.bos_token_id, which the tiny T5 sets to
    # 1 = </s>, T5's empty prompt (as ours); a T5Config of transformers 5 has no bos_token_id of its own
    if kind != "t5":
        want = want[:, 4 * Q + 1:]  # the decoder-only LM returns that prompt first
    assert torch.equal(got, want)

def test_bad_input_is_a_clear_error(pair):
    _, hf, ours = pair
    x, (q_ids, q_mask) = videos(2), instructions((2, 2))
    with pytest.raises(ValueError, match=r"pixel_values must be videos of shape \(B, F, 3, H, W\), got \(2, 3, 32, 32\);"
                                         r" a batch of images \(B, 3, H, W\) is videos of one frame"):
        ours(pixel_values=x[:, 0], qformer_input_ids=q_ids)
    with pytest.raises(ValueError, match=r"image_embeds must be per-frame features of shape \(B, F, N, C\)"):
        ours(image_embeds=torch.randn(2, 17, 48), qformer_input_ids=q_ids)
    with pytest.raises(ValueError, match="not both or neither"):
        ours(pixel_values=x, image_embeds=torch.randn(2, F, 17, 48), qformer_input_ids=q_ids)
    with pytest.raises(ValueError, match=r"qformer_input_ids must have shape \(2, T\), one instruction per video"):
        ours(pixel_values=x, qformer_input_ids=torch.ones(2 * F, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"qformer_attention_mask must have the shape of qformer_input_ids \(2, 2\)"):
        ours(pixel_values=x, qformer_input_ids=q_ids, qformer_attention_mask=q_mask[:, :1])
    with pytest.raises(ValueError, match="reads an instruction: give qformer_input_ids"):
        ours.generate(x, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids must have shape \(2, T\)"):
        ours(pixel_values=x, qformer_input_ids=q_ids, input_ids=torch.ones(3, 2, dtype=torch.long))


def test_an_instructblip_checkpoint_loads_as_video_and_reads_a_one_frame_video_as_its_image(tmp_path):
    build(InstructBlipForConditionalGeneration, tiny_hf_instructblip_config("opt")).save_pretrained(tmp_path / "image")
    build(InstructBlipVideoForConditionalGeneration,
          tiny_hf_instructblipvideo_config("opt")).save_pretrained(tmp_path / "video")
    build(Blip2ForConditionalGeneration, tiny_hf_blip2_opt_config()).save_pretrained(tmp_path / "blip2")
    video_model, image_model = instructblipvideo_from_hf(tmp_path / "image"), instructblip_from_hf(tmp_path / "image")
    assert isinstance(video_model, InstructBlipVideoDecoder)
    x, (q_ids, q_mask) = videos(3, frames=1), instructions()
    ids, mask = prompts("opt")
    with torch.no_grad():
        got = video_model(pixel_values=x, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, input_ids=ids,
                          attention_mask=mask).logits
        want = image_model(pixel_values=x[:, 0], qformer_input_ids=q_ids, qformer_attention_mask=q_mask,
                           input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="is a 'instructblipvideo' model, not a 'instructblip' one"):
        instructblip_from_hf(tmp_path / "video")
    with pytest.raises(ValueError, match="is a 'blip-2' model, not a 'instructblipvideo' or 'instructblip' one"):
        instructblipvideo_from_hf(tmp_path / "blip2")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        instructblipvideo_from_hf(tmp_path / "nowhere")
