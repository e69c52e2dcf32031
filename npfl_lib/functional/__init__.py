"""From-scratch functional counterparts of ``torch.nn.functional``.

Every function here is written on plain torch tensor operations (no call to the
torch.nn.functional counterpart) and equals PyTorch's built-in to rounding error.
"""

from .activations import *
from .augmentation import *
from .dropout import *
from .loss_grads import *
from .losses import *
from .regularization import *
