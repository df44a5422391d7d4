"""Where the engine's random draws come from, per thread.

torch has one global generator per device, shared by every thread of a
process. Fits running at the same time in threads (joblib's threading
backend, a thread pool) would interleave their draws on it and stop being
reproducible, and seeding it would change the user's own random state. So
the noise drawn while training or sampling (dequantization, flow matching's
noise and times, Hutchinson probes, augmented coordinates) comes from the
generator that :func:`drawing_from` sets for the current thread, and only
falls back to torch's global one outside such a block. Initial weights are
drawn by the layers' own ``nn`` initializers from the global CPU generator:
:func:`seeded_global_rng` seeds and restores it, one thread at a time.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

_local = threading.local()
# Serializes the blocks that seed torch's global CPU generator: it is one
# per process, so two threads building flows at once would draw each
# other's initial weights.
_GLOBAL_RNG_LOCK = threading.RLock()


def _fresh_lock() -> None:
    # A child forked while another thread held the lock would never see it
    # released: it starts with a free one.
    global _GLOBAL_RNG_LOCK
    _GLOBAL_RNG_LOCK = threading.RLock()


if hasattr(os, "register_at_fork"):  # (not on Windows)
    os.register_at_fork(after_in_child=_fresh_lock)


@contextmanager
def drawing_from(generator: torch.Generator | None) -> Iterator[None]:
    """Within the block, the engine's draws in this thread come from
    ``generator`` (None: torch's global generators)."""
    previous = getattr(_local, "generator", None)
    _local.generator = generator
    try:
        yield
    finally:
        _local.generator = previous


def noise_generator(generator: torch.Generator | None = None) -> torch.Generator | None:
    """``generator`` if given, else the one :func:`drawing_from` set for this
    thread, else None (torch's global generator)."""
    return generator if generator is not None else getattr(_local, "generator", None)


def draw(
    shape: tuple[int, ...],
    like: Tensor,
    normal: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Standard normal (or, with ``normal=False``, uniform on ``[0, 1)``)
    draws of ``shape`` in ``like``'s dtype and on its device, from
    :func:`noise_generator` ``(generator)``: drawn on that generator's device
    (a CPU generator keeps draws reproducible across devices) and moved."""
    generator = noise_generator(generator)
    device = generator.device if generator is not None else like.device
    sample = torch.randn if normal else torch.rand
    return sample(shape, generator=generator, device=device, dtype=like.dtype).to(like.device)


@contextmanager
def seeded_global_rng(seed: int) -> Iterator[None]:
    """torch's global CPU generator seeded with ``seed`` within the block and
    restored after it, one thread at a time."""
    # Not torch.manual_seed, which would also reseed every GPU generator,
    # which fork_rng(devices=[]) does not restore.
    with _GLOBAL_RNG_LOCK, torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        yield
