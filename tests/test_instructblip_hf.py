"""InstructBLIP against HuggingFace, built from small random configs (no download): the
instruction-aware Q-Former against ``InstructBlipQFormerModel``, and ``InstructBlipT5`` /
``InstructBlipDecoder`` loaded through ``hf.instructblip_from_hf`` from a saved
``InstructBlipForConditionalGeneration`` with a T5, an OPT and a Llama language model: the
same soft prompts, logits, loss and generated ids."""

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, InstructBlipForConditionalGeneration

from hf_helpers import (assert_generated_ids_equal, assert_logits_and_loss_equal, build, instructions,
                        placeholder_inputs, prompts)
from qformer_lite.blip2_t5 import Blip2T5
from qformer_lite.hf import instructblip_from_hf
from qformer_lite.instructblip import InstructBlipDecoder, InstructBlipT5, instruction_queries
from qformer_lite.qformer import QFormer
from qformer_lite.testing import tiny_hf_blip2_opt_config, tiny_hf_instructblip_config

Q = 4


@pytest.fixture(scope="module", params=["t5", "opt", "llama"])
def pair(request, tmp_path_factory):
    """(kind, HF model, ours loaded from the HF model saved to a folder)."""
    hf = build(InstructBlipForConditionalGeneration, tiny_hf_instructblip_config(request.param, queries=Q))
    folder = tmp_path_factory.mktemp(f"instructblip-{request.param}")
    hf.save_pretrained(folder)
    return request.param, hf, instructblip_from_hf(folder)


def hf_inputs(kind, hf, ids, mask):
    """transformers 5's input: one placeholder per query before the prompt."""
    return placeholder_inputs(kind, ids, mask, Q, hf.config.image_token_index)


def pixels(batch, seed=2):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_loader_builds_the_right_model_with_the_qformer_and_projection_trainable(pair):
    kind, _, ours = pair
    assert isinstance(ours, InstructBlipT5 if kind == "t5" else InstructBlipDecoder)
    trainable = {n.split(".")[0] for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {"qformer", "language_projection"}
    assert ours.qformer.embeddings is not None  # the text parts stay: they read the instruction


@torch.no_grad()
def test_query_outputs_equal_hfs_qformer_for_padded_instructions_of_different_lengths(pair):
    _, hf, ours = pair
    x = pixels(3)
    ids, mask = instructions()
    image = hf.vision_model(pixel_values=x).last_hidden_state  # (B, N, C)
    queries = hf.query_tokens.expand(3, -1, -1)
    want = hf.qformer(input_ids=ids, attention_mask=torch.cat([torch.ones(3, Q, dtype=torch.long), mask], 1),
                      query_embeds=queries, encoder_hidden_states=image).last_hidden_state[:, :Q]
    got = instruction_queries(ours.qformer, image, ids, mask).query_output
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the queries do read the instruction: another instruction, other queries
    other = instruction_queries(ours.qformer, image, ids.flip(0), mask.flip(0)).query_output
    assert (other - got).abs().max() > 1e-3


@torch.no_grad()
def test_the_soft_prompt_equals_hfs_image_features(pair):
    _, hf, ours = pair
    x, (ids, mask) = pixels(3), instructions()
    want = hf.get_image_features(pixel_values=x, qformer_input_ids=ids, qformer_attention_mask=mask).pooler_output
    got, _ = ours.image_prefix(x, qformer_input_ids=ids, qformer_attention_mask=mask)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_logits_and_loss_equal_hf(pair):
    kind, hf, ours = pair
    ids, mask = prompts(kind)
    assert_logits_and_loss_equal(kind, hf, ours, pixels(3), instructions(), ids, mask, *hf_inputs(kind, hf, ids, mask))


@pytest.mark.parametrize("num_beams", [1, 3])
def test_generated_ids_equal_hf(pair, num_beams):
    kind, hf, ours = pair
    ids, mask = prompts(kind)
    assert_generated_ids_equal(kind, hf, ours, pixels(3), instructions(), ids, mask, *hf_inputs(kind, hf, ids, mask),
                               num_beams)


def test_bad_input_is_a_clear_error(pair):
    _, hf, ours = pair
    x, (q_ids, q_mask) = pixels(2), instructions((2, 2))
    with pytest.raises(ValueError, match="reads an instruction: give qformer_input_ids"):
        ours.generate(x, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"qformer_input_ids must have shape \(2, T\), one instruction per image"):
        ours(pixel_values=x, qformer_input_ids=torch.ones(3, 2, dtype=torch.long))
    too_long = torch.ones(2, hf.config.qformer_config.max_position_embeddings + 1, dtype=torch.long)
    with pytest.raises(ValueError, match="position embeddings for at most"):
        ours(pixel_values=x, qformer_input_ids=too_long)
    with pytest.raises(ValueError, match=r"qformer_attention_mask|attention_mask must have shape \(2, 2\)"):
        ours(pixel_values=x, qformer_input_ids=q_ids, qformer_attention_mask=q_mask[:, :1])
    with pytest.raises(ValueError, match=r"unexpected inputs \['instruction'\]; it reads qformer_input_ids"):
        ours(pixel_values=x, instruction=q_ids)


def test_models_refuse_the_wrong_qformer_and_the_loader_the_wrong_checkpoint(tmp_path):
    from qformer_lite.testing import tiny_hf_blip2_config
    from qformer_lite.hf import config_from_hf

    cfg = config_from_hf(tiny_hf_blip2_config())
    query_only = QFormer(type(cfg)(**{**cfg.to_dict(), "use_qformer_text_input": False}))
    with_text = QFormer(cfg)
    t5 = build(InstructBlipForConditionalGeneration, tiny_hf_instructblip_config("t5")).language_model
    with pytest.raises(ValueError, match="InstructBlipT5 needs a Q-Former with its text parts"):
        InstructBlipT5(torch.nn.Identity(), query_only, t5)
    with pytest.raises(ValueError, match="Blip2T5 uses a query-only Q-Former"):
        Blip2T5(torch.nn.Identity(), with_text, t5)
    with pytest.raises(ValueError, match=r"unexpected inputs \['qformer_input_ids'\]"):
        Blip2T5(torch.nn.Identity(), query_only, t5)(image_embeds=torch.randn(1, 5, 48),
                                                     qformer_input_ids=torch.ones(1, 2, dtype=torch.long))
    build(Blip2ForConditionalGeneration, tiny_hf_blip2_opt_config()).save_pretrained(tmp_path / "blip2")
    with pytest.raises(ValueError, match="is a 'blip-2' model, not a 'instructblip' one"):
        instructblip_from_hf(tmp_path / "blip2")
    with pytest.raises(FileNotFoundError, match="no model folder"):
        instructblip_from_hf(tmp_path / "nowhere")
