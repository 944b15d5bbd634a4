"""SIC / AIC against the PAIR ``saliency`` package's reference, saliency.metrics.pic (v0.2.1)."""

import numpy as np
import pytest
import torch
from saliency.metrics import pic
from threadpoolctl import threadpool_limits

from nsde_ray.config import DataConfig
from nsde_ray.data import build_datasets
from nsde_ray.metrics.pic import blurred_image, compute_pic, random_masks, webp_size
from nsde_ray.models import build_model

# Our blurred images, WebP sizes and curve arithmetic are PAIR's bit for bit; the only difference is
# that we run the model on all blurred images in one batch where PAIR calls pred_func per image, and
# CPU kernels may then round a softmax differently in the last float32 bits (~1e-7 relative).
TOLERANCE = 1e-6
# The example list in compute_pic_metric's docstring (and PAIR's notebook); compute_pic's default.
PAIR_THRESHOLDS = [0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.10, 0.13, 0.21, 0.34, 0.5, 0.75]


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models and batches: extra threads gain little here and cost a lot when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _trained(dataset: str, steps: int):
    torch.manual_seed(0)
    splits = build_datasets(DataConfig(dataset=dataset))
    images, labels = splits.train.tensors
    model = build_model("cifar_resnet8", num_classes=splits.num_classes, in_channels=splits.in_channels)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        batch = torch.randint(0, len(images), (64,))
        loss = torch.nn.functional.cross_entropy(model(images[batch]), labels[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), splits


def _gradient_times_input(model, images, target):
    images = images.clone().requires_grad_(True)
    model(images).gather(1, target[:, None]).sum().backward()
    return (images.grad * images).abs().sum(dim=1).detach()


def _pair(model, images, saliency, target, mean, std, monkeypatch):
    """PAIR's per-image SIC and AIC results, None where it raises ComputePicMetricError."""
    # saliency 0.2.1 calls np.trapz, which NumPy 2.4 removed; np.trapezoid is the same function renamed.
    monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    pixels = ((images * std_t + mean_t).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    masks = random_masks(len(images), images.shape[2], images.shape[3], 0.01, seed=0)

    def softmax(batch):  # PAIR passes uint8 (N, H, W) for grey images, (N, H, W, 3) for RGB
        x = torch.from_numpy(batch)
        x = x[:, None] if x.ndim == 3 else x.permute(0, 3, 1, 2)
        with torch.no_grad():
            return torch.softmax(model((x.float() / 255.0 - mean_t) / std_t), dim=1)

    results = {"sic": [], "aic": []}
    for i, cls in enumerate(target.tolist()):
        pred_funcs = {
            "sic": lambda b, cls=cls: softmax(b)[:, cls].tolist(),
            "aic": lambda b, cls=cls: (softmax(b).argmax(dim=1) == cls).double().tolist(),
        }
        for name, pred_func in pred_funcs.items():
            try:
                # PAIR's griddata computes SciPy's barycentric transforms with one tiny LAPACK call per
                # triangle; multi-threaded OpenBLAS makes each of those slow, so run it on one thread.
                with threadpool_limits(limits=1):
                    results[name].append(
                        pic.compute_pic_metric(
                            img=pixels[i, ..., 0] if pixels.shape[-1] == 1 else pixels[i],
                            saliency_map=saliency[i].numpy(),
                            random_mask=masks[i],
                            pred_func=pred_func,
                            saliency_thresholds=PAIR_THRESHOLDS,
                            min_pred_value=0.5,
                            keep_monotonous=True,
                            num_data_points=1000,
                        )
                    )
            except pic.ComputePicMetricError:
                results[name].append(None)
    return results


def _check_against_pair(ours, theirs):
    for name in ("sic", "aic"):
        per_image = getattr(ours, name)
        kept = [r for r in theirs[name] if r is not None]
        assert kept, f"PAIR skipped every image for {name}; the comparison would be empty"
        assert np.isnan(per_image).tolist() == [r is None for r in theirs[name]]
        np.testing.assert_allclose(per_image[~np.isnan(per_image)], [r.auc for r in kept], rtol=0, atol=TOLERANCE)
        np.testing.assert_array_equal(ours.curve_x, kept[0].curve_x)
        aggregate = pic.aggregate_individual_pic_results(kept, method="median")
        np.testing.assert_allclose(getattr(ours, f"{name}_curve"), aggregate.curve_y, rtol=0, atol=TOLERANCE)
        assert getattr(ours, f"{name}_auc") == pytest.approx(aggregate.auc, abs=TOLERANCE)


@pytest.fixture(scope="module")
def digits():
    return _trained("digits", steps=40)


def test_grey_digits_match_pair(digits, monkeypatch):
    model, splits = digits
    images = splits.test.tensors[0][:10]
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    saliency = _gradient_times_input(model, images, target)
    ours = compute_pic(model, images, saliency, target, mean=splits.mean, std=splits.std, batch_size=64)
    theirs = _pair(model, images, saliency, target, splits.mean, splits.std, monkeypatch)
    _check_against_pair(ours, theirs)
    assert ours.sic_curve.shape == ours.aic_curve.shape == ours.curve_x.shape == (1001,)

    # The bokeh images themselves, and their WebP sizes, are PAIR's bit for bit.
    masks = random_masks(len(images), 32, 32, 0.01, seed=0)
    for i, result in enumerate(theirs["sic"]):
        if result is None:
            continue
        original = result.blurred_images[-1][..., None]
        ranks = saliency[i].numpy()
        keep = [masks[i]] + [(ranks >= np.quantile(ranks, 1 - t)) | masks[i] for t in PAIR_THRESHOLDS]
        for mask, reference in zip(keep, result.blurred_images[:-1]):
            np.testing.assert_array_equal(blurred_image(original, mask)[..., 0], reference)
            assert webp_size(reference[..., None]) == pic.estimate_image_entropy(reference)


def test_rgb_synthetic_match_pair(monkeypatch):
    model, splits = _trained("synthetic", steps=20)
    images = splits.test.tensors[0][:5]
    with torch.no_grad():
        target = model(images).argmax(dim=1)
    # A smooth deterministic map with a different ranking than the model's gradients.
    rows, cols = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    saliency = torch.stack([torch.sin(rows / (3 + k)) * torch.cos(cols / (4 + k)) for k in range(5)])
    ours = compute_pic(model, images, saliency, target, mean=splits.mean, std=splits.std)
    theirs = _pair(model, images, saliency, target, splits.mean, splits.std, monkeypatch)
    _check_against_pair(ours, theirs)


def test_deterministic_given_seed(digits):
    model, splits = digits
    images = splits.test.tensors[0][:4]
    target = torch.zeros(4, dtype=torch.long)
    saliency = images.abs().sum(dim=1)
    first, again = (
        compute_pic(model, images, saliency, target, mean=splits.mean, std=splits.std, seed=3) for _ in range(2)
    )
    np.testing.assert_array_equal(first.sic, again.sic)
    assert not np.array_equal(random_masks(4, 32, 32, seed=3), random_masks(4, 32, 32, seed=4))


@pytest.mark.parametrize(
    ("saliency_shape", "target_shape", "message"),
    [
        ((2, 32, 31), (2,), r"saliency must be \(B, H, W\) = \(2, 32, 32\)"),
        ((2, 1, 32, 32), (2,), r"saliency must be \(B, H, W\)"),
        ((2, 32, 32), (3,), r"target must be \(B,\)"),
    ],
)
def test_shape_errors(digits, saliency_shape, target_shape, message):
    model, splits = digits
    with pytest.raises(ValueError, match=message):
        compute_pic(
            model,
            splits.test.tensors[0][:2],
            torch.rand(saliency_shape),
            torch.zeros(target_shape, dtype=torch.long),
            mean=splits.mean,
            std=splits.std,
        )
