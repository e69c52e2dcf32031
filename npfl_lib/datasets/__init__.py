"""Data sets for the lecture and the demo, each as ``train`` / ``dev`` / ``test`` splits.

Every loader returns a ``Splits`` object with the three ``Split`` s (each a
``torch.utils.data.Dataset`` of ``(input, target)`` pairs, also holding the whole
``inputs`` and ``targets`` tensors), ``num_classes``, ``input_shape`` and ``name``.
Inputs are float32, targets int64 class indices (except the regression set's float32).
The splits are deterministic: the same on every call, whatever the global RNG.

- ``load_digits()``: scikit-learn's bundled 8x8 digits, the offline default.
- ``MNIST(root=None, download=True, mirrors=None)``: MNIST, downloaded and cached;
  ``MNIST.is_cached()`` tells whether it loads without the network.
- ``moons``, ``circles``, ``spirals``, ``polynomial_regression``: toy sets for plots.
"""

from .digits import *
from .mnist import *
from .splits import *
from .toy import *
