"""Small random HuggingFace BLIP-2 models built from configs (no download), and inputs for them."""

from __future__ import annotations

import torch
from transformers import Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2Model

from qformer_lite.testing import randomize_weights_, tiny_hf_blip2_config# noqa: F401

HF_CLASSES = {
    "Blip2Model": Blip2Model,
    "Blip2ForConditionalGeneration": Blip2ForConditionalGeneration,
    "Blip2ForImageTextRetrieval": Blip2ForImageTextRetrieval,
}


def build(cls, config, seed=0, randomize=True):
    torch.manual_seed(seed)
    model = cls(config)
    if randomize:
        randomize_weights_(model, seed)
    return model.eval()


def padded_text(batch: int, length: int, vocab: int, seed: int = 0):
    """Random ids with right padding of varied lengths (row i keeps length - i tokens, at least 2)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for i in range(batch):
        keep = max(2, length - i)
        mask[i, keep:] = 0
        ids[i, keep:] = 0
    return ids, mask


def instructions(lengths=(5, 2, 3), vocab=90, seed=0):
    """Instructions in the Q-Former's tokens, padded on the right with 0: (ids, mask)."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids, mask = torch.zeros(len(lengths), width, dtype=torch.long), torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, vocab, (n,), generator=gen)
        mask[i, :n] = 1
    return ids, mask


def prompts(kind, lengths=(3, 1, 2), vocab=118, seed=1):
    """The language model's prompt for each image, padded as its tokenizer pads: T5's "words
    </s>" on the right; OPT's "</s> words" and Llama's "<s> words" on the left."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + 1
    pad, bos, eos = {"t5": (0, None, 1), "opt": (1, 2, None), "llama": (0, 1, None)}[kind]
    ids, mask = torch.full((len(lengths), width), pad), torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        words = torch.randint(3, vocab, (n,), generator=gen)
        row = torch.cat([words, torch.tensor([eos])]) if bos is None else torch.cat([torch.tensor([bos]), words])
        where = slice(0, n + 1) if kind == "t5" else slice(width - n - 1, width)
        ids[i, where], mask[i, where] = row, 1
    return ids, mask


# --- InstructBLIP and InstructBLIP-Video: the same comparisons, images or videos -----------------

def placeholder_inputs(kind, ids, mask, count, token):
    """transformers 5's input to an InstructBLIP(-Video) model: ``count`` placeholders ``token``
    before the prompt; for a decoder-only language model, the padding moved first."""
    holders = torch.full((ids.shape[0], count), token)
    full_ids, full_mask = torch.cat([holders, ids], 1), torch.cat([torch.ones_like(holders), mask], 1)
    if kind == "t5":
        return full_ids, full_mask
    order = torch.sort(full_mask, dim=1, stable=True).indices
    return full_ids.gather(1, order), full_mask.gather(1, order)


@torch.no_grad()
def assert_logits_and_loss_equal(kind, hf, ours, x, instruction, ids, mask, hf_ids, hf_mask):
    """Ours and HF's forward on the same pixels, instruction and prompt (``hf_ids``/``hf_mask``:
    the prompt as HF reads it, with its placeholders): logits within 1e-4 where HF's input is
    real, the loss within 1e-5. Returns our output."""
    q_ids, q_mask = instruction
    if kind == "t5":
        labels = hf_labels = torch.tensor([[5, 6, 1], [7, 1, -100], [8, 9, 1]])
    else:
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :-1] = -100  # the last token is the one target
        hf_labels = hf_ids.masked_fill(hf_mask == 0, -100)
        hf_labels[:, :-1] = -100
    want = hf(pixel_values=x, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, input_ids=hf_ids,
              attention_mask=hf_mask, labels=hf_labels)
    got = ours(pixel_values=x, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, input_ids=ids,
               attention_mask=mask, labels=labels)
    assert got.logits.shape == want.logits.shape
    real = slice(None) if kind == "t5" else hf_mask.bool()
    torch.testing.assert_close(got.logits[real], want.logits[real], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(got.loss, want.loss, atol=1e-5, rtol=1e-5)
    return got


def assert_generated_ids_equal(kind, hf, ours, x, instruction, ids, mask, hf_ids, hf_mask, num_beams):
    """Greedy or beam-search ids of ours and HF's, six new tokens each."""
    q_ids, q_mask = instruction
    settings = dict(num_beams=num_beams, max_new_tokens=6, min_new_tokens=6, do_sample=False)
    want = hf.generate(pixel_values=x, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, input_ids=hf_ids,
                       attention_mask=hf_mask, **settings)
    got = ours.generate(x, ids, mask, qformer_input_ids=q_ids, qformer_attention_mask=q_mask, **settings)
    if kind != "t5":
        want = want[:, hf_ids.shape[1]:]  # HF returns the placeholders and the prompt first
    assert torch.equal(got, want)
