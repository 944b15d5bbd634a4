"""Stochastic ResNets: the registry, noise semantics and equality with torchvision."""

import pytest
import torch
import torchvision
from torch import nn

from nsde_ray.config import NoiseConfig
from nsde_ray.models import BlockNoise, build_model, noise_modules, set_noise_shape_maps
from nsde_ray.names import ARCHS, TORCHVISION_ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_backward_every_arch(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=5, in_channels=3, noise=NoiseConfig("gaussian", 0.5))
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    logits = model(images)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert images.grad is not None and torch.isfinite(images.grad).all()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert len(noise_modules(model)) >= 3


def test_unknown_arch_lists_valid_names():
    with pytest.raises(ValueError, match="unknown arch 'resnet9000'; choose one of: cifar_resnet8.*resnet50"):
        build_model("resnet9000", num_classes=10)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2"])
@pytest.mark.parametrize("noise", [NoiseConfig("gaussian", 0.0), NoiseConfig("none", 0.7)])
def test_no_noise_is_exactly_torchvision(arch, noise):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, arch)(weights=None, num_classes=10)
    model = build_model(arch, num_classes=10, noise=noise)
    model.load_state_dict(reference.state_dict(), strict=True)  # torchvision state dicts load unchanged
    images = torch.randn(3, 3, 64, 64)
    for mode in ("train", "eval"):  # train mode too: batch statistics, and no noise drawn
        getattr(reference, mode)()
        getattr(model, mode)()
        with torch.no_grad():
            assert torch.equal(model(images), reference(images)), mode


def test_state_dict_keys_match_torchvision_for_every_torchvision_arch():
    for arch in TORCHVISION_ARCHS:
        ours = build_model(arch, num_classes=3).state_dict().keys()
        theirs = getattr(torchvision.models, arch)(weights=None, num_classes=3).state_dict().keys()
        assert list(ours) == list(theirs), arch


@pytest.mark.parametrize("arch", ["cifar_resnet8", "resnet18", "resnet50"])
def test_noise_is_off_in_eval_and_fresh_in_training(arch):
    torch.manual_seed(0)
    model = build_model(arch, num_classes=4, noise=NoiseConfig("gaussian", 0.5))
    plain = build_model(arch, num_classes=4)
    plain.load_state_dict(model.state_dict())
    images = torch.randn(4, 3, 32, 32)
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(images), model(images))
        assert torch.equal(model(images), plain(images))
        model.train()
        first, second = model(images), model(images)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize("sigma", [0.1, 0.5, 1.0])
def test_injected_noise_scale_matches_sigma(sigma):
    """Per block, std(noise) / std(block output) == sigma within 3% (statistical tolerance)."""
    torch.manual_seed(0)
    model = build_model("resnet18", num_classes=4, noise=NoiseConfig("gaussian", sigma)).train()
    ratios = []

    def measure(module, inputs, output):
        clean = inputs[0]
        ratios.append(((output - clean).std(dim=(1, 2, 3)) / clean.std(dim=(1, 2, 3))).mean().item())

    for module in noise_modules(model):
        module.register_forward_hook(measure)
    with torch.no_grad():
        model(torch.randn(8, 3, 64, 64))
    assert len(ratios) == 8
    for ratio in ratios:
        assert ratio == pytest.approx(sigma, rel=0.03)


@pytest.mark.parametrize("sigma", [0.25, 1.0])
def test_input_mode_adds_normalised_noise_to_the_image_only_and_only_in_training(sigma):
    """std(noisy - clean image) / std(image) == sigma per sample; no block adds noise; eval is the plain network."""
    torch.manual_seed(0)
    model = build_model("cifar_resnet8", num_classes=4, noise=NoiseConfig("input", sigma))
    plain = build_model("cifar_resnet8", num_classes=4)
    assert model.state_dict().keys() == plain.state_dict().keys()  # no parameters or buffers of its own
    plain.load_state_dict(model.state_dict())
    images = 3.0 * torch.randn(16, 3, 32, 32)
    seen = []
    model.layer1.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    model.eval(), plain.eval()
    with torch.no_grad():
        assert torch.equal(model(images), plain(images))
        model.train()
        model(images)
    assert all(m.sigma == 0 or m.mode == "none" for m in noise_modules(model) if m is not model.input_noise)
    stem = model.relu(model.bn1(model.conv1(images)))  # what layer1 would see from the clean image (train-mode BN)
    assert not torch.allclose(seen[-1], stem)
    noisy = []
    model.conv1.register_forward_pre_hook(lambda module, args: noisy.append(args[0]))
    with torch.no_grad():
        model(images)
    ratio = (noisy[0] - images).std(dim=(1, 2, 3)) / images.std(dim=(1, 2, 3))
    assert ratio.mean().item() == pytest.approx(sigma, rel=0.03)


def test_attribution_mode_scales_noise_by_the_map():
    """A map of 1 on the left half and 0 on the right: noise only on the left, at full scale."""
    torch.manual_seed(0)
    noise = BlockNoise("attribution", 0.5).train()
    x = torch.randn(4, 8, 16, 16)
    assert (noise(x) - x).abs().min() > 0  # no map yet: plain Gaussian everywhere
    shape_map = torch.zeros(4, 1, 4, 4)
    shape_map[..., :2] = 1.0
    noise.set_shape_map(shape_map)
    delta = noise(x) - x
    assert torch.equal(delta[..., 10:], torch.zeros_like(delta[..., 10:]))
    expected = 0.5 * x.std(dim=(1, 2, 3))
    assert delta[..., :6].std(dim=(1, 2, 3)) == pytest.approx(expected, rel=0.1)


@pytest.mark.parametrize("mode", ["gaussian", "attribution"])
def test_noise_keeps_channels_last(mode):
    """A block output that switched to contiguous layout would make every later conv convert it (GPU cost)."""
    noise = BlockNoise(mode, 0.5).train()
    noise.set_shape_map(torch.rand(2, 1, 4, 4))
    x = torch.randn(2, 8, 16, 16).to(memory_format=torch.channels_last)
    assert noise(x).is_contiguous(memory_format=torch.channels_last)


def test_shape_maps_reach_every_block_and_are_validated():
    model = build_model("cifar_resnet8", num_classes=3, noise=NoiseConfig("attribution", 0.5)).train()
    set_noise_shape_maps(model, torch.ones(2, 1, 32, 32))
    assert all(m.shape_map is not None for m in noise_modules(model))
    model(torch.randn(2, 3, 32, 32))  # each block resizes the 32x32 map to its own size
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        set_noise_shape_maps(model, torch.ones(2, 32, 32))
    with pytest.raises(ValueError, match="for 2 samples, batch has 5"):
        model(torch.randn(5, 3, 32, 32))


@pytest.mark.parametrize("arch", ["cifar_resnet14", "resnet34", "resnext50_32x4d"])
def test_every_relu_is_its_own_module_used_once_and_not_in_place(arch):
    """What Captum's DeepLIFT / DeepSHAP need (torchvision's blocks reuse one in-place ReLU)."""
    model = build_model(arch, num_classes=3).eval()
    calls: dict[nn.Module, int] = {}
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    for relu in relus:
        assert not relu.inplace
        relu.register_forward_hook(lambda m, i, o: calls.__setitem__(m, calls.get(m, 0) + 1))
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert len(calls) == len(relus) and set(calls.values()) == {1}


def test_grey_input_channels():
    model = build_model("resnet18", num_classes=10, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


# The fused block tail: on a GPU each block computes relu(out + identity) + noise with two
# Triton kernels (nsde_ray.models.fused_noise). The tests marked with `fused_kernel` run those kernels
# on a GPU when there is one, and otherwise on the CPU under Triton's interpreter: the test
# test_fused_kernels_under_the_triton_interpreter runs them in a subprocess with TRITON_INTERPRET=1.

from nsde_ray.models import fused_noise  # noqa: E402

_FUSED_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
fused_kernel = pytest.mark.skipif(
    fused_noise.triton is None or not fused_noise.available(torch.empty(0, device=_FUSED_DEVICE)),
    reason="needs Triton on a GPU, or TRITON_INTERPRET=1 (see the test below)",
)


def test_fused_kernels_under_the_triton_interpreter():
    import os
    import subprocess
    import sys

    if fused_noise.triton is None:
        pytest.skip("Triton is not installed")
    if fused_noise.available(torch.empty(0, device=_FUSED_DEVICE)):
        pytest.skip("the fused_kernel tests run directly here")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            __file__,
            "-k",
            "fused_kernel and not interpreter",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1], result.stdout[-1000:]


def _tail_inputs(batch=8, channels=16, size=8, dtype=torch.float32, channels_last=True):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    make = lambda: torch.randn(batch, channels, size, size, device=_FUSED_DEVICE).to(dtype=dtype, memory_format=fmt)  # noqa: E731
    return make().requires_grad_(), make().requires_grad_()


@fused_kernel
@pytest.mark.parametrize("channels_last", [True, False])
def test_fused_kernel_is_relu_of_the_sum_plus_normalised_gaussian_noise(channels_last):
    out, identity = _tail_inputs(batch=16, channels=32, size=16, channels_last=channels_last)
    noise = BlockNoise("gaussian", 0.5).train()
    assert noise._use_fused(out, identity)
    y = noise.residual_out(out, identity, nn.ReLU())
    clean = torch.relu(out + identity).detach()
    assert y.stride() == out.stride() and y.dtype == out.dtype
    ratio = (y.detach() - clean).std(dim=(1, 2, 3)) / clean.std(dim=(1, 2, 3))
    assert (
        ratio.mean().item() == pytest.approx(0.5, rel=0.01) and ratio.min() > 0.47 and ratio.max() < 0.53
    )  # 8192 draws
    standardised = ((y.detach() - clean) / (0.5 * clean.std(dim=(1, 2, 3), keepdim=True))).flatten()
    assert (
        standardised.mean().abs() < 0.02 and 0.001 < (standardised.abs() > 3).float().mean() < 0.005
    )  # Gaussian tails
    y.sum().backward()  # the noise scale is detached: d y / d out = 1[out + identity > 0] exactly
    assert torch.equal(out.grad, (clean > 0).to(out.dtype)) and torch.equal(identity.grad, out.grad)
    assert not torch.equal(noise.residual_out(out, identity, nn.ReLU()), y)  # fresh noise on every forward pass
    torch.manual_seed(3)
    first = noise.residual_out(out, identity, nn.ReLU())
    torch.manual_seed(3)
    assert torch.equal(noise.residual_out(out, identity, nn.ReLU()), first)  # torch.manual_seed reproduces it


@fused_kernel
def test_fused_kernel_noise_is_uncorrelated_across_elements_and_samples():
    out, identity = _tail_inputs(batch=4, channels=64, size=32)
    with torch.no_grad():
        clean = torch.relu(out + identity)
        eps = (fused_noise.residual_noise(out, identity, 1.0) - clean) / clean.std(dim=(1, 2, 3), keepdim=True)
    flat = eps.flatten(1)
    assert flat.mean().abs() < 0.02 and flat.std().item() == pytest.approx(1.0, rel=0.02)
    for lag in (1, 4, 512, 2048):  # within one sample, in memory order (sub-blocks of the Philox draws)
        memory = eps.permute(0, 2, 3, 1).flatten(1)
        assert torch.corrcoef(torch.stack([memory[:, :-lag].flatten(), memory[:, lag:].flatten()]))[0, 1].abs() < 0.02
    assert torch.corrcoef(flat[:2])[0, 1].abs() < 0.02  # across samples


@fused_kernel
def test_fused_kernel_in_bf16_and_with_sigma_zero_scale():
    out, identity = _tail_inputs(dtype=torch.bfloat16)
    y, mask = fused_noise._forward(out.detach(), identity.detach(), 0.0, None)
    exact = out.detach().float() + identity.detach().float()  # summed in fp32, rounded once (eager rounds twice)
    # at most one bf16 rounding step apart (Triton's interpreter truncates where the GPU rounds to nearest)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), torch.relu(exact), rtol=2**-7, atol=0.0)
    assert torch.equal(mask.bool(), exact > 0)


@fused_kernel
def test_fused_kernel_scales_noise_by_the_map():
    """As test_attribution_mode_scales_noise_by_the_map, through the fused kernels, in both layouts."""
    for channels_last in (True, False):
        out, identity = _tail_inputs(batch=4, channels=8, size=16, channels_last=channels_last)
        noise = BlockNoise("attribution", 0.5).train()
        shape_map = torch.zeros(4, 1, 4, 4, device=_FUSED_DEVICE)
        shape_map[..., :2] = 1.0
        noise.set_shape_map(shape_map)
        clean = torch.relu(out + identity).detach()
        delta = noise.residual_out(out, identity, nn.ReLU()).detach() - clean
        assert torch.equal(delta[..., 10:], torch.zeros_like(delta[..., 10:]))
        expected = 0.5 * clean.std(dim=(1, 2, 3))
        assert delta[..., :6].std(dim=(1, 2, 3)).cpu() == pytest.approx(expected.cpu(), rel=0.1)
        with pytest.raises(ValueError, match="for 4 samples, batch has 2"):
            noise.residual_out(out[:2], identity[:2], nn.ReLU())


@fused_kernel
def test_fused_kernel_model_trains_and_compiles():
    torch.manual_seed(0)
    model = build_model("cifar_resnet8", num_classes=3, noise=NoiseConfig("gaussian", 0.5)).to(_FUSED_DEVICE)
    images = torch.randn(4, 3, 8, 8, device=_FUSED_DEVICE)
    model.train()
    calls = []
    model.layer1[0].noise.register_forward_hook(lambda m, i, o: calls.append(1))
    model(images).sum().backward()
    assert calls == []  # the fused path ran (the module path would have called the hook)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # the tail is a custom op: compiled graphs call the kernels as they are (one block, whose graph holds the op;
    # the whole model compiled about 4 times as long under the interpreter)
    block = model.layer1[0]
    compiled = torch.compile(block)
    features = torch.randn(4, block.conv1.in_channels, 8, 8, device=_FUSED_DEVICE)
    first = compiled(features)
    first.sum().backward()
    assert torch.isfinite(first).all() and not torch.equal(compiled(features), first)  # noise drawn in the graph


def test_tail_without_noise_is_exactly_the_module_path():
    out, identity = _tail_inputs()
    reference = torch.relu(out + identity)
    for noise in (
        BlockNoise("gaussian", 0.5).eval(),
        BlockNoise("gaussian", 0.0).train(),
        BlockNoise("none", 0.5).train(),
        BlockNoise("gaussian", 0.5, fused=False).eval(),
    ):
        calls = []
        relu = nn.ReLU()
        relu.register_forward_hook(lambda m, i, o, calls=calls: calls.append(1))
        assert torch.equal(noise.residual_out(out, identity, relu), reference)
        assert calls == [1]  # eval / no noise: the ReLU module is called (DeepLIFT hooks see it)


def test_fused_path_is_skipped_for_inputs_it_does_not_support():
    out, identity = _tail_inputs()
    assert not fused_noise.supported(out, identity.contiguous())  # mixed layouts
    assert not fused_noise.supported(out, identity.double())
    assert not fused_noise.supported(out[:, :, ::2], identity[:, :, ::2])  # not dense
    assert not BlockNoise("gaussian", 0.5, fused=False).train()._use_fused(out, identity)


def test_eager_noise_keeps_bf16_and_channels_last():
    noise = BlockNoise("gaussian", 0.5, fused=False).train()
    x = torch.rand(2, 8, 16, 16).to(torch.bfloat16).to(memory_format=torch.channels_last)
    y = noise(x)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)


def test_fit_in_process_is_repeatable_and_learns():
    from torch.utils.data import TensorDataset

    from nsde_ray.config import TrainConfig
    from nsde_ray.train import fit_in_process

    images = torch.randn(64, 1, 8, 8)
    labels = (images.mean(dim=(1, 2, 3)) > 0).long()
    cfg = TrainConfig(epochs=5, batch_size=16, lr=0.05)
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("cifar_resnet8", 2, in_channels=1)
        before = torch.nn.functional.cross_entropy(model.eval()(images), labels).item()
        models.append(fit_in_process(model, TensorDataset(images, labels), cfg))
    after = torch.nn.functional.cross_entropy(models[0](images), labels).item()
    assert not models[0].training and after < before
    assert all(torch.equal(a, b) for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()))
