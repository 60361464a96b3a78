"""Checkers for the exercises of chapters 6 and 7 (training BLIP-2 in miniature).

Like ``checks``: each ``check_*`` runs the learner's answer on small random inputs, prints one
line (a pass, or what is wrong and a hint) and returns a ``CheckResult``; none of them raises.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from . import checks, losses
from .checks import CheckResult, _call, _same_shape, _say


def _expected_answers() -> dict[str, tuple[Any, str]]:
    from .miniature import MiniatureConfig

    config = MiniatureConfig.default()
    q = config.qformer
    return {
        "itm_pairs_per_batch": (
            3 * config.stage1.batch_size,
            "Each matching pair brings one hard negative image and one hard negative text.",
        ),
        "soft_prompt_length": (
            q.num_query_tokens + 1,
            "The T5 encoder reads every projected query, then the prompt; an empty prompt is "
            "tokenised as '</s>' alone.",
        ),
        "projection_params": (
            q.hidden_size * config.language.d_model + config.language.d_model,
            "One Linear from the Q-Former's width to T5's d_model, with a bias.",
        ),
    }


def check_answer(key: str, value: Any) -> CheckResult:
    """Compare a numeric answer with the one computed from ``MiniatureConfig.default()``."""
    return checks.check_answer(key, value, _expected_answers())


def _random_sim(b: int = 6, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, b, generator=gen) * 2 - 1  # cosines in [-1, 1]


def check_itc_loss(fn: Callable) -> CheckResult:
    """``fn(sim_i2t, temp)`` -> the symmetric ITC loss with label smoothing 0.1 (a scalar)."""
    ce = torch.nn.functional.cross_entropy
    for b, temp in ((6, 0.07), (3, 0.5)):
        sim = _random_sim(b, seed=b)
        failed, got = _call("itc_loss", fn, sim.clone(), temp)
        if failed is not None:
            return failed
        if not isinstance(got, torch.Tensor) or got.numel() != 1:
            return _say(False, f"itc_loss returned {type(got).__name__}; expected a scalar tensor.")
        expected = losses.itc_loss(sim, temp, 0.1)
        if abs(float(got) - float(expected)) <= 1e-5:
            continue
        targets = torch.arange(b)
        near = {  # the usual slips, each with what it gives
            "one_way": ce(sim / temp, targets, label_smoothing=0.1),
            "summed": 2 * expected,
            "no_smoothing": losses.itc_loss(sim, temp, 0.0),
            "no_temp": losses.itc_loss(sim, 1.0, 0.1),
            "times_temp": losses.itc_loss(sim * temp * temp, temp, 0.1),
        }
        hints = {
            "one_way": "that is image->text only; average it with text->image (the transpose).",
            "summed": "that is the sum of the two directions; ITC is their mean: divide by 2.",
            "no_smoothing": "add label_smoothing=0.1 to both cross-entropies.",
            "no_temp": "divide the similarities by temp before the cross-entropies.",
            "times_temp": "divide the similarities by temp; do not multiply by it.",
        }
        slip = next((k for k, v in near.items() if abs(float(got) - float(v)) < 1e-5), None)
        hint = hints[slip] if slip else "logits = sim_i2t / temp; the targets are the diagonal, arange(B)."
        return _say(False, f"itc_loss gave {float(got):.4f}, expected {float(expected):.4f}. Hint: {hint}")
    return _say(True, "the symmetric ITC loss, with temperature and label smoothing, as in LAVIS.")


def check_negative_weights(fn: Callable) -> CheckResult:
    """``fn(sim_i2t, temp)`` -> (B, B) probabilities of drawing each text as the negative of each
    image, as LAVIS 1.0.2 draws them: softmax of sim / temp over the row, plus 1e-4, the positive
    (diagonal) at exactly 0, each row renormalised to sum to 1."""
    b, temp = 5, 0.02  # a low temperature: some negatives get far less than the floor
    sim = _random_sim(b, seed=3)
    failed, got = _call("negative_weights", fn, sim.clone(), temp)
    if failed is not None:
        return failed
    expected = losses.negative_weights(sim, temp, floor=1e-4)
    bad = _same_shape("negative_weights", got, expected, "(B, B)")
    if bad is not None:
        return bad
    got = got.detach().double()
    if (got.diagonal().abs() > 1e-9).any():
        return _say(False, "the diagonal is not 0: the positive itself could be drawn as a negative. "
                           "Hint: set it to 0 after adding the floor.")
    if (got - expected.double()).abs().max() <= 1e-6:
        return _say(True, "every negative keeps at least a small chance, the similar ones much more; "
                          "never the positive.")
    eye = torch.eye(b, dtype=torch.bool)
    softmax = (sim / temp).softmax(dim=1)
    unnormalised = (softmax + 1e-4).masked_fill(eye, 0.0)
    near = {
        "no_floor": losses.negative_weights(sim, temp, floor=0.0),
        "floor_unnormalised": unnormalised,
        "zeroed_unnormalised": softmax.masked_fill(eye, 0.0),
        "no_temp": losses.negative_weights(sim, 1.0, floor=1e-4),
        "columns": losses.negative_weights(sim.t(), temp, floor=1e-4).t(),
    }
    hints = {
        "no_floor": "that is the draw without a floor (LAVIS's main branch). Add 1e-4 to the softmax, "
                    "then set the positive to 0 and renormalise, as LAVIS 1.0.2 does.",
        "floor_unnormalised": "the rows do not sum to 1: after zeroing the positive, divide each row "
                              "by its sum (torch.multinomial would do it silently; here say it).",
        "zeroed_unnormalised": "the rows do not sum to 1: after zeroing the positive, divide each row "
                               "by its sum; and add the 1e-4 floor before zeroing.",
        "no_temp": "divide the similarities by temp before the softmax.",
        "columns": "each row (an image) is one distribution over the texts: softmax over dim=1.",
    }
    slip = next((k for k, v in near.items() if (got - v.double()).abs().max() <= 1e-6), None)
    if slip:
        return _say(False, hints[slip])
    return _say(False, f"the weights differ from LAVIS's by up to {float((got - expected).abs().max()):.3g}. "
                       "Hint: softmax(sim / temp, dim=1) + 1e-4, the diagonal set to 0, rows renormalised.")


def check_encoder_inputs(fn: Callable) -> CheckResult:
    """``fn(prefix, prompt_embeds, prompt_mask)`` -> (inputs_embeds, attention_mask): the projected
    queries first, then the prompt; ones for the queries in front of the prompt's mask."""
    gen = torch.Generator().manual_seed(0)
    prefix = torch.randn(2, 4, 6, generator=gen)  # (B, Q, d_model)
    prompt = torch.randn(2, 3, 6, generator=gen)  # (B, T, d_model)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    failed, got = _call("encoder_inputs", fn, prefix, prompt, mask)
    if failed is not None:
        return failed
    if not isinstance(got, (tuple, list)) or len(got) != 2:
        return _say(False, "return two things: (inputs_embeds, attention_mask).")
    embeds, got_mask = got
    expected = torch.cat([prefix, prompt], dim=1)
    bad = _same_shape("inputs_embeds", embeds, expected, "(B, Q + T, d_model)")
    if bad is not None:
        return bad
    if torch.allclose(embeds, torch.cat([prompt, prefix], dim=1)) and not torch.allclose(embeds, expected):
        return _say(False, "the prompt comes first; BLIP-2 puts the queries in front of it.")
    if not torch.allclose(embeds, expected):
        return _say(False, "inputs_embeds is not [prefix; prompt] along the sequence axis (dim=1).")
    expected_mask = torch.cat([torch.ones(2, 4, dtype=mask.dtype), mask], dim=1)
    if not isinstance(got_mask, torch.Tensor) or tuple(got_mask.shape) != (2, 7):
        return _say(False, "attention_mask must have shape (B, Q + T): ones for the queries, then the prompt's mask.")
    if not torch.equal(got_mask.long(), expected_mask.long()):
        return _say(False, "attention_mask is wrong: every query is real (1), the prompt keeps its padding (0).")
    return _say(True, "queries first, then the prompt; the mask opens every query.")


def check_labels(fn: Callable) -> CheckResult:
    """``fn(ids, mask)`` -> T5 labels: the ids, with -100 wherever the mask is 0."""
    ids = torch.tensor([[7, 8, 9, 1, 0], [7, 9, 1, 0, 0]])
    mask = (ids != 0).long()
    given = ids.clone()
    failed, got = _call("make_labels", fn, given, mask)
    if failed is not None:
        return failed
    expected = ids.masked_fill(mask == 0, -100)
    bad = _same_shape("make_labels", got, expected, "(B, T)")
    if bad is not None:
        return bad
    if not torch.equal(given, ids):
        return _say(False, "make_labels changed its input in place. Hint: clone() first, or use masked_fill.")
    if not torch.equal(got, expected):
        return _say(False, "padding must become -100 (ignored by the loss); every real token, </s> "
                           "included, stays. T5 shifts the labels itself: do not shift them.")
    return _say(True, "padding is ignored, </s> is learned, and T5 builds its decoder inputs from these.")
