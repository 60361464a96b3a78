"""The one training loop of the miniature, and what it needs: its settings, its schedule, its seeds.

Every training calls ``fit``: the ViT, T5 and OPT stand-ins, stage 1 and stage 2 (with T5,
or with OPT). Each brings its own parameters and a ``step`` function that draws its batch and returns its losses;
the loop does the rest (AdamW, the learning-rate schedule, backward, the history, the
progress bar), as minGPT's ``Trainer.run`` does.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import JsonConfig


@dataclass
class OptimConfig(JsonConfig):
    """AdamW for ``steps`` steps of ``batch_size`` examples: linear warmup to ``lr``, then
    cosine decay to a tenth of it (``lr_at``)."""

    steps: int = 500
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.05

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"OptimConfig.{name} must be a positive integer, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"OptimConfig.lr must be > 0, got {self.lr!r}")


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float = 0.1) -> float:
    """Linear warmup, then cosine decay to ``floor * peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t)))


def fit(
    params: Iterable[nn.Parameter], optim: OptimConfig, step: Callable[[int], dict[str, torch.Tensor]],
    desc: str, progress: bool = True, callback: Callable[[int], None] | None = None, callback_every: int = 100,
    stop_after: int | None = None,
) -> dict[str, list[float]]:
    """Train the parameters that require grad for ``optim.steps`` steps.

    ``step(i)`` draws batch ``i`` and returns its losses by name: ``"loss"`` is minimised, every
    entry is recorded. Returns the history, one list per name. ``callback(i)``, if given, runs
    after every ``callback_every`` steps and after the last (``i`` steps done). ``stop_after``:
    run only the first steps of that same run, its schedule still spanning ``optim.steps``
    (to compare a loop written out by hand with the first steps of the library's).
    """
    if stop_after is None:
        stop_after = optim.steps
    elif isinstance(stop_after, bool) or not isinstance(stop_after, int) or not 1 <= stop_after <= optim.steps:
        raise ValueError(f"stop_after must be an integer from 1 to optim.steps = {optim.steps}, got {stop_after!r}")
    opt = torch.optim.AdamW([p for p in params if p.requires_grad], lr=optim.lr, weight_decay=optim.weight_decay)
    history: dict[str, list[float]] = {}
    bar = tqdm(range(stop_after), desc=desc, disable=not progress, leave=False)
    for i in bar:
        for group in opt.param_groups:
            group["lr"] = lr_at(i, optim.steps, optim.lr, optim.warmup_steps)
        losses = step(i)
        opt.zero_grad(set_to_none=True)
        losses["loss"].backward()
        opt.step()
        for name, value in losses.items():
            history.setdefault(name, []).append(value.item())
        if i % 20 == 0:
            bar.set_postfix({name: f"{values[-1]:.3f}" for name, values in history.items()})
        if callback is not None and ((i + 1) % callback_every == 0 or i + 1 == stop_after):
            callback(i + 1)
    return history


def freeze(module: nn.Module) -> nn.Module:
    """No gradients, evaluation mode: what BLIP-2 does to its image encoder and its LLM."""
    module.requires_grad_(False)
    return module.eval()


@contextmanager
def seeded(seed: int):
    """``with seeded(0): model = Model()``: the weights depend on 0 alone, and PyTorch's global
    generator continues afterwards as if nothing had happened. So a chapter prints the same
    numbers on a first run, when the stand-ins are trained, and on a later one, when they are
    read from the cache."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
