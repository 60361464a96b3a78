"""Stage 1 against LAVIS 1.0.2's own ``Blip2Qformer.forward`` (``make test-lavis``).

``tests/lavis/reference.py`` runs LAVIS, in a venv of its own, on a small random Q-Former and
saves its weights, inputs, hard negatives, losses and gradients; LAVIS_REFERENCE names that
file. Here the weights go into ``QFormerPretraining`` through an explicit LAVIS -> qformer_lite
key map, LAVIS's negatives are replayed, and everything is compared. Without LAVIS_REFERENCE
the module is skipped: ``make test`` never needs LAVIS.
"""

from __future__ import annotations

import functools
import inspect
import os
import re

import pytest
import torch

from qformer_lite import QFormerConfig
from qformer_lite.attention import cross_attention_form
from qformer_lite.pretraining import QFormerPretraining

REFERENCE = os.environ.get("LAVIS_REFERENCE")
if not REFERENCE:
    pytest.skip("LAVIS_REFERENCE is not set: run `make test-lavis` to compare with LAVIS", allow_module_level=True)

TOL = 1e-5  # outputs and losses
GRAD_RTOL = 1e-4  # gradients, relative to the largest gradient of the case

# (LAVIS name, qformer_lite name) as regular expressions; \1 carries the layer index.
# LAVIS -> HF is the converter's (attention.self -> attention.attention, embeddings.LayerNorm ->
# layernorm); HF -> qformer_lite is qformer_lite/hf.py's. The LM head and temp are not in HF.
LAYER = r"Qformer\.bert\.encoder\.layer\.(\d+)\."
KEY_MAP = [
    (r"query_tokens", r"qformer.query_tokens.weight"),
    (r"temp", r"temp"),
    (r"Qformer\.bert\.embeddings\.(word|position)_embeddings\.weight", r"qformer.embeddings.\1_embeddings.weight"),
    (r"Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)", r"qformer.layernorm.\1"),
    (LAYER + r"attention\.self\.(\w+)\.(weight|bias)", r"qformer.layers.\1.self_attention.attention.\2.\3"),
    (LAYER + r"attention\.output\.(\w+)\.(weight|bias)", r"qformer.layers.\1.self_attention.output.\2.\3"),
    (LAYER + r"crossattention\.self\.(\w+)\.(weight|bias)", r"qformer.layers.\1.cross_attention.attention.\2.\3"),
    (LAYER + r"crossattention\.output\.(\w+)\.(weight|bias)", r"qformer.layers.\1.cross_attention.output.\2.\3"),
    (LAYER + r"intermediate_query\.dense\.(weight|bias)", r"qformer.layers.\1.query_ffn.intermediate.\2"),
    (LAYER + r"output_query\.(\w+)\.(weight|bias)", r"qformer.layers.\1.query_ffn.output.\2.\3"),
    (LAYER + r"intermediate\.dense\.(weight|bias)", r"qformer.layers.\1.text_ffn.intermediate.\2"),
    (LAYER + r"output\.(\w+)\.(weight|bias)", r"qformer.layers.\1.text_ffn.output.\2.\3"),
    (r"Qformer\.cls\.predictions\.transform\.(dense|LayerNorm)\.(weight|bias)", r"lm_head.\1.\2"),
    (r"Qformer\.cls\.predictions\.bias", r"lm_head.bias"),
    (r"(vision_proj|text_proj|itm_head)\.(weight|bias)", r"\1.\2"),
]
# In LAVIS's state dict but not weights of their own: the LM decoder is tied to the word
# embeddings and its bias is predictions.bias; position_ids is a buffer.
TIED = {
    "Qformer.cls.predictions.decoder.weight": "Qformer.bert.embeddings.word_embeddings.weight",
    "Qformer.cls.predictions.decoder.bias": "Qformer.cls.predictions.bias",
}
BUFFERS = ("Qformer.bert.embeddings.position_ids",)


def lite_name(lavis_name: str) -> str:
    for pattern, target in KEY_MAP:
        if re.fullmatch(pattern, lavis_name):
            return re.sub(pattern, target, lavis_name)
    raise KeyError(f"no qformer_lite name for LAVIS's {lavis_name}")


def max_diff(a, b) -> float:
    return (a - b).abs().max().item()


@functools.cache
def reference() -> dict:
    return torch.load(REFERENCE, weights_only=True)


def lite_config() -> QFormerConfig:
    return QFormerConfig(**{k: v for k, v in reference()["config"].items() if k != "dec_token_id"})


def build_lite() -> QFormerPretraining:
    model = QFormerPretraining(lite_config())
    lavis = reference()["state_dict"]
    model.load_state_dict({lite_name(k): v for k, v in lavis.items() if k not in TIED and k not in BUFFERS})
    return model.train()  # dropout is 0: train and eval compute the same


def normalised(weights: torch.Tensor) -> torch.Tensor:
    """What torch.multinomial draws from: each row divided by its sum."""
    weights = weights.double()
    return weights / weights.sum(dim=-1, keepdim=True)


class ReplayNegatives:
    """Stands in for ``torch.multinomial`` in qformer_lite's forward: answers each call with
    LAVIS's draws for the same weights (told apart by their values, not by the call order)
    and keeps the weights it was given."""

    def __init__(self, negatives: dict):
        self.lavis = {
            "t2i": (normalised(negatives["weights_t2i"]), negatives["neg_image"]),  # a negative image per text
            "i2t": (normalised(negatives["weights_i2t"]), negatives["neg_text"]),  # a negative text per image
        }
        self.seen: dict[str, torch.Tensor] = {}

    def __call__(self, weights, num_samples, *args, **kwargs):
        assert weights.dim() == 2 and num_samples == 1, "replay expects one draw for each row of a (B, B) matrix"
        p = normalised(weights.detach())
        name = min(self.lavis, key=lambda k: max_diff(p, self.lavis[k][0]))
        self.seen[name] = p
        return self.lavis[name][1].view(-1, 1).clone()  # (B, 1)


FORWARD = inspect.signature(QFormerPretraining.forward).parameters


def lavis_options(both_sides: bool = False) -> dict:
    """LAVIS 1.0.2's choices, passed explicitly where qformer_lite's forward takes them."""
    options = {"itc_both_sides": both_sides, "negative_floor": 1e-4}
    return {k: v for k, v in options.items() if k in FORWARD}


@functools.cache
def run_lite(both_sides: bool = False) -> dict:
    """One qformer_lite forward on LAVIS's inputs and negatives; the ITC gradients, then the total's."""
    ref, model = reference(), build_lite()
    inputs = ref["inputs"]
    replay = ReplayNegatives(ref["negatives"])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "multinomial", replay)
        out = model(inputs["image_embeds"], inputs["input_ids"], inputs["attention_mask"],
                    ref["config"]["dec_token_id"], **lavis_options(both_sides))
    params = dict(model.named_parameters())
    itc = torch.autograd.grad(out.loss_itc, list(params.values()), retain_graph=True, allow_unused=True)
    out.loss.backward()
    zeros = torch.zeros_like
    return {
        "out": out,
        "replay": replay,
        "grads": {
            "itc": {n: zeros(p) if g is None else g for (n, p), g in zip(params.items(), itc)},
            "total": {n: zeros(p) if p.grad is None else p.grad for n, p in params.items()},
        },
    }


def grad_gap(case: str, both_sides: bool = False) -> tuple[float, str, float]:
    """The largest |qformer_lite - LAVIS| over every gradient, the parameter where it is, and
    the largest |LAVIS gradient| of the case."""
    lavis, lite = reference()["grads"][case], run_lite(both_sides)["grads"][case]
    assert {lite_name(n) for n in lavis} == set(lite), "LAVIS and qformer_lite train different parameters"
    gaps = {n: max_diff(lite[lite_name(n)], g) for n, g in lavis.items()}
    worst = max(gaps, key=gaps.get)
    return gaps[worst], worst, max(g.abs().max().item() for g in lavis.values())


def test_key_map_places_every_lavis_weight():
    lavis = reference()["state_dict"]
    own = QFormerPretraining(lite_config())
    mapped = [lite_name(k) for k in lavis if k not in TIED and k not in BUFFERS]
    assert sorted(mapped) == sorted(own.state_dict()), "the key map must fill each qformer_lite weight once"
    for tied, original in TIED.items():
        assert torch.equal(lavis[tied], lavis[original]), f"{tied} is not tied to {original}"


@pytest.mark.parametrize("form", ["plain", "query_side"])
@torch.no_grad()
def test_query_output_matches(form):
    model = build_lite()
    with cross_attention_form(form):
        ours = model.qformer(reference()["inputs"]["image_embeds"]).query_output  # (B, Q, D)
    gap = max_diff(ours, reference()["query_output"])
    print(f"\n  query outputs: max |diff| {gap:.2e}")
    assert gap <= TOL


@pytest.mark.parametrize("lite_key, lavis_key", [
    ("loss_itc", "loss_itc"), ("loss_itm", "loss_itm"), ("loss_itg", "loss_lm"), ("loss", "loss"),
])
def test_losses_match(lite_key, lavis_key):
    ours, theirs = getattr(run_lite()["out"], lite_key), reference()["losses"][lavis_key]
    print(f"\n  {lite_key}: qformer_lite {ours.item():.7f}, LAVIS {theirs.item():.7f}")
    assert abs(ours.item() - theirs.item()) <= TOL


@pytest.mark.parametrize("direction", ["t2i", "i2t"])
def test_hard_negative_weights_match(direction):
    """The probabilities qformer_lite draws each negative from are LAVIS's (softmax + 1e-4 in 1.0.2)."""
    replay = run_lite()["replay"]
    assert set(replay.seen) == {"t2i", "i2t"}, f"expected one draw of images and one of texts, got {set(replay.seen)}"
    gap = max_diff(replay.seen[direction], replay.lavis[direction][0])
    print(f"\n  {direction} weights: max |diff| {gap:.2e}")
    assert gap <= 1e-6


def test_replayed_negatives_are_used_as_lavis_uses_them():
    out, neg = run_lite()["out"], reference()["negatives"]
    assert torch.equal(out.neg_image, neg["neg_image"]) and torch.equal(out.neg_text, neg["neg_text"])


@pytest.mark.parametrize("case", ["itc", "total"])
def test_gradients_match_lavis(case):
    """LAVIS's gathers carry no gradient: each ITC direction trains only its own side."""
    gap, where, largest = grad_gap(case)
    print(f"\n  {case}: max |diff| {gap:.2e} at {where}; max |grad| {largest:.2e}; ratio {gap / largest:.2e}")
    assert gap <= GRAD_RTOL * largest


@pytest.mark.skipif("itc_both_sides" not in FORWARD, reason="QFormerPretraining.forward has no itc_both_sides")
@pytest.mark.parametrize("case", ["itc", "total"])
def test_both_sides_departs_from_lavis(case):
    """With the gradient through both sides of each direction, the losses are LAVIS's but the
    gradients are not."""
    assert abs(run_lite(True)["out"].loss.item() - reference()["losses"]["loss"].item()) <= TOL
    gap, where, largest = grad_gap(case, both_sides=True)
    print(f"\n  {case} with both_sides: max |diff| {gap:.2e} at {where}; ratio {gap / largest:.2e}")
    assert gap > 100 * GRAD_RTOL * largest
