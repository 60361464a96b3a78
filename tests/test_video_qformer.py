"""Video-LLaMA's video Q-Former: frame positions added to each frame's query outputs, one
Q-Former reading all frames; frame order visible through the positions only; padded frames
ignored; bad input refused by name. ``VideoLlamaT5`` / ``VideoLlamaDecoder``: the frozen image
Q-Former per frame, then the video Q-Former and the projection, the only parts that train."""

import pytest
import torch
from transformers import Blip2VisionModel, LlamaForCausalLM, T5ForConditionalGeneration

from qformer_lite.config import QFormerConfig
from qformer_lite.qformer import QFormer
from qformer_lite.testing import randomize_weights_, tiny_hf_blip2_config, tiny_hf_instructblip_config
from qformer_lite.video import VideoLlamaDecoder, VideoLlamaT5, VideoQFormer, video_qformer_config

D = 64  # the image Q-Former's width: what the video Q-Former reads
VIDEO_QUERIES = 6


def tiny_video_qformer(use_frame_positions=True, max_frame_pos=8, seed=0):
    torch.manual_seed(seed)
    config = video_qformer_config(encoder_hidden_size=D, hidden_size=32, num_attention_heads=4, intermediate_size=64,
                                  num_query_tokens=VIDEO_QUERIES, vocab_size=100, max_position_embeddings=64)
    model = VideoQFormer(config, max_frame_pos=max_frame_pos, use_frame_positions=use_frame_positions)
    randomize_weights_(model.qformer, seed)  # BERT's N(0, 0.02) init barely lets the queries tell keys apart
    return model.eval()


def frame_queries(batch=2, frames=5, queries=8, seed=1):
    return torch.randn(batch, frames, queries, D, generator=torch.Generator().manual_seed(seed))  # (B, F, Q, D)


def test_video_llamas_defaults_two_layers_cross_attending_in_each_32_queries_and_32_frame_positions():
    config = video_qformer_config()
    assert (config.num_hidden_layers, config.num_query_tokens, config.hidden_size, config.encoder_hidden_size) == (
        2, 32, 768, 768)
    assert all(config.has_cross_attention(i) for i in range(config.num_hidden_layers))
    model = VideoQFormer(config)
    assert model.video_frame_position_embedding.weight.shape == (32, 768)
    assert model.qformer.embeddings is None  # query-only: Video-LLaMA deletes the text parts
    # per layer: self-attention and cross-attention (768 -> 768) each 4 (768^2 + 768) + LayerNorm,
    # the query FFN 768 -> 3072 -> 768 + LayerNorm; then the embedding LayerNorm, 32 queries, 32 positions
    attention = 4 * (768 * 768 + 768) + 2 * 768
    ffn = 768 * 3072 + 3072 + 3072 * 768 + 768 + 2 * 768
    expected = 2 * (2 * attention + ffn) + 2 * 768 + 32 * 768 + 32 * 768
    assert sum(p.numel() for p in model.parameters()) == expected == 18_954_240


@torch.no_grad()
def test_each_frames_position_is_added_to_its_queries_then_one_qformer_reads_all_frames():
    model, x = tiny_video_qformer(), frame_queries()
    got = model(x).query_output  # (B, Q_video, 32)
    positions = model.video_frame_position_embedding.weight[:5]  # (F, D)
    tokens = torch.cat([x[:, f] + positions[f] for f in range(5)], dim=1)  # (B, F * Q, D), frame after frame
    want = model.qformer(tokens).query_output
    assert got.shape == (2, VIDEO_QUERIES, 32)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)
    assert (got - model.qformer(x.flatten(1, 2)).query_output).abs().max() > 1e-3  # the positions do count


@torch.no_grad()
def test_permuting_frames_changes_the_output_with_frame_positions_and_not_without():
    x, order = frame_queries(), torch.tensor([3, 0, 4, 1, 2])
    with_positions, without = tiny_video_qformer(True), tiny_video_qformer(False)
    without.qformer.load_state_dict(with_positions.qformer.state_dict())  # the same Q-Former, positions aside
    moved = (with_positions(x[:, order]).query_output - with_positions(x).query_output).abs().max()
    assert moved > 1e-2
    torch.testing.assert_close(without(x[:, order]).query_output, without(x).query_output, atol=1e-5, rtol=1e-5)
    # the positions are the only order it sees: move them with the frames and nothing changes
    before = with_positions(x).query_output
    table = with_positions.video_frame_position_embedding.weight
    table[:5] = table[:5][order].clone()
    torch.testing.assert_close(with_positions(x[:, order]).query_output, before, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_padded_frames_are_ignored_and_the_token_count_does_not_grow_with_frames():
    model, x = tiny_video_qformer(), frame_queries(batch=2, frames=3)
    padded = torch.cat([x, 100 * torch.randn(2, 2, 8, D)], dim=1)  # two frames of garbage after the real three
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 0, 0]])
    torch.testing.assert_close(model(padded, mask).query_output, model(x).query_output, atol=1e-5, rtol=1e-5)
    assert (model(padded).query_output - model(x).query_output).abs().max() > 1e-2  # unmasked, they are read
    assert model(frame_queries(frames=8)).query_output.shape == model(x).query_output.shape == (2, VIDEO_QUERIES, 32)


def test_bad_input_is_a_clear_error():
    model = tiny_video_qformer(max_frame_pos=8)
    with pytest.raises(ValueError, match=r"shape \(B, F, Q, 64\), got \(2, 40, 64\)"):
        model(torch.randn(2, 40, D))
    with pytest.raises(ValueError, match=r"a video of 9 frames; .* at most max_frame_pos=8"):
        model(frame_queries(frames=9))
    with pytest.raises(ValueError, match=r"frame_attention_mask must have shape \(B, F\) = \(2, 5\).*got \(3, 5\)"):
        model(frame_queries(), torch.ones(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"must be 64 wide .* got shape \(2, 5, 8, 48\)"):
        model(torch.randn(2, 5, 8, 48))
    with pytest.raises(ValueError, match="max_frame_pos must be a positive integer"):
        VideoQFormer(model.config, max_frame_pos=0)
    assert tiny_video_qformer(False, max_frame_pos=8)(frame_queries(frames=9)).query_output.shape[1] == VIDEO_QUERIES


# ---------------------------------------------------------------- Video-LLaMA in front of a language model


def video_llama(kind="t5", seed=0, **kwargs):
    """A tiny HF vision encoder (48 wide), a frozen query-only image Q-Former (64 wide, 8 queries),
    the tiny video Q-Former, and a T5 or a Llama."""
    torch.manual_seed(seed)
    hf = tiny_hf_blip2_config()
    vision = randomize_weights_(Blip2VisionModel(hf.vision_config), seed)
    image_qformer = QFormer(QFormerConfig.tiny(hidden_size=D, use_qformer_text_input=False))
    if kind == "t5":
        lm = randomize_weights_(T5ForConditionalGeneration(hf.text_config), seed)
        return VideoLlamaT5(vision, image_qformer, tiny_video_qformer(seed=seed), lm).eval()
    lm = randomize_weights_(LlamaForCausalLM(tiny_hf_instructblip_config("llama").text_config), seed)
    return VideoLlamaDecoder(vision, image_qformer, tiny_video_qformer(seed=seed), lm, **kwargs).eval()


def videos(batch=2, frames=3, seed=2):
    return torch.randn(batch, frames, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_only_the_video_qformer_its_queries_and_frame_positions_and_the_projection_train(kind):
    model = video_llama(kind).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {n.split(".")[0] for n in trainable} == {"video_qformer", "language_projection"}
    assert {"video_qformer.qformer.query_tokens.weight", "video_qformer.video_frame_position_embedding.weight",
            "language_projection.weight"} <= trainable
    assert not model.qformer.training and model.video_qformer.training  # the image Q-Former's dropout stays off
    ids = torch.tensor([[5, 6, 1], [7, 8, 1]]) if kind == "t5" else torch.tensor([[1, 5, 6], [1, 7, 8]])
    labels = ids if kind == "t5" else ids.masked_fill(torch.tensor([[1, 0, 0]]).bool(), -100)
    loss = model(pixel_values=videos(), input_ids=ids, labels=labels).loss
    loss.backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    # frames past the video's length get no gradient: only 3 positions were used
    grad = model.video_qformer.video_frame_position_embedding.weight.grad
    assert grad[:3].abs().sum(1).min() > 0 and grad[3:].abs().sum() == 0


@torch.no_grad()
@pytest.mark.parametrize("kind", ["t5", "llama"])
def test_the_language_model_reads_the_projected_video_queries_in_front_of_the_prompt(kind):
    model, x = video_llama(kind), videos()
    ids = torch.tensor([[5, 6, 1], [7, 8, 1]]) if kind == "t5" else torch.tensor([[1, 5, 6], [1, 7, 8]])
    got = model(pixel_values=x, input_ids=ids)
    # by hand, as encode_videoQformer_visual: frames through the ViT and the image Q-Former, unfolded per video
    frames = model.vision_encoder(pixel_values=x.flatten(0, 1)).last_hidden_state  # (B * F, N, C)
    per_frame = model.qformer(frames).query_output.unflatten(0, (2, 3))  # (B, F, Q, D)
    soft = model.language_projection(model.video_qformer(per_frame).query_output)  # (B, Q_video, d)
    assert soft.shape[1] == VIDEO_QUERIES
    torch.testing.assert_close(got.language_model_inputs, soft, atol=1e-6, rtol=1e-6)
    lm = model.language_model
    embeds = torch.cat([soft, lm.get_input_embeddings()(ids)], dim=1)
    if kind == "t5":
        start = torch.zeros(2, 1, dtype=torch.long)
        want = lm(inputs_embeds=embeds, decoder_input_ids=start).logits
    else:
        want = lm(inputs_embeds=embeds).logits
    torch.testing.assert_close(got.logits, want, atol=1e-5, rtol=1e-5)
    embeds = model.vision_encoder(pixel_values=x.flatten(0, 1)).last_hidden_state.unflatten(0, (2, 3))
    torch.testing.assert_close(model(image_embeds=embeds, input_ids=ids).logits, got.logits, atol=1e-6, rtol=1e-6)



@torch.no_grad()
def test_the_video_tokens_go_where_the_prompt_holds_the_placeholder_as_video_llamas_image_here():
    model, x = video_llama("llama", image_token_id=119), videos()
    ids = torch.tensor([[1, 5, 119, 6], [1, 7, 119, 8]])  # <s> w <ImageHere> w
    got = model(pixel_values=x, input_ids=ids).logits  # (B, 3 + Q_video, V)
    soft = model(pixel_values=x, input_ids=ids[:, :1]).language_model_inputs  # (B, Q_video, d)
    embed = model.language_model.get_input_embeddings()
    by_hand = torch.cat([embed(ids[:, :2]), soft, embed(ids[:, 3:])], dim=1)
    assert got.shape[1] == 3 + VIDEO_QUERIES
    torch.testing.assert_close(got, model.language_model(inputs_embeds=by_hand).logits, atol=1e-5, rtol=1e-5)

def test_video_llama_refuses_mismatched_widths_and_bad_videos():
    model = video_llama("t5")
    narrow = VideoQFormer(video_qformer_config(encoder_hidden_size=32, hidden_size=32, num_attention_heads=4))
    with pytest.raises(ValueError, match=r"encoder_hidden_size \(32\) must be the image Q-Former's hidden_size \(64\)"):
        VideoLlamaT5(torch.nn.Identity(), model.qformer, narrow, model.language_model)
    with pytest.raises(ValueError, match=r"pixel_values must be videos of shape \(B, F, 3, H, W\)"):
        model(pixel_values=videos()[:, 0])
    with pytest.raises(ValueError, match=r"frame_attention_mask must have shape \(B, F\) = \(2, 3\)"):
        model(pixel_values=videos(), frame_attention_mask=torch.ones(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"unexpected inputs \['qformer_input_ids'\]; it reads frame_attention_mask"):
        model(pixel_values=videos(), qformer_input_ids=torch.ones(2, 2, dtype=torch.long))
