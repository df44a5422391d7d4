"""Warnings raised by skflow (errors are plain ``ValueError``/``TypeError``)."""

from __future__ import annotations


class InvertibilityWarning(UserWarning):
    """The fitted flow does not invert its training data accurately.

    Raised by ``fit`` when ``reconstruction_error_`` (the largest round-trip
    error ``|x - T^{-1}(T(x))|`` on training rows, in units of each column's
    standard deviation) exceeds a tolerance. Densities are then still
    computed with the forward map, but samples (which use the inverse) and the
    change-of-variables formula can no longer be trusted (Behrmann et al.
    2021, "Understanding and mitigating exploding inverses in invertible
    neural networks", arXiv:2006.09347).
    """
