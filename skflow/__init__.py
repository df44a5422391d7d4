"""skflow: normalizing-flow density estimation with a scikit-learn API."""

from skflow._estimator import FlowDensity

__version__ = "0.3.0"
__all__ = ["FlowDensity", "__version__"]
