"""Attribution-driven noise shaping: normalisation, clipping, the shaped noise, schedule, resume."""

import io

import pytest
import torch

from nsde_ray.config import NoiseConfig, ShapingConfig
from nsde_ray.data import ShardSampler
from nsde_ray.models import build_model, noise_modules, set_noise_shape_maps
from nsde_ray.shaping import NoiseShaper, noise_energy, noise_scale, normalise_attributions, preserve_energy


def test_normalised_maps_lie_in_minus_one_one_and_keep_their_sign():
    maps = torch.randn(4, 8, 8) * torch.tensor([1.0, 10.0, 0.01, 0.0]).view(4, 1, 1)
    normalised = normalise_attributions(maps, 99.0)
    assert normalised.abs().max() <= 1.0 and torch.equal(normalised[3], torch.zeros(8, 8))
    assert (torch.sign(normalised[:3]) == torch.sign(maps[:3])).all()
    torch.testing.assert_close(normalise_attributions(maps[:1] * 7.0, 99.0), normalised[:1])  # scale-free


def test_outlier_clipping_keeps_one_pixel_from_flattening_the_map():
    torch.manual_seed(0)
    maps = torch.rand(1, 16, 16)
    maps[0, 3, 3] = 1000.0  # one extreme pixel
    unclipped = normalise_attributions(maps, 100.0)
    clipped = normalise_attributions(maps, 99.0)
    rest = torch.ones(16, 16, dtype=torch.bool)
    rest[3, 3] = False
    assert unclipped[0][rest].max() < 1e-3  # without clipping everything else is ~0
    assert clipped[0][rest].median() > 0.3 and clipped[0, 3, 3] == 1.0  # with it the map keeps its structure
    assert (clipped[0][rest] >= unclipped[0][rest]).all()


def test_noise_scale_blends_uniform_and_shaped():
    normalised = torch.tensor([[[-1.0, 0.0], [0.5, 1.0]]])
    torch.testing.assert_close(noise_scale(normalised, 0.0), normalised.abs().unsqueeze(1))
    torch.testing.assert_close(noise_scale(normalised, 1.0), torch.ones(1, 1, 2, 2))
    torch.testing.assert_close(noise_scale(normalised, 0.25)[0, 0, 0, 1], torch.tensor(0.25))


def test_noise_energy_is_the_mean_squared_multiplier_relative_to_gaussian():
    multipliers = torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 0.0]]]])  # m²: 2.25 and 4 of 8 pixels
    assert noise_energy(NoiseConfig("attribution", 0.5), multipliers) == pytest.approx(6.25 / 8)
    assert noise_energy(NoiseConfig("attribution", 0.5), multipliers.half()) == pytest.approx(6.25 / 8)
    assert noise_energy(NoiseConfig("attribution", 0.5), None) == 1.0  # warm-up: plain Gaussian noise
    assert noise_energy(NoiseConfig("gaussian", 0.5), None) == 1.0
    assert noise_energy(NoiseConfig("gaussian", 0.5), multipliers) == 1.0  # a map only shapes attribution noise
    assert noise_energy(NoiseConfig("none", 0.5), None) == 0.0
    assert noise_energy(NoiseConfig("attribution", 0.0), multipliers) == 0.0


def test_energy_preserving_multipliers_have_mean_square_one_within_the_cap():
    torch.manual_seed(0)
    raw = torch.rand(3, 1, 8, 8) * 0.5
    raw[1] = 0.0  # no attribution anywhere
    preserved = preserve_energy(raw, max_multiplier=10.0)
    torch.testing.assert_close(preserved.square().mean(dim=(1, 2, 3)), torch.ones(3))
    assert torch.equal(preserved[1], torch.ones(1, 8, 8))  # a zero map becomes plain Gaussian noise
    torch.testing.assert_close(
        preserved[0] / raw[0], torch.full((1, 8, 8), float(preserved[0, 0, 0, 0] / raw[0, 0, 0, 0]))
    )

    hot = torch.full((1, 1, 10, 10), 0.01)
    hot[0, 0, 0, 0] = 1.0  # one hot pixel: rescaled to mean square 1 it would be ~9.9
    capped = preserve_energy(hot, max_multiplier=4.0)
    assert capped.max() == 4.0 and capped.square().mean() < 1.0
    assert noise_energy(NoiseConfig("attribution", 0.5), capped) == pytest.approx(capped.square().mean().item())


def test_refresh_shapes_raw_or_energy_preserving_maps(digits_model):
    """Raw IG maps clipped at the 99th percentile carry a small fraction of Gaussian noise's energy; preserve gives
    ~1."""
    model, splits = digits_model
    noise = NoiseConfig("attribution", 0.5)
    maps = {}
    for energy in ("raw", "preserve"):
        shaper = _shaper(splits, ShapingConfig(method="ig", ig_steps=4, batch_size=128, energy=energy))
        shaper.refresh(model, step=0)
        maps[energy] = shaper.maps.float()
    manual = noise_scale(normalise_attributions(_ig_maps(model, splits, torch.arange(64)), 99.0), 0.0)
    torch.testing.assert_close(maps["raw"], manual, atol=1e-3, rtol=1e-3)  # raw: unchanged by the option
    assert maps["raw"].max() <= 1.0 and noise_energy(noise, maps["raw"]) < 0.2
    assert maps["preserve"].max() <= 4.0
    assert 0.97 < noise_energy(noise, maps["preserve"]) <= 1.0 + 1e-3


def _ig_maps(model, splits, indices):
    from nsde_ray.attribution import attribution_map, make_explainer

    explain = make_explainer(model, "ig", n_steps=4, internal_batch_size=128, fast=True)
    return attribution_map(explain(splits.train.tensors[0][indices], splits.train.tensors[1][indices]))


def test_an_epoch_reports_the_noise_energy_in_force_at_each_step(digits_model):
    """Two warm-up steps of Gaussian noise (energy 1), a refresh, two shaped steps: the epoch's energy is the mean."""
    from torch.utils.data import DataLoader, TensorDataset

    from nsde_ray.config import TrainConfig
    from nsde_ray.data import IndexedDataset
    from nsde_ray.train import _run_epoch, build_optimizer

    trained, splits = digits_model
    model = build_model("cifar_resnet8", 10, 1, NoiseConfig("attribution", 0.5))
    model.load_state_dict(trained.state_dict())
    images, labels = (t[:32] for t in splits.train.tensors[:2])
    loader = DataLoader(IndexedDataset(TensorDataset(images, labels)), batch_size=8)
    shaper = NoiseShaper(
        ShapingConfig(warmup_epochs=1, refresh_every=100, refresh_unit="steps", method="saliency"),
        splits.train,
        torch.arange(32),
        steps_per_epoch=2,
        device=torch.device("cpu"),
    )
    stats = _run_epoch(
        model,
        model,
        build_optimizer(model, TrainConfig(lr=1e-4)),
        loader,
        DataLoader(TensorDataset(images, labels), batch_size=16),
        torch.device("cpu"),
        torch.contiguous_format,
        dict(device_type="cpu", enabled=False),
        NoiseConfig("attribution", 0.5),
        shaper,
        first_step=0,
    )
    shaped = noise_energy(NoiseConfig("attribution", 0.5), shaper.maps)
    assert shaper.refreshed_at == 2 and shaped < 0.5
    assert stats.noise_energy == pytest.approx((2 * 1.0 + 2 * shaped) / 4)


_SHAPER_CONFIG = ShapingConfig(method="ig", ig_steps=4, batch_size=128)


def _shaper(splits, cfg=_SHAPER_CONFIG, shard_size=64):
    shard = torch.arange(shard_size)
    return NoiseShaper(cfg, splits.train, shard, steps_per_epoch=2, device=torch.device("cpu"))


def test_shaped_noise_is_larger_where_attribution_is_high(digits_model):
    """Injected noise variance where |Â| > 0.7 is > 10x that where |Â| < 0.15 (ideal ratio > (0.7/0.15)^2 ~ 22)."""
    model, splits = digits_model
    shaper = _shaper(splits)
    shaper.refresh(model, step=0)
    indices = torch.arange(16)
    scale = shaper.scale_for(indices)
    assert scale.shape == (16, 1, 32, 32) and 0 <= scale.min() and scale.max() <= 1
    shaped = build_model("cifar_resnet8", 10, 1, NoiseConfig("attribution", 0.5))
    shaped.load_state_dict(model.state_dict())
    shaped.train()
    set_noise_shape_maps(shaped, scale)
    first_block = noise_modules(shaped)[0]  # 32x32, the maps' own resolution
    captured = {}
    first_block.register_forward_hook(lambda m, i, o: captured.update(noise=(o - i[0]).detach()))
    torch.manual_seed(0)
    images = splits.train.tensors[0][indices]
    variance = torch.stack([_noise_of(shaped, images, captured) for _ in range(20)]).var(dim=0).mean(dim=1)
    high, low = scale[:, 0] > 0.7, scale[:, 0] < 0.15
    assert high.sum() > 50 and low.sum() > 50
    assert variance[high].mean() > 10 * variance[low].mean()


def _noise_of(model, images, captured):
    with torch.no_grad():
        model(images)
    return captured["noise"]


def test_schedule_in_epochs_and_steps(digits_model):
    _, splits = digits_model
    epochs = NoiseShaper(
        ShapingConfig(warmup_epochs=1, refresh_every=2), splits.train, torch.arange(8), 10, torch.device("cpu")
    )
    assert [s for s in range(60) if epochs.due(s)] == [10, 30, 50]
    steps = NoiseShaper(
        ShapingConfig(warmup_epochs=1, refresh_every=5, refresh_unit="steps"),
        splits.train,
        torch.arange(8),
        10,
        torch.device("cpu"),
    )
    assert [s for s in range(26) if steps.due(s)] == [10, 15, 20, 25]
    assert steps.scale_for(torch.arange(4)) is None  # before the first refresh: plain Gaussian noise


def test_resume_between_refreshes_rebuilds_identical_maps(digits_model):
    """Refresh, keep training, checkpoint, 'kill': a new worker rebuilds exactly the maps of the last refresh."""
    model, splits = digits_model
    trained = build_model("cifar_resnet8", 10, 1, NoiseConfig("attribution", 0.5))
    trained.load_state_dict(model.state_dict())
    running = _shaper(splits)
    running.refresh(trained, step=4)
    with torch.no_grad():  # training goes on after the refresh: the current weights are no longer the maps' source
        for parameter in trained.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    buffer = io.BytesIO()
    torch.save({"shaping": running.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["shaping"]
    resumed = _shaper(splits)
    resumed.load_state_dict(state, build_model("cifar_resnet8", 10, 1, NoiseConfig("attribution", 0.5)))
    assert resumed.refreshed_at == 4
    assert torch.equal(resumed.maps, running.maps)
    recomputed_now = _shaper(splits)
    recomputed_now.refresh(trained, step=5)
    assert not torch.equal(recomputed_now.maps, running.maps)  # the current weights would give other maps


def test_a_batch_from_another_shard_is_refused(digits_model):
    model, splits = digits_model
    shaper = _shaper(splits, ShapingConfig(method="saliency"), shard_size=8)
    shaper.refresh(model, step=0)
    with pytest.raises(RuntimeError, match="outside this worker's shard"):
        shaper.scale_for(torch.tensor([0, 100]))


def test_shard_sampler_gives_fixed_disjoint_equal_shards():
    samplers = [ShardSampler(103, rank, 4, seed=3) for rank in range(4)]
    assert {len(s) for s in samplers} == {26}
    covered = torch.cat([s.indices for s in samplers])
    assert set(covered.tolist()) == set(range(103))
    first = list(samplers[1])
    samplers[1].set_epoch(1)
    second = list(samplers[1])
    assert first != second and sorted(first) == sorted(second)  # reshuffled within the same shard


class _NotATensorDataset(torch.utils.data.Dataset):
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        return self.dataset[index]


def test_refresh_gives_the_same_maps_from_tensors_and_through_a_data_loader(digits_model):
    """The in-memory gather (with prefetch) and the DataLoader path read the same samples in the same order."""
    model, splits = digits_model
    cfg = ShapingConfig(method="ig", ig_steps=2, batch_size=24)
    shard = torch.randperm(len(splits.train), generator=torch.Generator().manual_seed(0))[:50]
    gathered = NoiseShaper(cfg, splits.train, shard, 2, torch.device("cpu"))
    loaded = NoiseShaper(cfg, _NotATensorDataset(splits.train), shard, 2, torch.device("cpu"))
    gathered.refresh(model, 0)
    loaded.refresh(model, 0)
    assert gathered.maps.shape == (50, 1, 32, 32) and gathered.maps.dtype == torch.float16
    assert torch.equal(gathered.maps, loaded.maps)
    indices = torch.sort(shard).values[[3, 0, 7]]
    torch.testing.assert_close(gathered.scale_for(indices), loaded.scale_for(indices))


def test_prefetch_keeps_order_and_propagates_errors():
    from nsde_ray.shaping import _prefetched

    assert list(_prefetched(iter(range(7)))) == list(range(7))
    assert list(_prefetched(iter([]))) == []

    def failing():
        yield 1
        raise OSError("disk gone")

    with pytest.raises(OSError, match="disk gone"):
        list(_prefetched(failing()))


def test_noise_multipliers_follow_each_sample_s_crop_and_flip(digits_model):
    """A flipped sample gets the mirror image of its map, a padded crop the same box of it; identity params, the map."""
    model, splits = digits_model
    shaper = _shaper(splits, ShapingConfig(method="saliency"), shard_size=8)
    shaper.refresh(model, step=0)
    indices = torch.tensor([5, 2, 7])
    maps = shaper.scale_for(indices)
    identity = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]).repeat(3, 1)
    assert torch.equal(shaper.scale_for(indices, identity), maps)
    flipped = identity.clone()
    flipped[1, 4] = 1.0
    moved = shaper.scale_for(indices, flipped)
    torch.testing.assert_close(moved[1], maps[1].flip(-1))
    torch.testing.assert_close(moved[[0, 2]], maps[[0, 2]])
    cropped = identity.clone()
    cropped[0, :2] = torch.tensor([3 / 32, -2 / 32])  # a pad-and-crop box: 3 rows down, 2 columns of padding
    moved = shaper.scale_for(indices, cropped)
    torch.testing.assert_close(moved[0, 0, :29, 2:], maps[0, 0, 3:, :30])
    assert (moved[0, 0, :, :2] == maps[0].min()).all()  # padding: the map's least attributed pixel's multiplier


def test_shaping_attributes_against_evaluation_s_black_baseline(digits_model):
    """With x_b = black (pixel 0) a black pixel's IG attribution is exactly 0, so its noise multiplier is blend (0)."""
    from nsde_ray.attribution import ig_baseline

    model, splits = digits_model
    cfg = ShapingConfig(method="ig", ig_steps=4, batch_size=128)
    black = ig_baseline(splits.mean, splits.std, "black")
    assert torch.equal(ig_baseline(splits.mean, splits.std, "mean"), torch.zeros(1, 1, 1, 1))
    images = splits.train.tensors[0][:64]
    pixels = images * torch.tensor(splits.std).view(1, -1, 1, 1) + torch.tensor(splits.mean).view(1, -1, 1, 1)
    assert pixels.flatten().abs().min() < 1e-6 and torch.equal(images.amin(), black.flatten()[0])
    background = images.amax(dim=1) == black.flatten()[0]
    assert background.float().mean() > 0.2  # about 30% of the upsampled digits is exactly black
    shaper = NoiseShaper(cfg, splits.train, torch.arange(64), 2, torch.device("cpu"), baseline=black)
    shaper.refresh(model, step=0)
    assert (shaper.maps[:, 0][background] == 0).all() and shaper.maps.max() > 0.5
    mean_baseline = _shaper(splits, cfg)  # the data set's mean colour: background pixels are attributed too
    mean_baseline.refresh(model, step=0)
    assert (mean_baseline.maps[:, 0][background] > 0).float().mean() > 0.5


def test_training_gradient_maps_come_from_the_step_s_input_gradient_and_follow_each_crop(digits_model):
    """No refresh; from the last warm-up epoch on each step's loss gradient becomes its samples' maps, mapped back
    through their crops and flips (padding keeps the old map); the maps travel in the checkpoint."""
    _, splits = digits_model
    cfg = ShapingConfig(method="training_gradient", warmup_epochs=2)
    shaper = NoiseShaper(cfg, splits.train, torch.arange(8), steps_per_epoch=10, device=torch.device("cpu"))
    assert not any(shaper.due(step) for step in range(100))
    assert [step for step in range(30) if shaper.wants_gradient(step)] == list(range(10, 30))
    assert shaper.scale_for(torch.arange(4)) is None  # nothing collected yet: plain Gaussian noise

    gradient = torch.randn(3, 1, 8, 8).abs()
    indices = torch.tensor([5, 2, 7])
    identity = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]).repeat(3, 1)
    shaper.update_from_gradient(indices, identity, gradient)
    expected = noise_scale(normalise_attributions(gradient.sum(dim=1), cfg.clip_percentile), cfg.blend)
    torch.testing.assert_close(shaper.scale_for(indices), expected.half().float())
    assert (shaper.scale_for(torch.tensor([0, 1])) == 1.0).all()  # not yet seen: Gaussian multipliers

    moved = identity.clone()
    moved[0] = torch.tensor([-2 / 8, 0.0, 1.0, 1.0, 1.0])  # 2 rows of padding on top, mirrored
    before = shaper.scale_for(indices)
    shaper.update_from_gradient(indices, moved, gradient)
    after = shaper.scale_for(indices)
    torch.testing.assert_close(after[0, 0, :6], expected[0, 0, 2:].flip(-1).half().float())  # mapped back
    torch.testing.assert_close(after[0, 0, 6:], before[0, 0, 6:])  # the crop did not see those rows
    assert torch.equal(shaper.scale_for(indices, moved)[0, 0, 2:], after[0, 0, :6].flip(-1))  # next visit's noise

    buffer = io.BytesIO()
    torch.save({"shaping": shaper.state_dict()}, buffer)
    buffer.seek(0)
    resumed = NoiseShaper(cfg, splits.train, torch.arange(8), steps_per_epoch=10, device=torch.device("cpu"))
    resumed.load_state_dict(torch.load(buffer, weights_only=True)["shaping"], scratch_model=None)
    assert torch.equal(resumed.maps, shaper.maps)
