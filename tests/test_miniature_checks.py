"""The chapter-6 checkers: the right answer passes; each usual slip fails with its own hint."""

import pytest
import torch
import torch.nn.functional as F

from qformer_lite import losses, miniature_checks


def run(capsys, checker, answer):
    result = checker(answer)
    return bool(result), capsys.readouterr().out.replace("\n  ", " ")


def _ce(logits):
    return F.cross_entropy(logits, torch.arange(logits.shape[0]), label_smoothing=0.1)


def itc_right(sim, temp):
    return (_ce(sim / temp) + _ce(sim.t() / temp)) / 2


ITC_SLIPS = {
    "summed": (lambda sim, temp: _ce(sim / temp) + _ce(sim.t() / temp), "mean: divide by 2"),
    "one way": (lambda sim, temp: _ce(sim / temp), "image->text only"),
    "no temperature": (lambda sim, temp: (_ce(sim) + _ce(sim.t())) / 2, "divide the similarities by temp"),
    "times temperature": (lambda sim, temp: (_ce(sim * temp) + _ce(sim.t() * temp)) / 2, "do not multiply"),
    "no smoothing": (lambda sim, temp: losses.itc_loss(sim, temp, 0.0), "label_smoothing=0.1"),
}


def test_itc_loss_checker_passes_the_solution(capsys):
    ok, out = run(capsys, miniature_checks.check_itc_loss, itc_right)
    assert ok and out.startswith("✓")


@pytest.mark.parametrize("slip", ITC_SLIPS, ids=str)
def test_itc_loss_checker_names_each_slip(capsys, slip):
    answer, hint = ITC_SLIPS[slip]
    ok, out = run(capsys, miniature_checks.check_itc_loss, answer)
    assert not ok and hint in out, out


def test_itc_loss_checker_reports_a_crash_as_a_hint(capsys):
    ok, out = run(capsys, miniature_checks.check_itc_loss, lambda sim, temp: sim @ torch.ones(3))
    assert not ok and "raised RuntimeError" in out


def weights_right(sim, temp):
    w = (sim / temp).softmax(dim=1) + 1e-4
    w = w.masked_fill(torch.eye(sim.shape[0], dtype=torch.bool), 0.0)
    return w / w.sum(dim=1, keepdim=True)


def _zeroed_after_softmax(sim, temp):
    w = (sim / temp).softmax(dim=1)
    w.fill_diagonal_(0)
    return w


def _lavis_as_written(sim, temp):
    w = (sim / temp).softmax(dim=1) + 1e-4
    w.fill_diagonal_(0)
    return w


def _masked_softmax(sim, temp):
    eye = torch.eye(sim.shape[0], dtype=torch.bool)
    return (sim / temp).masked_fill(eye, float("-inf")).softmax(dim=1)


WEIGHT_SLIPS = {
    "zeroed after the softmax, rows not renormalised": (_zeroed_after_softmax, "divide each row by its sum"),
    "no floor (LAVIS's main branch)": (_masked_softmax, "Add 1e-4"),
    "positive kept": (lambda sim, temp: (sim / temp).softmax(dim=1), "diagonal is not 0"),
    "LAVIS's lines as they are (multinomial renormalises)": (_lavis_as_written, "torch.multinomial would do it"),
    "something else": (lambda sim, temp: weights_right(sim * 2, temp), "differ from LAVIS's"),
    "no temperature": (lambda sim, temp: weights_right(sim, 1.0), "divide the similarities by temp"),
    "softmax over columns": (lambda sim, temp: weights_right(sim.t(), temp).t(), "softmax over dim=1"),
}


def test_negative_weights_checker_passes_the_solution_and_the_library(capsys):
    for answer in (weights_right, losses.negative_weights):
        ok, out = run(capsys, miniature_checks.check_negative_weights, answer)
        assert ok, out


@pytest.mark.parametrize("slip", WEIGHT_SLIPS, ids=str)
def test_negative_weights_checker_names_each_slip(capsys, slip):
    answer, hint = WEIGHT_SLIPS[slip]
    ok, out = run(capsys, miniature_checks.check_negative_weights, answer)
    assert not ok and hint in out, out


def test_strict_mode_makes_a_failed_check_an_error(capsys, monkeypatch):
    """The book's own runs (make test, make book) set it: a solution that drifts fails them."""
    monkeypatch.setenv("QFORMER_LITE_STRICT_CHECKS", "1")
    with pytest.raises(AssertionError, match="divide by 2"):
        miniature_checks.check_itc_loss(ITC_SLIPS["summed"][0])
    assert miniature_checks.check_itc_loss(itc_right)
    monkeypatch.setenv("QFORMER_LITE_STRICT_CHECKS", "0")
    assert not miniature_checks.check_itc_loss(ITC_SLIPS["summed"][0])  # a learner's run: a hint


# --- chapters 7 and 8 ----------------------------------------------------------------------


def encoder_inputs_right(prefix, prompt_embeds, prompt_mask):
    ones = torch.ones(prefix.shape[:2], dtype=prompt_mask.dtype)
    return torch.cat([prefix, prompt_embeds], dim=1), torch.cat([ones, prompt_mask], dim=1)


ENCODER_SLIPS = {
    "prompt first": (lambda p, e, m: (torch.cat([e, p], 1), torch.cat([m, torch.ones(2, 4, dtype=m.dtype)], 1)),
                     "the prompt comes first"),
    "wrong axis": (lambda p, e, m: (torch.cat([p, e], 2), m), "raised RuntimeError"),
    "queries masked out": (lambda p, e, m: (torch.cat([p, e], 1), torch.cat([torch.zeros(2, 4, dtype=m.dtype), m], 1)),
                           "every query is real"),
    "prompt mask only": (lambda p, e, m: (torch.cat([p, e], 1), m), "attention_mask must have shape (B, Q + T)"),
    "one thing returned": (lambda p, e, m: torch.cat([p, e], 1), "return two things"),
}


def test_encoder_inputs_checker(capsys):
    ok, out = run(capsys, miniature_checks.check_encoder_inputs, encoder_inputs_right)
    assert ok, out
    for slip, (answer, hint) in ENCODER_SLIPS.items():
        ok, out = run(capsys, miniature_checks.check_encoder_inputs, answer)
        assert not ok and hint in out, (slip, out)


def placeholder_ids_right(prompt_ids, prompt_mask, num_queries, image_token_id):
    holders = torch.full((prompt_ids.shape[0], num_queries), image_token_id)
    return torch.cat([holders, prompt_ids], 1), torch.cat([torch.ones_like(holders), prompt_mask], 1)


def test_placeholder_ids_checker(capsys):
    from qformer_lite import checks

    ok, out = run(capsys, checks.check_placeholder_ids, placeholder_ids_right)
    assert ok, out
    def after(ids, mask, q, tok):
        return tuple(t.roll(-q, dims=1) for t in placeholder_ids_right(ids, mask, q, tok))

    slips = {
        "placeholders after the prompt": (after, "the placeholders are after the prompt"),
        "one placeholder only": (lambda ids, mask, q, tok: placeholder_ids_right(ids, mask, 1, tok), "one placeholder per query"),
        "placeholders masked out": (lambda ids, mask, q, tok: (placeholder_ids_right(ids, mask, q, tok)[0],
                                                               torch.cat([torch.zeros(2, q, dtype=torch.long), mask], 1)),
                                    "the placeholders are real inputs"),
    }
    for slip, (answer, hint) in slips.items():
        ok, out = run(capsys, checks.check_placeholder_ids, answer)
        assert not ok and hint in out, (slip, out)


def test_precision_guard_checker(capsys):
    from qformer_lite import checks

    def safe(lm):
        return all(p.dtype != torch.float16 for n, p in lm.named_parameters() if n.endswith(".wo.weight"))

    ok, out = run(capsys, checks.check_precision_guard, safe)
    assert ok, out
    ok, out = run(capsys, checks.check_precision_guard,
                  lambda lm: all(p.dtype != torch.float16 for p in lm.parameters()))
    assert not ok and "only the feed-forward output layers matter" in out
    def one_layer_only(lm):  # looks at the encoder's first wo, not at every one
        return lm.encoder.block[0].layer[-1].DenseReluDense.wo.weight.dtype != torch.float16

    ok, out = run(capsys, checks.check_precision_guard, one_layer_only)
    assert not ok and "'.wo.weight'" in out
