"""One-image explanations (the Explain view's maths) and the checks on uploaded files."""

import io
import math
import os

import pytest
import torch
from PIL import Image

from dashboards.uploads import UploadError, read_image
from nsde_ray.attribution import attribute
from nsde_ray.config import TrialConfig
from nsde_ray.explain import explain_image, export_model, load_model, prepare_image
from nsde_ray.metrics.sensitivity import max_sensitivity, uniform_perturbations
from nsde_ray.names import CHECKPOINT_FILE, MODEL_FILE


@pytest.fixture(scope="module")
def bundle(digits_model, tmp_path_factory):
    """The trained digits model, saved as a training checkpoint, exported and loaded back."""
    model, splits = digits_model
    checkpoint_dir = tmp_path_factory.mktemp("checkpoint")
    torch.save(
        {
            "model": model.state_dict(),
            "config": TrialConfig().to_dict(),
            "epoch": 3,
            "num_classes": splits.num_classes,
            "in_channels": splits.in_channels,
        },
        os.path.join(checkpoint_dir, CHECKPOINT_FILE),
    )
    out_dir = tmp_path_factory.mktemp("exported")
    export_model(str(checkpoint_dir), splits, str(out_dir))
    return load_model(str(out_dir)), splits


def test_an_exported_model_loads_with_its_preprocessing_and_predicts_as_before(bundle, digits_model):
    loaded, splits = bundle
    model, _ = digits_model
    images = torch.stack([splits.test[i][0] for i in range(8)])
    with torch.no_grad():
        assert torch.equal(loaded.model(images), model.eval()(images))
    assert loaded.class_names == tuple(splits.class_names) and loaded.image_size == splits.image_size == 32
    assert loaded.in_channels == 1 and loaded.shap_baselines.shape == (16, 1, 32, 32)


def test_a_training_checkpoint_is_not_taken_for_an_exported_model(tmp_path):
    torch.save({"model": {}, "config": TrialConfig().to_dict()}, tmp_path / MODEL_FILE)
    with pytest.raises(ValueError, match="not an exported model"):
        load_model(str(tmp_path))


@pytest.mark.parametrize("mode, size", [("RGB", (300, 200)), ("L", (50, 90)), ("RGBA", (32, 32))])
def test_any_image_becomes_the_models_input(bundle, mode, size):
    loaded, _ = bundle
    pixels = prepare_image(
        Image.new(mode, size, color=200 if mode == "L" else (200, 100, 50, 255)[: len(mode)]), loaded
    )
    assert pixels.shape == (1, 32, 32) and 0.0 <= float(pixels.min()) <= float(pixels.max()) <= 1.0


def test_an_explanation_is_the_evaluation_for_one_image(bundle):
    """Top-5 from the softmax; the map is Captum's IG of the top class; the sensitivity is ours on the same deltas."""
    loaded, splits = bundle
    image, label = splits.test[0]
    std, mean = torch.tensor(loaded.std).view(-1, 1, 1), torch.tensor(loaded.mean).view(-1, 1, 1)
    pixels = image * std + mean
    result = explain_image(loaded, pixels, "ig", n_steps=16, n_perturbations=6, seed=3)

    names = [name for name, _ in result.top]
    probabilities = [p for _, p in result.top]
    assert len(names) == 5 and probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-6
    assert names[0] == loaded.class_names[label]
    target = torch.tensor([label])
    baseline = (-mean / std).expand_as(image).unsqueeze(0)
    expected = attribute(loaded.model, image.unsqueeze(0), target, "ig", baselines=baseline, n_steps=16).sum(dim=1)[0]
    torch.testing.assert_close(result.attribution, expected, rtol=1e-4, atol=1e-6)
    assert 0 <= result.kept_perturbations <= 6
    if result.kept_perturbations:
        deltas = uniform_perturbations((1, *image.shape), 6, 0.02, loaded.std, torch.Generator().manual_seed(3))
        explain = lambda x, t: attribute(loaded.model, x, t, "ig", baselines=baseline, n_steps=16)  # noqa: E731
        reference = max_sensitivity(explain, loaded.model, image.unsqueeze(0), target, deltas)
        assert math.isclose(result.sensitivity, float(reference[0]), rel_tol=1e-4)


@pytest.mark.parametrize("method", ["saliency", "deeplift", "deepshap", "ig_nt"])
def test_every_dashboard_method_explains_an_image(bundle, method):
    loaded, splits = bundle
    pixels = splits.test[1][0] * torch.tensor(loaded.std).view(-1, 1, 1) + torch.tensor(loaded.mean).view(-1, 1, 1)
    result = explain_image(loaded, pixels, method, n_steps=8, n_perturbations=2, nt_samples=2)
    assert result.attribution.shape == (32, 32) and torch.isfinite(result.attribution).all()


def _png(size=(40, 30), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploads_are_checked_before_anything_is_decoded(tmp_path):
    good = tmp_path / "ok.png"
    good.write_bytes(_png())
    assert read_image(str(good), 2**20, 10**6).size == (40, 30)

    cases = {
        "notes.txt": (b"just text", "not a JPEG or PNG"),
        "broken.png": (_png()[:60], "cannot be decoded"),
        "big.png": (_png() + b"\0" * 2048, "the limit is"),
        "wide.png": (_png((2000, 1000), "L"), "megapixels"),
    }
    limits = {"big.png": (1024, 10**6), "wide.png": (2**20, 10**6)}
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UploadError, match=message):
            read_image(str(path), *limits.get(name, (2**20, 10**6)))
    gif = tmp_path / "anim.gif"
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    with pytest.raises(UploadError, match="not a JPEG or PNG"):
        read_image(str(gif), 2**20, 10**6)
