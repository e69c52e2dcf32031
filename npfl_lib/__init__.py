"""npfl_lib: the library of the *Training Neural Networks II* course.

From-scratch, torch-exact implementations of what the lecture teaches, small enough
to read: activations, losses and their gradients (``functional``), initializers
(``init``), optimizers (``optim``), gradient clipping (``clip``), metrics
(``metrics``), an MLP (``nn``) and a hand-written backward pass (``manual``); and
the tools the notebooks and assignments train with: ``Trainer`` with its callbacks
``EarlyStopping`` and ``KeepBestWeights``, ``set_seed``, the notebooks' set-up call
``setup`` (device, seed, CPU threads), data sets (``datasets``), ensembling
(``ensemble``), training-curve plots (``plots``) and the assignments' test helpers
(``npfl_lib.grading``, imported on demand).
"""

from . import clip, datasets, ensemble, functional, init, manual, metrics, nn, optim, plots
from .callbacks import EarlyStopping, KeepBestWeights
from .seed import set_seed, setup
from .trainer import Trainer

__version__ = "0.1.0"
