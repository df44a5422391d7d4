"""Torch engine of skflow: bijections, base distribution, flows, training, devices.

Nothing in this package imports scikit-learn or sees numpy random states; the
estimator layer (:mod:`skflow._estimator`) converts user input into tensors and
calls in here. (numpy and scipy serve a few host-side computations: flow
matching's optimal-transport pairing and the hashing that keys per-row draws.)
"""

from skflow.engine.device import resolve_device
from skflow.engine.distributions import Flow, StandardNormal
from skflow.engine.flows import KINDS, build_transform
from skflow.engine.training import TrainingResult, train_flow

__all__ = [
    "KINDS",
    "Flow",
    "StandardNormal",
    "TrainingResult",
    "build_transform",
    "resolve_device",
    "train_flow",
]
