"""A chapter's GPU path loads a real checkpoint from the hub, which cannot run here. Its code
runs instead on the CPU, with a small random model and processor saved to a folder in place of
the checkpoint's id: the same loading, tokenization, generation and comparison with
HuggingFace, in the same precisions, so that a learner's GPU run does not meet its first
error. Chapter 11's GPU cell runs alone; chapter 8, whose GPU path runs through the whole
chapter, runs whole in a kernel, as on Colab with a T4 (float16, T5's ``wo`` in float32).
Chapter 10 trains models before its GPU cells, so those cells run alone, after its imports."""

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch

from hf_helpers import build
from qformer_lite.testing import word_tokenizer

ROOT = Path(__file__).resolve().parents[1]


def on_the_cpu(sources: list[str], replacements: dict, where: str) -> list[str]:
    """The sources with each key replaced by its value wherever it occurs; each key must occur
    somewhere, so that a change of the chapter cannot leave this test checking nothing."""
    missing = [old for old in replacements if not any(old in src for src in sources)]
    assert not missing, f"{where} no longer contains {missing}"
    for old, new in replacements.items():
        sources = [src.replace(old, new) for src in sources]
    return sources


def processor_parts(cfg):
    """An image processor at the model's size and a T5 tokenizer with a free last id (the
    processor adds "<image>" there, as the model's ``image_token``)."""
    from transformers import BlipImageProcessor

    from qformer_lite.testing import tiny_t5_tokenizer

    size = cfg.vision_config.image_size
    return BlipImageProcessor(size={"height": size, "width": size}), tiny_t5_tokenizer(cfg.text_config.vocab_size)


@pytest.fixture(scope="module")
def tiny_blip2(tmp_path_factory):
    """Chapter 8's small random BLIP-2 (T5), with a processor, saved as a hub checkpoint is."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from qformer_lite.testing import tiny_hf_blip2_config

    cfg = tiny_hf_blip2_config(text_input=False)
    cfg.image_token_id = cfg.text_config.vocab_size - 1
    folder = tmp_path_factory.mktemp("tiny-blip2")
    build(Blip2ForConditionalGeneration, cfg).save_pretrained(folder)
    processor = Blip2Processor(*processor_parts(cfg), num_query_tokens=cfg.num_query_tokens)
    processor.save_pretrained(folder)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == cfg.image_token_id
    return folder


def run_in_a_kernel(chapter: str, replacements: dict, folder: Path):
    """The chapter, each replacement made where it occurs (each must occur), run top to bottom
    in a fresh kernel in an empty folder. Returns the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "notebooks" / chapter, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    for cell, src in zip(code, on_the_cpu([cell.source for cell in code], replacements, chapter)):
        cell.source = src
    NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    return nb


def printed(nb) -> str:
    return "".join(out.get("text", "") for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs)


def test_chapter_8s_gpu_path_runs_as_on_a_t4(tiny_blip2, tmp_path):
    nb = run_in_a_kernel("08_full_captioning.ipynb", {
        "FULL = HAS_GPU and hub_reachable()": "FULL = True",
        "torch.cuda.get_device_name()": "'a T4'",
        "torch.cuda.get_device_capability()[0] >= 8": "False",  # a T4: float16, no fast bfloat16
        '"Salesforce/blip2-flan-t5-xl"': repr(str(tiny_blip2)),
        '"cuda"': '"cpu"',
    }, tmp_path)
    out = printed(nb)
    assert "running the official BLIP-2 (Flan-T5-XL)" in out  # the GPU path, not the miniature's
    assert "language model" in out and "float16, float32" in out  # T5 in float16, its wo in float32
    assert "identical token ids for all 4 images: True" in out


def code_cells(chapter: str, *markers: str, edition: str = "") -> list[str]:
    """The code cells of a chapter that hold each marker, one cell a marker, in the order given."""
    path = ROOT / edition / "notebooks" / chapter
    sources = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    cells = []
    for marker in markers:
        found = [src for src in sources if marker in src]
        assert len(found) == 1, f"{path.name}: {len(found)} code cells hold {marker!r}, expected one"
        cells.append(found[0])
    return cells


def opt_tokenizer(vocab_size: int):
    """A word-level tokenizer laid out as OPT's ("<pad>" 1, "</s>" 2 and before every text,
    "\\n" a token of its own), its last id free for the processor's "<image>"."""
    from tokenizers import AddedToken

    specials = dict(unk_token="<unk>", pad_token="<pad>", bos_token="</s>", eos_token="</s>")
    tok = word_tokenizer(["a", "photo", "of"], specials, "</s> $A", size=vocab_size - 2)
    tok.add_tokens([AddedToken("\n", normalized=False)])
    return tok


@pytest.fixture(scope="module")
def tiny_blip2_opt(tmp_path_factory):
    """Chapter 10's small random BLIP-2 OPT, with a processor, saved as a hub checkpoint is."""
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    from qformer_lite.testing import tiny_hf_blip2_opt_config

    cfg = tiny_hf_blip2_opt_config()
    folder = tmp_path_factory.mktemp("tiny-blip2-opt")
    build(Blip2ForConditionalGeneration, cfg).save_pretrained(folder)
    images, _ = processor_parts(cfg)
    processor = Blip2Processor(images, opt_tokenizer(cfg.text_config.vocab_size),
                               num_query_tokens=cfg.num_query_tokens)
    processor.save_pretrained(folder)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == cfg.image_token_index
    return folder


def test_chapter_10s_gpu_cells_find_hfs_ids_in_float16(tiny_blip2_opt):
    cells = code_cells("10_decoder_only.ipynb", "from qformer_lite.hf import blip2_opt_from_hf", "FULL = ",
                       'names = ["astronaut"', "def hf_generate")
    code, = on_the_cpu(["\n".join(cells)], {
        "FULL = HAS_GPU and hub_reachable()": "FULL = True",
        "torch.cuda.get_device_name()": "'a T4'",
        '"Salesforce/blip2-opt-2.7b"': repr(str(tiny_blip2_opt)),
        '"cuda"': '"cpu"',
    }, "chapter 10's GPU cells")
    names, shown = {}, io.StringIO()
    with contextlib.redirect_stdout(shown):
        exec(compile(code, "chapter 10's GPU cells", "exec"), names)
    assert names["same"] is True and len(names["captions"]) == 4
    assert names["model"].language_model.dtype == torch.float16  # OPT in float16, as LAVIS runs it
    assert names["settings"]["eos_token_id"] == names["tok"].convert_tokens_to_ids("\n")  # LAVIS's end
    assert "network: " in shown.getvalue() and "identical token ids for all 4 images: True" in shown.getvalue()


@pytest.fixture(scope="module")
def tiny_instructblip(tmp_path_factory):
    """A small random InstructBLIP (T5) with its processor (an image processor at 32 px, a T5
    tokenizer and a BERT-like one for the Q-Former), saved as a hub checkpoint is."""
    from transformers import InstructBlipForConditionalGeneration, InstructBlipProcessor

    from qformer_lite.testing import tiny_hf_instructblip_config

    cfg = tiny_hf_instructblip_config("t5", queries=4)
    folder = tmp_path_factory.mktemp("tiny-instructblip")
    build(InstructBlipForConditionalGeneration, cfg).save_pretrained(folder)
    words = "what is the person holding in cup colour cat ? a".split()
    qformer_tokenizer = word_tokenizer(
        words, dict(pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]"), "[CLS] $A [SEP]")
    images, t5 = processor_parts(cfg)
    processor = InstructBlipProcessor(images, t5, qformer_tokenizer, num_query_tokens=cfg.num_query_tokens)
    processor.save_pretrained(folder)
    assert processor.tokenizer.convert_tokens_to_ids("<image>") == cfg.image_token_index
    return folder


@pytest.mark.parametrize("edition", ["", "ja"])
def test_chapter_11s_gpu_cell_finds_hfs_ids_in_float16(tiny_instructblip, edition):
    from transformers import InstructBlipForConditionalGeneration

    from qformer_lite.hf import instructblip_from_hf

    cell, = on_the_cpu(code_cells("11_instructblip.ipynb", "FULL = ", edition=edition), {
        "torch.cuda.is_available() and hub_reachable()": "True",
        '"Salesforce/instructblip-flan-t5-xl"': repr(str(tiny_instructblip)),
        '"cuda"': '"cpu"',
    }, "chapter 11's GPU cell")
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
