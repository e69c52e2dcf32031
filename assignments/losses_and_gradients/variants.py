"""Variants of the solutions of losses_and_gradients, for the tests of the tests.

Each ``code`` replaces the whole solution cell ``cell`` of an otherwise correct
submission (see tests/test_assignments.py). WRONG ones are plausible mistakes that
must lose points on every test cell in ``fails``; ALTERNATIVE ones are correct but
written differently from the solution and must get full points; DELEGATING ones call
the reference or a torch built-in and must be rejected by ``forbid``.
"""

WRONG = [
    # ---------------------------------------------------------------- softmax
    {
        "cell": "softmax",
        "name": "softmax without the max shift",
        "code": '''def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of x along dim."""
    e = x.exp()
    return e / e.sum(dim=dim, keepdim=True)
''',
        "fails": ["test_softmax_stable"],
    },
    {
        "cell": "softmax",
        "name": "softmax normalized over all elements instead of along dim",
        "code": '''def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of x along dim."""
    e = (x - x.max()).exp()
    return e / e.sum()
''',
        "fails": ["test_softmax", "test_softmax_stable"],
    },
    {
        "cell": "softmax",
        "name": "softmax shifted by the global maximum instead of each row's",
        "code": '''def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of x along dim."""
    e = (x - x.max()).exp()
    return e / e.sum(dim=dim, keepdim=True)
''',
        "fails": ["test_softmax_stable"],
    },
    # ---------------------------------------------------------------- log_softmax
    {
        "cell": "log_softmax",
        "name": "log_softmax as the log of the (stable) softmax",
        "code": '''def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-softmax of x along dim."""
    return softmax(x, dim=dim).log()
''',
        "fails": ["test_log_softmax_stable"],
    },
    {
        "cell": "log_softmax",
        "name": "log_softmax without the max shift",
        "code": '''def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-softmax of x along dim."""
    return x - x.exp().sum(dim=dim, keepdim=True).log()
''',
        "fails": ["test_log_softmax_stable"],
    },
    {
        "cell": "log_softmax",
        "name": "log_softmax that forgets to add the maximum back",
        "code": '''def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-softmax of x along dim."""
    m = x.amax(dim=dim, keepdim=True)
    return x - (x - m).exp().sum(dim=dim, keepdim=True).log()
''',
        "fails": ["test_log_softmax", "test_log_softmax_stable"],
    },
    # ---------------------------------------------------------------- cross_entropy
    {
        "cell": "cross_entropy",
        "name": "cross_entropy whose mean counts the ignored targets",
        "code": '''def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy."""
    log_probs = log_softmax(logits, dim=1)
    if target.is_floating_point():
        losses = -(target * log_probs).sum(dim=1)
    else:
        ignored = target == ignore_index
        picked = log_probs.gather(1, target.masked_fill(ignored, 0).unsqueeze(1)).squeeze(1)
        losses = (-picked).masked_fill(ignored, 0.0)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
''',
        "fails": ["test_cross_entropy_indices"],
    },
    {
        "cell": "cross_entropy",
        "name": "cross_entropy that does not handle ignore_index",
        "code": '''def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy."""
    log_probs = log_softmax(logits, dim=1)
    if target.is_floating_point():
        losses = -(target * log_probs).sum(dim=1)
    else:
        losses = -log_probs[torch.arange(len(target), device=target.device), target]
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
''',
        "fails": ["test_cross_entropy_indices"],
    },
    {
        "cell": "cross_entropy",
        "name": "cross_entropy averaging distributions over the classes too",
        "code": '''def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy."""
    log_probs = log_softmax(logits, dim=1)
    if target.is_floating_point():
        losses = -(target * log_probs).mean(dim=1)
        count = losses.numel()
    else:
        ignored = target == ignore_index
        picked = log_probs.gather(1, target.masked_fill(ignored, 0).unsqueeze(1)).squeeze(1)
        losses = (-picked).masked_fill(ignored, 0.0)
        count = (~ignored).sum()
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.sum() / count
''',
        "fails": ["test_cross_entropy_distributions"],
    },
    # ---------------------------------------------------------------- smooth_labels
    {
        "cell": "smooth_labels",
        "name": "smooth_labels giving the other classes alpha / (K - 1)",
        "code": '''def smooth_labels(target, num_classes, label_smoothing):
    """Label-smoothed targets."""
    one_hot = (target.unsqueeze(-1) == torch.arange(num_classes, device=target.device)).float()
    other = label_smoothing / max(num_classes - 1, 1)
    return (1 - label_smoothing) * one_hot + other * (1 - one_hot)
''',
        "fails": ["test_smooth_labels"],
    },
    {
        "cell": "smooth_labels",
        "name": "smooth_labels adding alpha / K without taking it from the gold class",
        "code": '''def smooth_labels(target, num_classes, label_smoothing):
    """Label-smoothed targets."""
    one_hot = (target.unsqueeze(-1) == torch.arange(num_classes, device=target.device)).float()
    return one_hot + label_smoothing / num_classes
''',
        "fails": ["test_smooth_labels"],
    },
    {
        "cell": "smooth_labels",
        "name": "smooth_labels giving the gold class 1 - alpha (rows do not sum to 1)",
        "code": '''def smooth_labels(target, num_classes, label_smoothing):
    """Label-smoothed targets."""
    one_hot = (target.unsqueeze(-1) == torch.arange(num_classes, device=target.device)).float()
    return torch.where(one_hot == 1, 1 - label_smoothing, label_smoothing / num_classes)
''',
        "fails": ["test_smooth_labels"],
    },
    # ---------------------------------------------------------------- cross_entropy_grad
    {
        "cell": "cross_entropy_grad",
        "name": "cross_entropy_grad without dividing by N for the mean",
        "code": '''def cross_entropy_grad(logits, target, ignore_index=-100, reduction="mean"):
    """Gradient of cross_entropy with respect to the logits."""
    probs = softmax(logits, dim=1)
    if target.is_floating_point():
        return probs - target
    ignored = (target == ignore_index).unsqueeze(1)
    one_hot = torch.zeros_like(probs).scatter_(1, target.clamp_min(0).unsqueeze(1), 1.0)
    return (probs - one_hot).masked_fill(ignored, 0.0)
''',
        "fails": ["test_cross_entropy_grad"],
    },
    {
        "cell": "cross_entropy_grad",
        "name": "cross_entropy_grad with the sign flipped (target minus softmax)",
        "code": '''def cross_entropy_grad(logits, target, ignore_index=-100, reduction="mean"):
    """Gradient of cross_entropy with respect to the logits."""
    probs = softmax(logits, dim=1)
    if target.is_floating_point():
        grad, count = target - probs, logits.shape[0]
    else:
        ignored = target == ignore_index
        one_hot = torch.zeros_like(probs).scatter_(1, target.clamp_min(0).unsqueeze(1), 1.0)
        grad = (one_hot - probs).masked_fill(ignored.unsqueeze(1), 0.0)
        count = (~ignored).sum().clamp_min(1)
    return grad / count if reduction == "mean" else grad
''',
        "fails": ["test_cross_entropy_grad"],
    },
    {
        "cell": "cross_entropy_grad",
        "name": "cross_entropy_grad that keeps the gradient of ignored examples",
        "code": '''def cross_entropy_grad(logits, target, ignore_index=-100, reduction="mean"):
    """Gradient of cross_entropy with respect to the logits."""
    probs = softmax(logits, dim=1)
    if target.is_floating_point():
        grad, count = probs - target, logits.shape[0]
    else:
        ignored = target == ignore_index
        one_hot = torch.zeros_like(probs).scatter_(1, target.clamp_min(0).unsqueeze(1), 1.0)
        grad = probs - one_hot
        count = (~ignored).sum().clamp_min(1)
    return grad / count if reduction == "mean" else grad
''',
        "fails": ["test_cross_entropy_grad"],
    },
    {
        "cell": "cross_entropy_grad",
        "name": "near-miss: cross_entropy_grad shifting the caller's logits in place",
        "code": '''def cross_entropy_grad(logits, target, ignore_index=-100, reduction="mean"):
    """Gradient of cross_entropy with respect to the logits."""
    logits -= logits.amax(dim=1, keepdim=True)  # in place: the caller's logits change
    probs = softmax(logits, dim=1)
    if target.is_floating_point():
        grad, count = probs - target, logits.shape[0]
    else:
        ignored = target == ignore_index
        one_hot = torch.zeros_like(probs).scatter_(1, target.clamp_min(0).unsqueeze(1), 1.0)
        grad = (probs - one_hot).masked_fill(ignored.unsqueeze(1), 0.0)
        count = (~ignored).sum().clamp_min(1)
    return grad / count if reduction == "mean" else grad
''',
        "fails": ["test_cross_entropy_grad"],
    },
    # ---------------------------------------------------------------- bce_with_logits
    {
        "cell": "bce_with_logits",
        "name": "bce_with_logits through log(sigmoid(x))",
        "code": '''def bce_with_logits(logits, target, reduction="mean"):
    """Binary cross-entropy on logits."""
    p = torch.sigmoid(logits)
    losses = -(target * p.log() + (1 - target) * (1 - p).log())
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
''',
        "fails": ["test_bce_with_logits_stable"],
    },
    {
        "cell": "bce_with_logits",
        "name": "bce_with_logits with exp(-x) instead of exp(-|x|)",
        "code": '''def bce_with_logits(logits, target, reduction="mean"):
    """Binary cross-entropy on logits."""
    losses = logits.clamp_min(0) - logits * target + (-logits).exp().log1p()
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
''',
        "fails": ["test_bce_with_logits", "test_bce_with_logits_stable"],
    },
    {
        "cell": "bce_with_logits",
        "name": "bce_with_logits whose mean divides by the batch size, not the element count",
        "code": '''def bce_with_logits(logits, target, reduction="mean"):
    """Binary cross-entropy on logits."""
    losses = logits.clamp_min(0) - logits * target + (-logits.abs()).exp().log1p()
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.sum() / logits.shape[0]
''',
        "fails": ["test_bce_with_logits"],
    },
    # ---------------------------------------------------------------- bce_with_logits_grad
    {
        "cell": "bce_with_logits_grad",
        "name": "bce_with_logits_grad with the sign flipped",
        "code": '''def bce_with_logits_grad(logits, target, reduction="mean"):
    """Gradient of bce_with_logits with respect to the logits."""
    grad = target - torch.sigmoid(logits)
    return grad / logits.numel() if reduction == "mean" else grad
''',
        "fails": ["test_bce_with_logits_grad"],
    },
    {
        "cell": "bce_with_logits_grad",
        "name": "bce_with_logits_grad ignoring the mean reduction",
        "code": '''def bce_with_logits_grad(logits, target, reduction="mean"):
    """Gradient of bce_with_logits with respect to the logits."""
    return torch.sigmoid(logits) - target
''',
        "fails": ["test_bce_with_logits_grad"],
    },
    {
        "cell": "bce_with_logits_grad",
        "name": "bce_with_logits_grad using the derivative of the sigmoid",
        "code": '''def bce_with_logits_grad(logits, target, reduction="mean"):
    """Gradient of bce_with_logits with respect to the logits."""
    s = torch.sigmoid(logits)
    grad = s * (1 - s) * (s - target)
    return grad / logits.numel() if reduction == "mean" else grad
''',
        "fails": ["test_bce_with_logits_grad"],
    },
]

ALTERNATIVE = [
    {
        "cell": "softmax",
        "name": "softmax through exp(x - logsumexp) with max(...).values",
        "code": '''def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of x along dim."""
    m = x.max(dim=dim, keepdim=True).values
    log_z = m + torch.log(torch.sum(torch.exp(x - m), dim=dim, keepdim=True))
    return torch.exp(x - log_z)
''',
    },
    {
        "cell": "log_softmax",
        "name": "log_softmax as x minus the log-sum-exp",
        "code": '''def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-softmax of x along dim."""
    m = torch.amax(x, dim, keepdim=True)
    return x - (m + torch.log(torch.exp(x - m).sum(dim, keepdim=True)))
''',
    },
    {
        "cell": "cross_entropy",
        "name": "cross_entropy with a one-hot mask instead of gather",
        "code": '''def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy."""
    log_probs = log_softmax(logits, dim=1)
    if target.is_floating_point():
        weights = target
        keep = torch.ones(len(target), dtype=torch.bool, device=target.device)
    else:
        keep = target != ignore_index
        classes = torch.arange(logits.shape[1], device=logits.device)
        weights = ((target.unsqueeze(1) == classes) & keep.unsqueeze(1)).to(logits.dtype)
    losses = -(weights * log_probs).sum(dim=1)
    if reduction == "sum":
        return losses.sum()
    if reduction == "mean":
        return losses.sum() / keep.sum()
    return losses
''',
    },
    {
        "cell": "smooth_labels",
        "name": "smooth_labels with torch.full and scatter",
        "code": '''def smooth_labels(target, num_classes, label_smoothing):
    """Label-smoothed targets."""
    off = label_smoothing / num_classes
    out = torch.full((*target.shape, num_classes), off, device=target.device)
    return out.scatter(-1, target.unsqueeze(-1), 1 - label_smoothing + off)
''',
    },
    {
        "cell": "cross_entropy_grad",
        "name": "cross_entropy_grad by indexing the gold entries in a loop-free way",
        "code": '''def cross_entropy_grad(logits, target, ignore_index=-100, reduction="mean"):
    """Gradient of cross_entropy with respect to the logits."""
    grad = softmax(logits, dim=1)
    if target.is_floating_point():
        grad = grad - target
        scale = 1 / logits.shape[0]
    else:
        keep = target != ignore_index
        rows = torch.arange(len(target), device=target.device)[keep]
        grad[rows, target[keep]] -= 1
        grad = grad * keep.unsqueeze(1)
        scale = 1 / max(int(keep.sum()), 1)
    return grad * scale if reduction == "mean" else grad
''',
    },
    {
        "cell": "bce_with_logits",
        "name": "bce_with_logits split into the two signs of x with where",
        "code": '''def bce_with_logits(logits, target, reduction="mean"):
    """Binary cross-entropy on logits."""
    softplus_neg = torch.where(
        logits >= 0,
        torch.log1p(torch.exp(-logits.abs())),
        -logits + torch.log1p(torch.exp(-logits.abs())),
    )
    losses = (1 - target) * logits + softplus_neg
    if reduction == "mean":
        return losses.mean()
    return losses.sum() if reduction == "sum" else losses
''',
    },
    {
        "cell": "bce_with_logits_grad",
        "name": "bce_with_logits_grad with a hand-written stable sigmoid",
        "code": '''def bce_with_logits_grad(logits, target, reduction="mean"):
    """Gradient of bce_with_logits with respect to the logits."""
    z = torch.exp(-logits.abs())
    sigmoid = torch.where(logits >= 0, 1 / (1 + z), z / (1 + z))
    scale = 1 / logits.numel() if reduction == "mean" else 1.0
    return (sigmoid - target) * scale
''',
    },
]

DELEGATING = [
    {
        "cell": "softmax",
        "name": "softmax calling torch.softmax",
        "code": '''def softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax of x along dim."""
    return torch.softmax(x, dim=dim)
''',
        "fails": ["test_softmax", "test_softmax_stable"],
    },
    {
        "cell": "log_softmax",
        "name": "log_softmax calling the npfl_lib reference",
        "code": '''def log_softmax(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-softmax of x along dim."""
    from npfl_lib.functional import log_softmax as reference

    return reference(x, dim=dim)
''',
        "fails": ["test_log_softmax", "test_log_softmax_stable"],
    },
    {
        "cell": "cross_entropy",
        "name": "cross_entropy calling F.cross_entropy",
        "code": '''import torch.nn.functional as F


def cross_entropy(logits, target, ignore_index=-100, reduction="mean"):
    """Softmax cross-entropy."""
    return F.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
''',
        "fails": ["test_cross_entropy_indices", "test_cross_entropy_distributions"],
    },
    {
        "cell": "smooth_labels",
        "name": "smooth_labels calling the npfl_lib reference",
        "code": '''import npfl_lib


def smooth_labels(target, num_classes, label_smoothing):
    """Label-smoothed targets."""
    return npfl_lib.functional.smooth_labels(target, num_classes, label_smoothing)
''',
        "fails": ["test_smooth_labels"],
    },
    {
        "cell": "cross_entropy_grad",
        "name": "cross_entropy_grad through autograd",
        "code": '''def cross_entropy_grad(logits, target, ignore_index=-100, reduction="mean"):
    """Gradient of cross_entropy with respect to the logits."""
    x = logits.detach().requires_grad_()
    loss = cross_entropy(x, target, ignore_index=ignore_index, reduction=reduction)
    if reduction == "none":
        loss = loss.sum()
    loss.backward()
    return x.grad
''',
        "fails": ["test_cross_entropy_grad"],
    },
    {
        "cell": "bce_with_logits",
        "name": "bce_with_logits calling F.binary_cross_entropy_with_logits",
        "code": '''from torch.nn.functional import binary_cross_entropy_with_logits as bce


def bce_with_logits(logits, target, reduction="mean"):
    """Binary cross-entropy on logits."""
    return bce(logits, target, reduction=reduction)
''',
        "fails": ["test_bce_with_logits", "test_bce_with_logits_stable"],
    },
    {
        "cell": "bce_with_logits_grad",
        "name": "bce_with_logits_grad calling the npfl_lib reference",
        "code": '''from npfl_lib.functional import binary_cross_entropy_with_logits_grad


def bce_with_logits_grad(logits, target, reduction="mean"):
    """Gradient of bce_with_logits with respect to the logits."""
    return binary_cross_entropy_with_logits_grad(logits, target, reduction=reduction)
''',
        "fails": ["test_bce_with_logits_grad"],
    },
]
