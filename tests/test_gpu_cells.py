"""A chapter's GPU cell loads a real checkpoint from the hub, which cannot run here. Its code
runs instead on the CPU, with a small random model and processor saved to a folder in place of
the checkpoint's id: the same loading, tokenization, generation and comparison with
HuggingFace, in the same precisions, so that a learner's GPU run does not meet its first
error."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from hf_helpers import build

ROOT = Path(__file__).resolve().parents[1]


def gpu_cell(chapter: str, edition: str = "") -> str:
    """The code cell of a chapter that decides ``FULL`` (a GPU and the network) and loads the hub's model."""
    path = ROOT / edition / "notebooks" / chapter
    cells = json.loads(path.read_text())["cells"]
    found = [src for c in cells if c["cell_type"] == "code"
             for src in ["".join(c["source"])] if "FULL = " in src and "from_pretrained(" in src]
    assert len(found) == 1, f"{path} should have one GPU cell, found {len(found)}"
    return found[0]


def on_the_cpu(cell: str, replacements: dict) -> str:
    """The cell with each key replaced by its value; each key must be in the cell, so that a
    change of the cell cannot leave this test checking nothing."""
    for old, new in replacements.items():
        assert old in cell, f"the GPU cell no longer contains {old!r}"
        cell = cell.replace(old, new)
    return cell


def word_tokenizer(words, specials, template):
    """A word-level tokenizer of the given words, padding with the first special token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate([*specials.values(), *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=specials["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=[(t, vocab[t]) for t in specials.values() if t in template])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


@pytest.fixture(scope="module")
def tiny_instructblip(tmp_path_factory):
    """A small random InstructBLIP (T5) with its processor (an image processor at 32 px, a T5
    tokenizer and a BERT-like one for the Q-Former), saved as a hub checkpoint is."""
    from transformers import BlipImageProcessor, InstructBlipForConditionalGeneration, InstructBlipProcessor

    from qformer_lite.testing import tiny_hf_instructblip_config, tiny_t5_tokenizer

    cfg = tiny_hf_instructblip_config("t5", queries=4)
    folder = tmp_path_factory.mktemp("tiny-instructblip")
    build(InstructBlipForConditionalGeneration, cfg).save_pretrained(folder)
    words = "what is the person holding in cup colour cat ? a".split()
    qformer_tokenizer = word_tokenizer(
        words, dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"), "[CLS] $A [SEP]")
    t5 = tiny_t5_tokenizer(cfg.text_config.vocab_size)  # the processor adds "<image>" as its last id
    processor = InstructBlipProcessor(BlipImageProcessor(size={"height": 32, "width": 32}), t5, qformer_tokenizer,
                                      num_query_tokens=cfg.num_query_tokens)
    processor.save_pretrained(folder)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == cfg.image_token_index
    return folder


@pytest.mark.parametrize("edition", ["", "ja"])
def test_chapter_11s_gpu_cell_finds_hfs_ids_in_float16(tiny_instructblip, edition):
    from transformers import InstructBlipForConditionalGeneration

    from qformer_lite.hf import instructblip_from_hf

    cell = on_the_cpu(gpu_cell("11_instructblip.ipynb", edition), {
        "torch.cuda.is_available() and hub_reachable()": "True",
        '"Salesforce/instructblip-flan-t5-xl"': repr(str(tiny_instructblip)),
        '"cuda"': '"cpu"',
    })
    names = dict(torch=torch, socket=__import__("socket"), instructblip_from_hf=instructblip_from_hf,
                 InstructBlipForConditionalGeneration=InstructBlipForConditionalGeneration)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(cell, "chapter 11's GPU cell", "exec"), names)
    hf, ours, enc = names["hf_big"], names["big"], names["enc"]
    assert names["same"] is True and names["got"].shape[0] == 3 and "-> " in printed.getvalue()
    assert hf.language_model.dtype == torch.float16  # T5 as read, in float16
    # the two soft prompts are the same: HF's Q-Former, read in float16, was moved to float32
    reads = dict(qformer_input_ids=enc.qformer_input_ids, qformer_attention_mask=enc.qformer_attention_mask)
    with torch.no_grad():
        want = hf.get_image_features(pixel_values=enc.pixel_values, **reads).pooler_output
        got, _ = ours.image_prefix(enc.pixel_values, **reads)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
