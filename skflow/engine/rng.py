"""Where the engine's random draws come from, per thread.

torch has one global generator per device, shared by every thread of a
process. Fits running at the same time in threads (joblib's threading
backend, a thread pool) would interleave their draws on it and stop being
reproducible, and seeding it would change the user's own random state. So
the noise drawn while training or sampling (dequantization, flow matching's
noise and times, Hutchinson probes, augmented coordinates) comes from the
generator that :func:`drawing_from` sets for the current thread, and only
falls back to torch's global one outside such a block. Initial weights are
drawn by the layers' own ``nn`` initializers: :func:`seeded_build` hands
them a seeded generator of their own, so building a flow neither reads nor
moves the global one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor
from torch.overrides import TorchFunctionMode

_local = threading.local()


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


# Random functions of torch (and in-place fills of tensors) that draw from a
# generator given as ``generator=``; nn.init's functions take one too.
_RANDOM = frozenset(
    {"rand", "randn", "randint", "randperm", "normal", "bernoulli", "binomial", "multinomial"}
    | {"poisson"}
    | {"rand_like", "randn_like", "randint_like"}
    | {"uniform_", "normal_", "random_", "bernoulli_", "exponential_", "geometric_"}
    | {"log_normal_", "cauchy_"}
)
# Factories whose floating results take torch's default dtype.
_DEFAULT_DTYPE = frozenset(
    {"empty", "zeros", "ones", "full", "eye", "arange", "linspace", "logspace"}
    | {"tensor", "as_tensor", "rand", "randn", "normal"}
)


class _SeededBuild(TorchFunctionMode):
    """Random draws from ``generator`` unless a call names its own, and
    floating tensors made in float32 whatever the default dtype."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        name = getattr(func, "__name__", "")
        random = name in _RANDOM or "generator" in kwargs
        # (A generator the call passes, by name or position, is the call's own.)
        own = kwargs.get("generator") is not None or any(
            isinstance(a, torch.Generator) for a in args
        )
        if random and not own:
            kwargs["generator"] = self.generator
        if name not in _DEFAULT_DTYPE or kwargs.get("dtype") is not None:
            return func(*args, **kwargs)
        if name in ("rand", "randn"):  # (float64 draws are other numbers)
            kwargs["dtype"] = torch.float32
        out = func(*args, **kwargs)
        if isinstance(out, Tensor) and out.dtype == torch.get_default_dtype() != torch.float32:
            out = out.float()
        return out


@contextmanager
def seeded_build(seed: int) -> Iterator[None]:
    """Within the block (in this thread), tensors are made on the CPU in
    float32 (floating ones; the default dtype and device set with torch's
    ``set_default_*`` do not apply) and random draws come from a generator
    seeded with ``seed`` (unless a call passes its own): a flow built here
    has the same initial weights in any thread and process, and torch's
    global generators neither give nor lose a number."""
    with torch.device("cpu"), _SeededBuild(torch.Generator().manual_seed(seed)):
        yield
