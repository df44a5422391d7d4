"""Numerical health checks of a fitted flow."""

from __future__ import annotations

import torch
from torch import Tensor

from skflow.engine.device import EVAL_CHUNK
from skflow.engine.ode import SolverUnderflow
from skflow.engine.transforms import Transform


@torch.no_grad()
def round_trip_error(transform: Transform, x: Tensor) -> Tensor:
    """Elementwise ``|x - T^{-1}(T(x))|`` (same shape as ``x``), evaluated in chunks.

    Exact arithmetic gives zero; in floating point a healthy flow gives a few
    units of round-off, while a layer with an exploding inverse (Behrmann et
    al. 2021, arXiv:2006.09347) gives large or non-finite errors, which come
    back as ``inf``, as do rows of an ODE solve whose step size underflows.
    """
    out = []
    for start in range(0, x.shape[0], EVAL_CHUNK):
        rows = x[start : start + EVAL_CHUNK]
        try:
            back, _ = transform.inverse(transform(rows)[0])
        except SolverUnderflow:
            out.append(torch.full_like(rows, torch.inf))
            continue
        err = (rows - back).abs()
        out.append(torch.where(torch.isnan(err), torch.inf, err))
    return torch.cat(out) if out else x.new_zeros(x.shape)
