"""Glow (Kingma & Dhariwal 2018, arXiv:1807.03039).

A Glow step is ActNorm (per-channel affine, initialized from the
training data), an invertible linear mixing parametrized as ``P L U`` (the
"invertible 1x1 convolution", log-det in ``O(D)``) and an affine coupling
with Glow's sigmoid scale, which only contracts from data to latent: rows
far from the training data keep finite, Gaussian-like tails instead of
being blown up by compounding scales.
The learned mixing replaces RealNVP's fixed alternation, so every coordinate
can condition every other after a few steps. Density and sampling both take
one pass per step; sampling adds two triangular solves per step. ActNorm
plays the role batch normalization plays in RealNVP, without depending on
the batch, so this kind has no ``batch_norm`` option.

Two modes:

- Vectors (default): steps over the ``n_features`` columns; the couplings'
  conditioners are MLPs with ``hidden_units``. The mixing starts at the
  identity, not at Glow's random rotation: table columns are not
  exchangeable like image channels, the estimator has already whitened
  them, and a rotation blurs axis-aligned structure such as discrete
  columns (held-out log-likelihood on uci_airfoil: -8.4 rotated, -7.9
  identity, measured with the earlier one-width-per-column dequantization).
- Images: ``image_shape=(C, H, W)`` declares that each row is a flattened
  ``C x H x W`` image (C-order, as ``images.reshape(n, -1)`` gives). The flow
  is Glow's multi-scale architecture: ``n_levels`` (default 2) levels of squeeze
  (space-to-depth, 2x2 pixels to 4 channels), ``n_layers`` steps with
  per-channel ActNorm, 1x1 convolutions (log-det ``H * W * log|det W|``)
  and convolutional couplings whose masks split the channels, then (except
  at the last level) a split: a coupling lets the kept half of the channels
  set the mean and scale of the other half (Glow's learned prior), and that
  half is factored out, going straight to the standard-normal base. The
  conditioners are ``skflow.engine.nn.ConvNet`` with
  ``hidden_units`` channels. ``H`` and ``W`` must be divisible by
  ``2 ** n_levels``.
"""

from __future__ import annotations

from collections.abc import Sequence
from numbers import Integral

import torch

from skflow.engine.flows.realnvp import alternating_masks
from skflow.engine.nn import ConvNet
from skflow.engine.transforms import (
    ActNorm,
    Compose,
    Coupling,
    LULinear,
    Permutation,
    SigmoidAffineTransformer,
    Split,
    Transform,
)


def build_glow(
    n_features: int,
    *,
    n_layers: int,
    hidden_units: Sequence[int],
    image_shape: Sequence[int] | None = None,
    n_levels: int | None = None,
) -> Transform:
    """Glow: ``n_layers`` steps (per level, for images) of ActNorm, LU mixing
    and affine coupling; see the module docstring for the image mode
    (``n_levels``: 2 unless given)."""
    # (2, the image default, asks for nothing without images: accepted, as
    # models saved before this check hold it.)
    if image_shape is None and n_levels not in (None, 2):
        raise ValueError(
            f"n_levels={n_levels!r} sets the scales of image Glow: pass image_shape=(C, H, W) "
            "too, or drop n_levels (tabular Glow has one scale)."
        )
    if image_shape is None:
        layers: list[Transform] = []
        for mask in alternating_masks(n_features, n_layers):
            layers += [
                ActNorm(n_features),
                LULinear(n_features, rotation=False),
                Coupling(mask, SigmoidAffineTransformer(), hidden_units),
            ]
        return Compose(*layers)
    n_levels = 2 if n_levels is None else n_levels
    channels, height, width = _check_image_shape(image_shape, n_features, n_levels)
    return _level(channels, height, width, n_layers, hidden_units, n_levels)


def _check_image_shape(
    image_shape: Sequence[int], n_features: int, n_levels: int
) -> tuple[int, int, int]:
    try:  # (a bare int or string is no shape)
        shape = tuple(image_shape) if not isinstance(image_shape, str) else ()
    except TypeError:
        shape = ()
    if len(shape) != 3 or not all(
        isinstance(s, Integral) and not isinstance(s, bool) and s >= 1 for s in shape
    ):
        raise ValueError(
            "image_shape must be three positive ints (channels, height, width), "
            f"got {image_shape!r}."
        )
    if not isinstance(n_levels, Integral) or isinstance(n_levels, bool) or n_levels < 1:
        raise ValueError(f"n_levels must be a positive int, got {n_levels!r}.")
    channels, height, width = shape
    if channels * height * width != n_features:
        raise ValueError(
            f"image_shape={shape} holds {channels * height * width} values but X has "
            f"{n_features} features; each row must be one image flattened in "
            "(channels, height, width) order."
        )
    factor = 2**n_levels
    if height % factor or width % factor:
        raise ValueError(
            f"image_shape={shape}: height and width must be divisible by 2 ** n_levels = "
            f"{factor} (each level halves them); lower n_levels or pad the images."
        )
    return int(channels), int(height), int(width)


def _squeeze(channels: int, height: int, width: int) -> Permutation:
    """Space-to-depth as a permutation of the flat coordinates: each 2x2
    block of pixels becomes 4 channels at half the resolution."""
    idx = torch.arange(channels * height * width).view(channels, height // 2, 2, width // 2, 2)
    return Permutation(idx.permute(0, 2, 4, 1, 3).flatten())


def _conv_coupling(
    channel_mask: torch.Tensor, height: int, width: int, hidden_units: Sequence[int]
) -> Coupling:
    """Affine coupling in which the channels where ``channel_mask`` is True
    condition the others through a convolutional net."""
    n_cond = int(channel_mask.sum())
    transformer = SigmoidAffineTransformer()
    net = ConvNet(
        n_cond,
        len(channel_mask) - n_cond,
        transformer.n_params,
        hidden_units,
        height,
        width,
    )
    return Coupling(channel_mask.repeat_interleave(height * width), transformer, net=net)


def _level(
    channels: int,
    height: int,
    width: int,
    n_steps: int,
    hidden_units: Sequence[int],
    n_levels: int,
) -> Transform:
    """One scale: squeeze, ``n_steps`` steps, then split off half of the
    channels and recurse on the other half."""
    layers: list[Transform] = [_squeeze(channels, height, width)]
    channels, height, width = 4 * channels, height // 2, width // 2
    for mask in alternating_masks(channels, n_steps):
        layers += [
            ActNorm(channels),
            LULinear(channels),
            _conv_coupling(mask, height, width, hidden_units),
        ]
    if n_levels > 1:
        keep = channels // 2
        layers.append(_conv_coupling(torch.arange(channels) < keep, height, width, hidden_units))
        inner = _level(keep, height, width, n_steps, hidden_units, n_levels - 1)
        layers.append(Split(inner, keep * height * width))
    return Compose(*layers)
