"""The README's table of refused options: each row raises the error it states.

The optimizer options (``foreach``, ``fused``, ``differentiable``, tensor ``betas``) are
also tested wherever they arrive in tests/test_optim.py, and against torch's own
configurations in tests/test_torch_db.py.
"""

import math

import pytest
import torch

from npfl_lib import init, nn, optim
from npfl_lib.functional import losses


def param():
    return [torch.nn.Parameter(torch.zeros(3))]


def sparse_step():
    embedding = torch.nn.Embedding(4, 2, sparse=True)
    optimizer = optim.SGD(embedding.parameters(), lr=0.1)
    embedding(torch.tensor([1])).sum().backward()
    optimizer.step()


x, t = torch.zeros(3, 2), torch.zeros(3)
ROWS = {
    "foreach=True": (lambda: optim.SGD(param(), foreach=True), ValueError, "foreach"),
    "fused=True": (lambda: optim.Adam(param(), fused=True), ValueError, "fused"),
    "differentiable=True": (
        lambda: optim.AdamW(param(), differentiable=True),
        ValueError,
        "differentiable",
    ),
    "tensor betas": (
        lambda: optim.Adam(param(), betas=(torch.tensor(0.9), torch.tensor(0.99))),
        ValueError,
        "betas",
    ),
    "sparse gradients": (sparse_step, TypeError, "sparse"),
    "weight=": (
        lambda: losses.cross_entropy(x, t.long(), weight=torch.ones(2)),
        TypeError,
        "weight",
    ),
    "pos_weight=": (
        lambda: losses.binary_cross_entropy_with_logits(x, x, pos_weight=torch.ones(2)),
        TypeError,
        "pos_weight",
    ),
    "mse_loss broadcasting": (lambda: losses.mse_loss(torch.zeros(3, 1), t), ValueError, "shape"),
    "huber_loss broadcasting": (
        lambda: losses.huber_loss(torch.zeros(3, 1), t),
        ValueError,
        "shape",
    ),
    "nn.Dropout(p=1)": (lambda: nn.Dropout(1.0), ValueError, "p must lie in"),
    "nn.MLP(dropout=1)": (lambda: nn.MLP(2, [3], 1, dropout=1.0), ValueError, "dropout"),
    "normal_ non-finite mean": (lambda: init.normal_(t, mean=math.nan), ValueError, "mean"),
    "normal_ non-finite std": (lambda: init.normal_(t, std=math.inf), ValueError, "std"),
    "kaiming_ on an empty 1-dim tensor": (
        lambda: init.kaiming_uniform_(torch.empty(0)),
        ValueError,
        "at least 2 dimensions",
    ),
}


@pytest.mark.parametrize("row", list(ROWS))
def test_refused(row):
    call, error, match = ROWS[row]
    with pytest.raises(error, match=match):
        call()
