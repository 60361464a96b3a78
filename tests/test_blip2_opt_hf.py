"""``Blip2OPT`` against HuggingFace's ``Blip2ForConditionalGeneration`` with an OPT language
model, built from a small random config (no download), saved and loaded back through
``hf.blip2_opt_from_hf``: the same logits, loss and generated ids, prompts of different
lengths in one batch included."""

import pytest
import torch
from transformers import Blip2Config, Blip2ForConditionalGeneration, GPT2Config

from hf_helpers import build
from qformer_lite.blip2_opt import Blip2OPT
from qformer_lite.hf import blip2_opt_from_hf, blip2_t5_from_hf
from qformer_lite.testing import tiny_hf_blip2_config, tiny_hf_blip2_opt_config

Q, PAD, BOS = 4, 1, 2


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(HF model, ours loaded from the HF model saved to a folder)."""
    hf = build(Blip2ForConditionalGeneration, tiny_hf_blip2_opt_config(queries=Q))
    folder = tmp_path_factory.mktemp("blip2-opt")
    hf.save_pretrained(folder)
    return hf, blip2_opt_from_hf(folder)


def prompts(lengths, vocab=118, seed=0):
    """Left-padded prompts, each "</s> words" as OPT's tokenizer writes them: (ids, mask)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + 1
    ids = torch.full((len(lengths), width), PAD)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n - 1:] = torch.cat([torch.tensor([BOS]), torch.randint(3, vocab, (n,), generator=gen)])
        mask[i, width - n - 1:] = 1
    return ids, mask


def hf_inputs(hf, ids, mask):
    """What transformers 5 expects: the image placeholders before the text, the padding before both."""
    image = torch.full((ids.shape[0], Q), hf.config.image_token_index)
    full_ids, full_mask = torch.cat([image, ids], 1), torch.cat([torch.ones_like(image), mask], 1)
    order = torch.sort(full_mask, dim=1, stable=True).indices  # the padding to the front
    return full_ids.gather(1, order), full_mask.gather(1, order)


def pixels(batch, seed=1):
    return torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_the_loader_builds_a_blip2_opt_whose_trainable_parts_are_the_qformer_and_projection(pair):
    _, ours = pair
    assert isinstance(ours, Blip2OPT)
    trainable = {n.split(".")[0] for n, p in ours.named_parameters() if p.requires_grad}
    assert trainable == {"qformer", "language_projection"}


@pytest.mark.parametrize("lengths", [(3, 3), (1, 5, 3)])
def test_logits_and_loss_equal_hf_for_prompts_of_different_lengths(pair, lengths):
    hf, ours = pair
    ids, mask = prompts(lengths)
    x = pixels(len(lengths))
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-2] = labels[:, :-2].masked_fill(labels[:, :-2] != -100, -100)  # the last two tokens are targets
    full_ids, full_mask = hf_inputs(hf, ids, mask)
    hf_labels = full_ids.masked_fill(full_mask == 0, -100).masked_fill(full_ids == hf.config.image_token_index, -100)
    hf_labels[:, :-2] = -100
    with torch.no_grad():
        want = hf(pixel_values=x, input_ids=full_ids, attention_mask=full_mask, labels=hf_labels)
        got = ours(pixel_values=x, input_ids=ids, attention_mask=mask, labels=labels)
    real = full_mask.bool()  # padded positions hold no prediction anyone reads
    torch.testing.assert_close(got.logits[real], want.logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)


def test_without_a_prompt_the_text_is_the_one_start_token(pair):
    hf, ours = pair
    x = pixels(2)
    full_ids, full_mask = hf_inputs(hf, torch.full((2, 1), BOS), torch.ones(2, 1, dtype=torch.long))
    with torch.no_grad():
        want = hf(pixel_values=x, input_ids=full_ids, attention_mask=full_mask).logits
        got = ours(pixel_values=x).logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def right_padded(ids, mask):
    order = torch.sort(1 - mask, dim=1, stable=True).indices  # real tokens first, padding last
    return ids.gather(1, order), mask.gather(1, order)


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("lengths,side", [(None, None), ((1, 4, 2), "left"), ((1, 4, 2), "right")])
def test_generated_ids_equal_hf(pair, num_beams, lengths, side):
    hf, ours = pair
    batch = 3
    ids, mask = prompts(lengths) if lengths else (None, None)
    hf_ids, hf_mask = hf_inputs(hf, ids, mask) if lengths else (None, None)
    if side == "right":  # padded as for training: ours moves the padding to the front itself
        ids, mask = right_padded(ids, mask)
    x = pixels(batch, seed=2)
    settings = dict(num_beams=num_beams, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    want = hf.generate(pixel_values=x, input_ids=hf_ids, attention_mask=hf_mask, **settings)
    got = ours.generate(pixel_values=x, input_ids=ids, attention_mask=mask, **settings)
    written = want[:, -got.shape[1]:]  # HF returns the placeholders and the prompt first
    assert got.shape == (batch, 6) and torch.equal(got, written)


def test_padding_on_either_side_gives_the_same_predictions(pair):
    _, ours = pair
    ids, mask = prompts((2, 4))
    right_ids, right_mask = right_padded(ids, mask)
    x = pixels(2)
    with torch.no_grad():
        a = ours(pixel_values=x, input_ids=ids, attention_mask=mask).logits
        b = ours(pixel_values=x, input_ids=right_ids, attention_mask=right_mask).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_the_loss_leaves_out_the_queries_and_every_position_labelled_minus_100(pair):
    _, ours = pair
    ids, mask = prompts((4, 4))
    x = pixels(2)
    labels = ids.clone()
    labels[:, :3] = -100  # "</s>" and two prompt words: no loss
    with torch.no_grad():
        out = ours(pixel_values=x, input_ids=ids, attention_mask=mask, labels=labels)
    logits = out.logits[:, Q + 3 - 1:-1]  # the positions that predict the targets, ids[:, 3:]
    by_hand = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 3:].flatten())
    torch.testing.assert_close(out.loss, by_hand)
    with torch.no_grad():
        everything = ours(pixel_values=x, input_ids=ids, attention_mask=mask, labels=ids).loss
    assert not torch.allclose(everything, out.loss)


def test_bad_input_gets_a_clear_error(pair, tmp_path):
    _, ours = pair
    ids, mask = prompts((2, 3))
    with pytest.raises(ValueError, match=r"attention_mask must have the shape of input_ids \(2, 4\)"):
        ours(pixel_values=pixels(2), input_ids=ids, attention_mask=mask[:, 1:])
    with pytest.raises(ValueError, match=r"labels must have the shape"):
        ours(pixel_values=pixels(2), input_ids=ids, attention_mask=mask, labels=ids[:, :2])
    with pytest.raises(ValueError, match=r"input_ids must have shape \(3, T\)"):
        ours(pixel_values=pixels(3), input_ids=ids)
    t5 = Blip2ForConditionalGeneration(tiny_hf_blip2_config(text_input=False))
    with pytest.raises(ValueError, match="language model is 't5', not 'opt'.*blip2_t5_from_hf"):
        blip2_opt_from_hf(t5)
    with pytest.raises(FileNotFoundError, match="no model folder"):
        blip2_opt_from_hf(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="decoder-only language model"):
        Blip2OPT(ours.vision_encoder, ours.qformer, t5.language_model)


def test_a_checkpoint_with_another_kind_of_language_model_is_refused(tmp_path):
    base = tiny_hf_blip2_opt_config()
    gpt2 = GPT2Config(vocab_size=120, n_embd=32, n_layer=1, n_head=4, n_positions=64)
    config = Blip2Config(vision_config=base.vision_config.to_dict(), qformer_config=base.qformer_config.to_dict(),
                         text_config=gpt2.to_dict(), num_query_tokens=Q)
    Blip2ForConditionalGeneration(config).save_pretrained(tmp_path / "gpt2")
    for load in (blip2_opt_from_hf, blip2_t5_from_hf):
        with pytest.raises(ValueError, match="language model is 'gpt2'; qformer_lite loads t5 and opt"):
            load(tmp_path / "gpt2")


def test_in_float16_opt_and_the_vision_encoder_move_and_the_qformer_stays_float32(pair, tmp_path):
    hf, _ = pair
    hf.save_pretrained(tmp_path / "m")
    half = blip2_opt_from_hf(tmp_path / "m", dtype=torch.float16)
    assert {p.dtype for p in half.language_model.parameters()} == {torch.float16}
    assert {p.dtype for p in half.vision_encoder.parameters()} == {torch.float16}
    assert {p.dtype for p in half.qformer.parameters()} == {torch.float32}
    with torch.no_grad():
        out = half(pixel_values=pixels(1).half())
    assert out.logits.dtype == torch.float16 and torch.isfinite(out.logits).all()


IMG = 117  # a token id of the tiny vocabulary used as MiniGPT-4's <ImageHere>


def with_placeholder(model):
    return Blip2OPT(model.vision_encoder, model.qformer, model.language_model, image_token_id=IMG)


def test_the_queries_take_the_placeholders_place_inside_the_text(pair):
    _, ours = pair
    mini = with_placeholder(ours)
    mini.language_projection = ours.language_projection
    ids = torch.tensor([[BOS, 5, 6, IMG, 7, 8], [BOS, IMG, 9, 10, 11, 12]])
    x = pixels(2)
    with torch.no_grad():
        got = mini(pixel_values=x, input_ids=ids).logits  # (B, Q + 5, V)
        prefix, _ = mini.image_prefix(x)
        embed = mini.language_model.get_input_embeddings()
        rows = []
        for r in range(2):
            at = int((ids[r] == IMG).nonzero())
            rows.append(torch.cat([embed(ids[r, :at]), prefix[r], embed(ids[r, at + 1:])]))
        want = mini.language_model(inputs_embeds=torch.stack(rows)).logits
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # a placeholder first is the plain prefix
        first = mini(pixel_values=x, input_ids=torch.tensor([[IMG, BOS, 5, 6]] * 2)).logits
        plain = ours(pixel_values=x, input_ids=torch.tensor([[BOS, 5, 6]] * 2)).logits
    torch.testing.assert_close(first, plain, atol=1e-5, rtol=1e-5)


def test_the_loss_skips_the_queries_inside_the_text_and_generation_follows_the_text(pair):
    _, ours = pair
    mini = with_placeholder(ours)
    ids, mask = prompts((2, 4))
    ids[:, -2] = IMG  # the image near the end of each prompt
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]  # one target: the token after the image
    with torch.no_grad():
        out = mini(pixel_values=pixels(2), input_ids=ids, attention_mask=mask, labels=labels)
        by_hand = torch.nn.functional.cross_entropy(out.logits[:, -2], ids[:, -1])
    torch.testing.assert_close(out.loss, by_hand)
    written = mini.generate(pixel_values=pixels(2), input_ids=ids, attention_mask=mask, num_beams=1,
                            max_new_tokens=3, min_new_tokens=3)
    assert written.shape == (2, 3)


def test_a_placeholder_in_some_rows_only_or_twice_is_a_clear_error(pair):
    _, ours = pair
    mini = with_placeholder(ours)
    for ids in (torch.tensor([[BOS, IMG, 5], [BOS, 5, 6]]), torch.tensor([[BOS, IMG, IMG], [BOS, IMG, 6]])):
        with pytest.raises(ValueError, match=r"placeholder \(id 117\) once .* counts per row"):
            mini(pixel_values=pixels(2), input_ids=ids)


class WordTokenizer:
    """OPT's tokenizer in miniature for the tiny vocabulary: "w5 w6" -> [</s>, 5, 6], padded on the right."""

    def __call__(self, texts, padding="longest", return_tensors="pt"):
        rows = [[BOS, *(int(w[1:]) for w in t.split())] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])
        mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
        return type("Encoding", (), {"input_ids": ids, "attention_mask": mask})

    def batch_decode(self, ids, skip_special_tokens=True):
        return [" ".join(f"w{i}" for i in row.tolist() if i not in (PAD, BOS)) for row in ids]


@torch.no_grad()
def test_captioner_batches_opt_prompts_of_different_lengths_as_hf_does_one_at_a_time(pair):
    from qformer_lite.captioning import OPT_VQA_DEFAULTS, Captioner

    hf, ours = pair
    tok = WordTokenizer()
    images = [torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    captioner = Captioner(ours, tok, lambda imgs: torch.stack(list(imgs)))
    texts = ["w5 w6 w7", "", "w9"]
    got = captioner.caption(images, prompt=texts, num_beams=3, max_new_tokens=5, min_new_tokens=5)
    for image, text, caption in zip(images, texts, got):  # one at a time, no padding, through HF
        enc = tok([text])
        ids, mask = hf_inputs(hf, enc.input_ids, enc.attention_mask)
        ref = hf.generate(pixel_values=image[None], input_ids=ids, attention_mask=mask, num_beams=3,
                          max_new_tokens=5, min_new_tokens=5)
        assert caption == tok.batch_decode(ref[:, ids.shape[1]:])[0]
    seen = {}
    captioner.generate = lambda imgs, prompts, **kw: seen.update(prompts=prompts, **kw)
    captioner.answer(images[:1], ["what is it?"])
    assert seen["prompts"] == ["Question: what is it? Answer:"]  # the BLIP-2 paper's prompt for OPT
    assert {k: seen[k] for k in OPT_VQA_DEFAULTS} == OPT_VQA_DEFAULTS  # LAVIS's blip2_opt: length_penalty 0


def test_opt_2_7b_architecture_counts_as_the_checkpoint():
    """Built on the meta device (shapes only): OPT-2.7B's 2,651,596,800 parameters, its output
    layer tied to its embeddings as in the checkpoint, and BLIP-2's Q-Former."""
    from qformer_lite.testing import opt_2_7b_blip2_config

    config = opt_2_7b_blip2_config()
    with torch.device("meta"):
        hf = Blip2ForConditionalGeneration(config)
    lm = hf.language_model
    assert lm.lm_head.weight is lm.get_input_embeddings().weight
    assert sum(p.numel() for p in lm.parameters()) == 2_651_596_800
    assert sum(p.numel() for p in hf.qformer.parameters()) + hf.query_tokens.numel() == 105_162_240
    assert hf.language_projection.out_features == 2560 and config.image_token_index == 50265
