"""Inverse autoregressive flow (Kingma, Salimans, Jozefowicz, Chen, Sutskever &
Welling 2016, arXiv:1606.04934).

An IAF layer is a MAF layer used backwards: the MADE reads the *latent*
coordinates, so the latent -> data map (sampling) is one network pass per
layer, while the data -> latent map (density) must recover the coordinates one
at a time, ``D`` sequential steps per layer. That makes IAF the fast sampler
and MAF the fast density; fitting by maximum likelihood, as this package
does, pays the slow direction on every training step, so prefer ``"maf"`` or
``"nsf"`` unless sampling speed is what matters. Layers are affine
(bounded log-scale) with the feature order reversed between them.
"""

from __future__ import annotations

from collections.abc import Sequence

from skflow.engine.flows.maf import reversing_stack
from skflow.engine.transforms import AffineTransformer, Inverse, MaskedAutoregressive, Transform


def build_iaf(n_features: int, *, n_layers: int, hidden_units: Sequence[int]) -> Transform:
    """Stack of ``n_layers`` inverted MADE affine layers with order reversal between them."""
    return reversing_stack(
        n_features,
        n_layers,
        lambda order: Inverse(
            MaskedAutoregressive(n_features, AffineTransformer(), hidden_units, order)
        ),
    )
