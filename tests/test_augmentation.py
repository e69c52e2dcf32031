"""MixUp, CutMix and the Beta sampler behind them."""

import math

import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from npfl_lib.functional import cutmix, mixup
from npfl_lib.functional.augmentation import _sample_beta


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def one_hot_batch(n, device, dtype=torch.float64):
    """Example i has class i: mixed targets then reveal lam and perm."""
    return torch.eye(n, dtype=dtype, device=device)


def recover_lam_and_perm(mixed_targets):
    """From targets lam * e_i + (1 - lam) * e_perm(i): lam and perm (lam needs perm(i) != i)."""
    n = mixed_targets.shape[0]
    own = mixed_targets.diagonal()
    others = mixed_targets.clone()
    others.fill_diagonal_(-1.0)
    partner = others.argmax(dim=1)
    paired = others.max(dim=1).values > 0  # False where perm(i) == i (the row is e_i)
    perm = torch.where(paired, partner, torch.arange(n, device=mixed_targets.device))
    lam = own[paired][0].item() if paired.any() else 1.0
    return lam, perm


# ---------------------------------------------------------------- the Beta sampler


@pytest.mark.parametrize("alpha", [0.05, 0.2, 1.0, 2.5, 10.0])
def test_beta_sampler_moments_and_distribution(alpha):
    n = 100_000
    samples = _sample_beta(alpha, n, seeded(1))
    assert samples.shape == (n,) and samples.dtype == torch.float64
    assert ((samples >= 0) & (samples <= 1)).all()
    variance = 1 / (4 * (2 * alpha + 1))
    assert abs(samples.mean().item() - 0.5) < 5 * math.sqrt(variance / n)
    # Standard error of the sample variance: Var[(X - 1/2)^2] <= E[(X - 1/2)^4] <= v / 4,
    # since (X - 1/2)^2 <= 1/4.
    assert abs(samples.var().item() - variance) < 5 * math.sqrt(variance / 4 / n)
    # Kolmogorov-Smirnov on the lower half: near 1, Beta(0.05, 0.05) puts ~8 % of its mass
    # within 1e-16 of 1, where float64 rounds to exactly 1.
    lower = samples[samples < 0.5].numpy()
    cdf = scipy.stats.beta(alpha, alpha).cdf
    assert scipy.stats.kstest(lower, lambda x: 2 * cdf(x)).pvalue > 1e-3
    assert abs(len(lower) / n - 0.5) < 5 * math.sqrt(0.25 / n)


def test_beta_sampler_small_alpha_does_not_produce_nan():
    samples = _sample_beta(0.001, 10_000, seeded(2))
    assert torch.isfinite(samples).all()
    # P(X < e) ~ e**alpha / 2 per side: about 40 % lie below 1e-100, 48 % above 1 - 1e-15.
    assert ((samples < 1e-100) | (samples > 1 - 1e-15)).float().mean() > 0.8


def test_beta_sampler_is_reproducible_and_device_follows_generator(device):
    assert torch.equal(_sample_beta(0.7, 50, seeded(3)), _sample_beta(0.7, 50, seeded(3)))
    assert not torch.equal(_sample_beta(0.7, 50, seeded(3)), _sample_beta(0.7, 50, seeded(4)))
    on_device = _sample_beta(1.0, 10, torch.Generator(device=device).manual_seed(0))
    assert on_device.device.type == device.type
    torch.manual_seed(0)
    assert _sample_beta(1.0, 10, device=device).device.type == device.type


# ---------------------------------------------------------------- mixup


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_exact_relation_between_inputs_and_outputs(alpha, dtype, device):
    n = 16
    x = torch.randn(n, 3, 5, generator=seeded(9), dtype=dtype).to(device)
    y = one_hot_batch(n, device, dtype)
    mixed_x, mixed_y = mixup(x, y, alpha, generator=seeded(5))
    assert mixed_x.shape == x.shape and mixed_x.dtype == dtype and mixed_x.device == x.device
    assert mixed_y.shape == y.shape and mixed_y.dtype == dtype and mixed_y.device == y.device
    lam, perm = recover_lam_and_perm(mixed_y)
    assert 0 <= lam <= 1
    assert torch.equal(perm.sort().values, torch.arange(n, device=device))  # a permutation
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}[dtype]
    torch.testing.assert_close(mixed_y, lam * y + (1 - lam) * y[perm], rtol=tol, atol=tol)
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x[perm], rtol=tol, atol=tol)


def test_mixup_follows_the_documented_draws(device):
    x = torch.randn(10, 4, generator=seeded(1), dtype=torch.float64).to(device)
    y = torch.softmax(torch.randn(10, 3, generator=seeded(2), dtype=torch.float64), 1).to(device)
    g = seeded(6)
    lam = _sample_beta(0.4, 1, g).item()
    perm = torch.randperm(10, generator=g).to(device)
    mixed_x, mixed_y = mixup(x, y, 0.4, generator=seeded(6))
    torch.testing.assert_close(mixed_x, lam * x + (1 - lam) * x[perm], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(mixed_y, lam * y + (1 - lam) * y[perm], rtol=1e-12, atol=1e-15)


def test_mixup_reproducible_and_device_independent(device):
    x, y = torch.randn(8, 6, generator=seeded(1)), one_hot_batch(8, "cpu", torch.float32)
    first = mixup(x.to(device), y.to(device), 1.0, generator=seeded(3))
    second = mixup(x.to(device), y.to(device), 1.0, generator=seeded(3))
    on_cpu = mixup(x, y, 1.0, generator=seeded(3))
    other = mixup(x, y, 1.0, generator=seeded(4))
    for a, b, c in zip(first, second, on_cpu, strict=True):
        assert torch.equal(a, b) and torch.equal(a.cpu(), c)
    assert not torch.equal(on_cpu[1], other[1])


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 12), st.integers(1, 6), st.floats(0.05, 20.0), st.integers(0, 10**6))
def test_mixup_targets_are_distributions(n, k, alpha, seed):
    logits = torch.randn(n, k, generator=seeded(seed), dtype=torch.float64)
    y = torch.softmax(logits, dim=1)
    _, mixed_y = mixup(torch.randn(n, 2, dtype=torch.float64), y, alpha, generator=seeded(seed))
    assert (mixed_y >= 0).all()
    torch.testing.assert_close(mixed_y.sum(1), torch.ones(n, dtype=torch.float64))


def test_mixup_gradients_flow():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    mixed_x, _ = mixup(x, one_hot_batch(5, "cpu"), 1.0, generator=seeded(0))
    (grad,) = torch.autograd.grad(mixed_x.sum(), x)
    torch.testing.assert_close(grad, torch.ones_like(x))  # lam + (1 - lam), once per row


# ---------------------------------------------------------------- cutmix


def changed_box(original, mixed, i):
    """Rows and columns of the pixels of image i that changed: (top, bottom, left, right)."""
    changed = (original[i] != mixed[i]).any(dim=0)
    rows, cols = changed.any(dim=1).nonzero(), changed.any(dim=0).nonzero()
    return rows.min().item(), rows.max().item() + 1, cols.min().item(), cols.max().item() + 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_cutmix_box_comes_from_partner_and_lam_is_pixel_fraction(seed, dtype, device):
    n, h, w = 12, 9, 13
    images = torch.randn(n, 2, h, w, generator=seeded(100 + seed), dtype=dtype).to(device)
    y = one_hot_batch(n, device, dtype)
    mixed, mixed_y = cutmix(images, y, 1.0, generator=seeded(seed))
    assert mixed.shape == images.shape and mixed.dtype == dtype and mixed.device == device
    lam, perm = recover_lam_and_perm(mixed_y)
    torch.testing.assert_close(mixed_y, lam * y + (1 - lam) * y[perm], rtol=0, atol=1e-6)
    partnered = (perm != torch.arange(n, device=device)).nonzero().flatten().tolist()
    assert partnered, "some example should get a partner other than itself"
    if lam == 1.0:  # an empty box: nothing changes
        assert torch.equal(mixed, images)
        return
    top, bottom, left, right = changed_box(images, mixed, partnered[0])
    inside = torch.zeros(h, w, dtype=torch.bool, device=device)
    inside[top:bottom, left:right] = True
    # The box comes from the partner image, every other pixel from the original.
    assert torch.equal(mixed[:, :, inside], images[perm][:, :, inside])
    assert torch.equal(mixed[:, :, ~inside], images[:, :, ~inside])
    # The target lam is exactly the fraction of pixels kept from the original image.
    assert abs(lam - (1 - inside.sum().item() / (h * w))) < 1e-6


def test_cutmix_follows_the_documented_draws(device):
    n, h, w, alpha = 6, 10, 7, 0.8
    images = torch.randn(n, 3, h, w, generator=seeded(1), dtype=torch.float64).to(device)
    y = torch.softmax(torch.randn(n, 4, generator=seeded(2), dtype=torch.float64), 1).to(device)
    for seed in range(20):
        g = seeded(seed)
        lam = _sample_beta(alpha, 1, g).item()
        perm = torch.randperm(n, generator=g).to(device)
        cy, cx = torch.randint(h, (), generator=g).item(), torch.randint(w, (), generator=g).item()
        cut_h, cut_w = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        top, left = cy - cut_h // 2, cx - cut_w // 2
        rows = slice(max(top, 0), min(top + cut_h, h))
        cols = slice(max(left, 0), min(left + cut_w, w))
        expected = images.clone()
        expected[:, :, rows, cols] = images[perm][:, :, rows, cols]
        box_lam = 1 - (rows.stop - rows.start) * (cols.stop - cols.start) / (h * w)
        mixed, mixed_y = cutmix(images, y, alpha, generator=seeded(seed))
        assert torch.equal(mixed, expected)
        torch.testing.assert_close(
            mixed_y, box_lam * y + (1 - box_lam) * y[perm], rtol=1e-12, atol=0
        )


def test_cutmix_box_area_tracks_lam_on_average():
    # alpha = 1: lam ~ U(0, 1) and the box side is r = sqrt(1 - lam) of the image side. A
    # centre uniform on the side leaves r - r**2 / 4 of it inside on average, so the pasted
    # fraction averages E[(r - r**2/4)**2] = 1/2 - 1/5 + 1/48 = 0.32 (a bit less: int()).
    images = torch.zeros(2, 1, 32, 32)
    images[1] = 1.0
    y = torch.eye(2)
    fractions = []
    g = seeded(7)
    for _ in range(600):
        mixed, mixed_y = cutmix(images, y, 1.0, generator=g)
        if mixed_y[0, 1] > 0:  # paired with the other image (and a box of >= 1 pixel: p > .99)
            fractions.append(mixed[0].mean().item())
            assert abs(mixed[0].mean().item() - mixed_y[0, 1].item()) < 1e-6
    assert len(fractions) > 200
    assert abs(sum(fractions) / len(fractions) - 0.32) < 0.06


def test_cutmix_does_not_modify_its_input_and_is_reproducible(device):
    images = torch.randn(5, 3, 8, 8, generator=seeded(1)).to(device)
    copy = images.clone()
    y = one_hot_batch(5, device, torch.float32)
    first = cutmix(images, y, 1.0, generator=seeded(2))
    assert torch.equal(images, copy)
    second = cutmix(images, y, 1.0, generator=seeded(2))
    on_cpu = cutmix(images.cpu(), y.cpu(), 1.0, generator=seeded(2))
    for a, b, c in zip(first, second, on_cpu, strict=True):
        assert torch.equal(a, b) and torch.equal(a.cpu(), c)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 6), st.integers(1, 9), st.integers(1, 9), st.floats(0.05, 10.0), st.integers()
)
def test_cutmix_targets_are_distributions(n, h, w, alpha, seed):
    images = torch.rand(n, 1, h, w, dtype=torch.float64)
    y = torch.softmax(torch.randn(n, 3, dtype=torch.float64), dim=1)
    mixed, mixed_y = cutmix(images, y, alpha, generator=seeded(seed % 2**32))
    assert mixed.shape == images.shape
    assert (mixed_y >= 0).all()
    torch.testing.assert_close(mixed_y.sum(1), torch.ones(n, dtype=torch.float64))


# ---------------------------------------------------------------- bad input

AUGMENTATIONS = {"mixup": (mixup, "inputs"), "cutmix": (cutmix, "images")}


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_rejects_bad_alpha(name):
    fn, _ = AUGMENTATIONS[name]
    images, y = torch.zeros(2, 1, 3, 3), torch.eye(2)
    for alpha in [0.0, -1.0, math.inf, math.nan]:
        with pytest.raises(ValueError, match="alpha must lie in"):
            fn(images, y, alpha)
    for alpha in ["1", None, True]:
        with pytest.raises(TypeError, match="alpha must be a positive real number"):
            fn(images, y, alpha)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_rejects_shape_mismatches(name):
    fn, input_name = AUGMENTATIONS[name]
    images = torch.zeros(4, 1, 3, 3)
    with pytest.raises(ValueError, match=f"{input_name} and target_probs must have the same batch"):
        fn(images, torch.eye(3), 1.0)
    for target in [torch.zeros(4), torch.zeros(4, 2, 2)]:
        with pytest.raises(ValueError, match="target_probs must be 2-D"):
            fn(images, target, 1.0)


def test_cutmix_rejects_non_images():
    for images in [torch.zeros(4, 9), torch.zeros(4, 3, 3), torch.zeros(4, 1, 0, 3)]:
        with pytest.raises(ValueError, match=r"images must be 4-D \(N, C, H, W\)"):
            cutmix(images, torch.eye(4), 1.0)


def test_mixup_rejects_scalar_inputs():
    with pytest.raises(ValueError, match="inputs and target_probs must have the same batch"):
        mixup(torch.tensor(1.0), torch.eye(1), 1.0)


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_rejects_non_float_tensors_and_bad_generator(name):
    fn, input_name = AUGMENTATIONS[name]
    images, y = torch.zeros(2, 1, 3, 3), torch.eye(2)
    with pytest.raises(TypeError, match=f"{input_name} must be a floating-point tensor"):
        fn(images.long(), y, 1.0)
    with pytest.raises(TypeError, match="target_probs must be a floating-point tensor"):
        fn(images, torch.tensor([0, 1]), 1.0)
    with pytest.raises(TypeError, match="generator must be a torch.Generator"):
        fn(images, y, 1.0, generator=42)
