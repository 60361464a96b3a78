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
