"""Random steps that take their own seed and leave everyone else's random state alone.

A model's initial weights come from PyTorch's global generator, which every random call in a
process shares. A step that reseeds it (or draws from it) changes what the next step gets, so
a notebook would print different numbers on a first run, when the stand-ins are trained, and
on a later one, when they are read from the cache. ``seeded`` runs a step on a fork of the
global generator: the step is reproducible from its seed, and the caller's state is as before.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def seeded(seed: int):
    """``with seeded(0): model = Model()``: the weights depend on 0 alone, and the global
    generator continues afterwards as if nothing had happened."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
