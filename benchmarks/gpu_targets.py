"""The GPU performance targets (BENCHMARKS.md, "GPU targets"), each ratio measured side by side in one run.

Synthetic data, bf16 autocast and channels_last on a GPU (fp32, contiguous on CPU, where the same
code runs at tiny sizes as a check). Every row is printed as soon as it is measured (and written to
``--json``), so a run cut short still reports what it did.

1. ``noise``: training throughput of plain torchvision, our Gaussian-noise model (fused block tail,
   the default on a GPU), the same with the fusion off (eager reference) and ours with sigma 0;
   measured in interleaved rounds, median reported.
2. ``shaping``: our shaped step (maps set) and the refresh throughput (IG-4 and saliency) of
   NoiseShaper; the default schedule (ShapingConfig(): IG with 4 steps, refresh every 2 epochs)
   amortised: ratio to plain = 1 / (plain / shaped_step + plain / (refresh_every * refresh_rate)).
   Then (row 2b) maps from training gradients (``method="training_gradient"``): each step reads its
   samples' maps, takes the input gradient with its backward and writes their next maps; no refresh,
   so its training rate against plain is the whole ratio.
3. ``compile``: torch.compile of our Gaussian model (and of plain torchvision) against eager.
4. ``ig``: IG with 50 steps, Captum's IntegratedGradients in plain fp32 use against our fast path
   (bf16 autocast + channels_last, and fp32 + channels_last), with the completeness error of each.
5. ``sensitivity``: captum.metrics.sensitivity_max over Captum's IG against our batched
   max_sensitivity over the fast IG, same model, inputs and perturbations (keep_prediction off, as
   Captum has no such filter); agreement per image.
6. ``ray``: the same training loop bare and under Ray Train's TorchTrainer (one worker, one GPU).
   Run it in its own process (``--targets ray``) so the driver holds no GPU memory.

    python benchmarks/gpu_targets.py --targets noise,shaping,ig,sensitivity          # GPU, ResNet-50 224 px
    python benchmarks/gpu_targets.py --targets ray,compile
    python benchmarks/gpu_targets.py --arch cifar_resnet8 --image-size 32 --batch 8 --steps 2 \\
        --refresh-images 16 --ig-images 4 --ig-steps 8 --sens-images 2 --perturbations 3 --classes 10   # CPU check
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torchvision
from torch import nn
from torch.utils.data import TensorDataset

from nsde_ray.config import NoiseConfig, ShapingConfig, TrainConfig
from nsde_ray.models import build_model, build_plain_model, set_fused_noise, set_noise_shape_maps
from nsde_ray.shaping import NoiseShaper
from nsde_ray.train import plain_loss, train_step

TARGETS = ("noise", "shaping", "compile", "ig", "sensitivity", "ray")
IMAGENET_STD = (0.229, 0.224, 0.225)


class Report(dict):
    """The run's rows by name (written to --json), each printed as it comes."""

    def row(self, name: str, **figures) -> None:
        self[name] = figures
        text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in figures.items())
        print(f"[row] {name}: {text}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class Trainer:
    """One model's training step on fixed synthetic data; rate() times ``steps`` steps after ``warmup``."""

    def __init__(self, model: nn.Module, images, labels, device, amp: bool, step_model: nn.Module | None = None):
        self.model, self.images, self.labels, self.device, self.amp = model, images, labels, device, amp
        self.step_model = step_model if step_model is not None else model
        self.optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(self) -> None:
        train_step(self.step_model, self.optimizer, self.images, self.labels, self.loss)

    def loss(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return plain_loss(
            model, images, labels, autocast=dict(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp)
        )

    def rate(self, steps: int, warmup: int = 3) -> float:
        self.model.train()
        for _ in range(warmup):
            self.step()
        sync(self.device)
        started = time.perf_counter()
        for _ in range(steps):
            self.step()
        sync(self.device)
        return steps * len(self.images) / (time.perf_counter() - started)


class GradientShapedTrainer(Trainer):
    """A shaped training step whose maps come from its own input gradient (``ShapingConfig.method =
    "training_gradient"``), as the training loop runs it: scale the noise by the samples' maps, take the
    loss gradient with respect to the images too, turn it into the samples' next maps."""

    def __init__(self, model: nn.Module, images, labels, device, amp: bool, shaper: NoiseShaper):
        super().__init__(model, images, labels, device, amp)
        self.shaper, self.indices = shaper, torch.arange(len(images))

    def step(self) -> None:
        set_noise_shape_maps(self.model, self.shaper.scale_for(self.indices))
        images = self.images.detach().requires_grad_(True)
        train_step(self.step_model, self.optimizer, images, self.labels, self.loss)
        self.shaper.update_from_gradient(self.indices, None, images.grad)


def interleaved(trainers: dict[str, Trainer], steps: int, rounds: int) -> dict[str, float]:
    """Median img/s of each trainer over ``rounds`` rounds, the trainers taking turns in each round."""
    for trainer in trainers.values():  # first use: compilation, cuDNN choices, allocator growth
        trainer.rate(2, warmup=3)
    rates: dict[str, list[float]] = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            rates[name].append(trainer.rate(steps, warmup=1))
    return {name: statistics.median(values) for name, values in rates.items()}


def calibrated(model: nn.Module, shape, device, memory_format) -> nn.Module:
    """Batch-norm running statistics set from one batch of synthetic data (a fresh model's are identity)."""
    momenta = {m: m.momentum for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    for module in momenta:
        module.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(torch.randn(min(shape[0], 64), *shape[1:], device=device).to(memory_format=memory_format))
    for module, momentum in momenta.items():
        module.momentum = momentum
    return model.eval()


def timed(function, device, repeats: int = 2):
    """(result, best seconds) of ``function()`` after one warm-up call."""
    result = function()
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        result = function()
        sync(device)
        best = min(best, time.perf_counter() - started)
    return result, best


# ---------------------------------------------------------------------------------------------- targets


def tune_noise(report: Report, args, device, memory_format) -> None:
    """Time the fused tail's kernels alone at ResNet-50's block shapes for a few launch configurations and
    keep the fastest (module globals of nsde_ray.models.fused_noise) for the rest of the run."""
    from nsde_ray.models import fused_noise

    if not fused_noise.available(torch.empty(0, device=device)):
        return
    shapes = [
        (args.batch, 256, args.image_size // 4, args.image_size // 4),
        (args.batch, 1024, args.image_size // 16, args.image_size // 16),
    ]
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tensors = [
        (
            torch.randn(s, device=device, dtype=dtype).to(memory_format=memory_format),
            torch.randn(s, device=device, dtype=dtype).to(memory_format=memory_format),
        )
        for s in shapes
    ]

    def seconds(function, repeats=10):
        function()
        sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            function()
        sync(device)
        return (time.perf_counter() - started) / repeats

    reference = sum(
        seconds(lambda o=o, i=i: torch.relu_(o.clone().add_(i))) - seconds(lambda o=o: o.clone()) for o, i in tensors
    )
    eager = sum(
        seconds(
            lambda o=o, i=i: torch.addcmul(
                y := torch.relu(o + i), torch.randn_like(y), 0.5 * y.std(dim=(1, 2, 3), keepdim=True)
            )
        )
        for o, i in tensors
    )
    figures = {"plain_add_relu_ms": 1e3 * reference, "eager_tail_ms": 1e3 * eager}
    best = None
    for reduce in ((1024, 32 * 1024, 4), (1024, 16 * 1024, 4), (2048, 64 * 1024, 8), (4096, 64 * 1024, 8)):
        for apply in ((2048, 4), (4096, 4), (4096, 8), (8192, 8)):
            (
                (fused_noise.REDUCE_BLOCK, fused_noise.REDUCE_CHUNK, fused_noise.REDUCE_WARPS),
                (fused_noise.APPLY_BLOCK, fused_noise.APPLY_WARPS),
            ) = reduce, apply
            try:
                total = sum(seconds(functools.partial(fused_noise.residual_noise, o, i, 0.5)) for o, i in tensors)
            except Exception as err:  # noqa: BLE001
                figures[f"error_{reduce}_{apply}"] = repr(err)[:120]
                continue
            figures[f"fused_ms_{reduce[0]}_{reduce[1]}_{reduce[2]}__{apply[0]}_{apply[1]}"] = 1e3 * total
            if best is None or total < best[0]:
                best = (total, reduce, apply)
    if best is not None:
        (
            (fused_noise.REDUCE_BLOCK, fused_noise.REDUCE_CHUNK, fused_noise.REDUCE_WARPS),
            (fused_noise.APPLY_BLOCK, fused_noise.APPLY_WARPS),
        ) = best[1], best[2]
        figures.update(best_reduce=best[1], best_apply=best[2], best_ms=1e3 * best[0])
    report.row("0_noise_kernels", **figures)


def target_noise_and_shaping(report: Report, args, device, memory_format, amp, shaping: bool, noise: bool) -> None:
    images = torch.randn(args.batch, args.channels, args.image_size, args.image_size, device=device)
    images = images.to(memory_format=memory_format)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)

    def ours(mode, sigma=0.5):
        return build_model(args.arch, args.classes, args.channels, NoiseConfig(mode, sigma)).to(
            device, memory_format=memory_format
        )

    plain = build_plain_model(args.arch, args.classes, args.channels).to(device, memory_format=memory_format)
    trainers = {"plain": Trainer(plain, images, labels, device, amp)}
    if noise:
        gaussian, unfused, sigma0 = ours("gaussian"), ours("gaussian"), ours("gaussian", 0.0)
        set_fused_noise(unfused, False)
        trainers.update(
            {
                "gaussian": Trainer(gaussian, images, labels, device, amp),
                "gaussian_unfused": Trainer(unfused, images, labels, device, amp),
                "sigma0": Trainer(sigma0, images, labels, device, amp),
            }
        )
    shaped = None
    if shaping:
        shaped = ours("attribution")
        size = min(args.image_size, ShapingConfig().map_size)
        set_noise_shape_maps(shaped, torch.rand(args.batch, 1, size, size, device=device))
        trainers["shaped_step"] = Trainer(shaped, images, labels, device, amp)
        gradient_cfg = ShapingConfig(method="training_gradient", warmup_epochs=0)
        gradient_shaper = NoiseShaper(
            gradient_cfg,
            TensorDataset(images, labels),
            torch.arange(args.batch),
            steps_per_epoch=1,
            device=device,
            memory_format=memory_format,
            amp=amp,
        )
        trainers["training_gradient"] = GradientShapedTrainer(
            ours("attribution"), images, labels, device, amp, gradient_shaper
        )
    started = time.perf_counter()
    rates = interleaved(trainers, args.steps, args.rounds)
    plain_rate = rates["plain"]
    from nsde_ray.models import fused_noise

    if noise:
        report.row(
            "1_noise",
            fused_kernels="failed: " + fused_noise.disabled_reason
            if fused_noise.disabled_reason
            else ("triton" if fused_noise.available(images) else "unavailable (eager)"),
            plain_img_s=plain_rate,
            gaussian_img_s=rates["gaussian"],
            ratio=rates["gaussian"] / plain_rate,
            gaussian_unfused_img_s=rates["gaussian_unfused"],
            unfused_ratio=rates["gaussian_unfused"] / plain_rate,
            sigma0_img_s=rates["sigma0"],
            sigma0_ratio=rates["sigma0"] / plain_rate,
            target=">= 0.95",
            met=rates["gaussian"] / plain_rate >= 0.95,
            rounds=args.rounds,
            steps=args.steps,
            wall_s=time.perf_counter() - started,
        )
    if not shaping:
        return
    set_noise_shape_maps(shaped, None)
    refresh_data = TensorDataset(
        torch.randn(args.refresh_images, args.channels, args.image_size, args.image_size),
        torch.randint(0, args.classes, (args.refresh_images,)),
    )
    defaults = ShapingConfig()
    refresh = {}
    for method in ("ig", "saliency"):
        cfg = ShapingConfig(method=method, ig_steps=defaults.ig_steps, batch_size=args.refresh_batch)
        shaper = NoiseShaper(
            cfg,
            refresh_data,
            torch.arange(args.refresh_images),
            steps_per_epoch=1,
            device=device,
            memory_format=memory_format,
            amp=amp,
        )
        _, seconds = timed(functools.partial(shaper.refresh, shaped, 0), device, repeats=1)
        refresh[method] = args.refresh_images / seconds
    shaped_rate = rates["shaped_step"]

    def amortised(refresh_rate: float, every: int) -> float:
        return 1.0 / (plain_rate / shaped_rate + plain_rate / (every * refresh_rate))

    def every_for(refresh_rate: float, goal: float = 0.90) -> str:
        budget = 1.0 / goal - plain_rate / shaped_rate
        return "never" if budget <= 0 else f"{plain_rate / (budget * refresh_rate):.1f}"

    ratio = amortised(refresh["ig"], defaults.refresh_every)
    report.row(
        "2_shaping",
        plain_img_s=plain_rate,
        shaped_step_img_s=shaped_rate,
        shaped_step_ratio=shaped_rate / plain_rate,
        refresh_ig4_img_s=refresh["ig"],
        refresh_saliency_img_s=refresh["saliency"],
        refresh_ig4_per_train=refresh["ig"] / plain_rate,
        refresh_saliency_per_train=refresh["saliency"] / plain_rate,
        default_schedule=f"ig-{defaults.ig_steps} every {defaults.refresh_every} epochs",
        ratio=ratio,
        target=">= 0.90",
        met=ratio >= 0.90,
        saliency_every_2_ratio=amortised(refresh["saliency"], 2),
        ig4_every_10_ratio=amortised(refresh["ig"], 10),
        epochs_between_ig4_refreshes_for_0_90=every_for(refresh["ig"]),
        epochs_between_saliency_refreshes_for_0_90=every_for(refresh["saliency"]),
        refresh_batch=args.refresh_batch,
        refresh_images=args.refresh_images,
    )
    gradient_ratio = rates["training_gradient"] / plain_rate
    report.row(
        "2b_shaping_training_gradient",
        plain_img_s=plain_rate,
        gaussian_img_s=rates.get("gaussian"),
        training_gradient_img_s=rates["training_gradient"],
        ratio=gradient_ratio,
        target=">= 0.90",
        met=gradient_ratio >= 0.90,
        shaped_step_ratio=shaped_rate / plain_rate,
    )


def target_compile(report: Report, args, device, memory_format, amp) -> None:
    images = torch.randn(args.batch, args.channels, args.image_size, args.image_size, device=device)
    images = images.to(memory_format=memory_format)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)
    from nsde_ray.train import compile_for_training

    figures = {}
    models = {"gaussian": build_model(args.arch, args.classes, args.channels, NoiseConfig("gaussian", 0.5))}
    if args.compile_plain:
        models["plain"] = build_plain_model(args.arch, args.classes, args.channels)
    for name, model in models.items():
        model = model.to(device, memory_format=memory_format)
        eager = Trainer(model, images, labels, device, amp)
        compiled_module = compile_for_training(model, TrainConfig(compile=True))
        compiled = Trainer(model, images, labels, device, amp, step_model=compiled_module)
        started = time.perf_counter()
        compiled.step()
        sync(device)
        figures[f"{name}_compile_s"] = time.perf_counter() - started
        rates = interleaved({"eager": eager, "compiled": compiled}, args.steps, args.rounds)
        figures[f"{name}_eager_img_s"] = rates["eager"]
        figures[f"{name}_compiled_img_s"] = rates["compiled"]
        figures[f"{name}_speedup"] = rates["compiled"] / rates["eager"]
    if "plain_compiled_img_s" in figures:
        figures["compiled_gaussian_over_compiled_plain"] = (
            figures["gaussian_compiled_img_s"] / figures["plain_compiled_img_s"]
        )
        figures["compiled_gaussian_over_eager_plain"] = (
            figures["gaussian_compiled_img_s"] / figures["plain_eager_img_s"]
        )
    report.row("3_compile", **figures)


def _attribution_setup(args, device, count: int):
    torch.manual_seed(1)
    shape = (count, args.channels, args.image_size, args.image_size)
    model = calibrated(
        build_model(args.arch, args.classes, args.channels).to(device), shape, device, torch.contiguous_format
    )
    images = torch.randn(shape, device=device)
    with torch.no_grad():
        labels = model(images).argmax(dim=1)
    model_cl = copy.deepcopy(model).to(
        memory_format=torch.channels_last if device.type == "cuda" else torch.contiguous_format
    )
    return model, model_cl, images, labels


def target_ig(report: Report, args, device, amp) -> None:
    from captum.attr import IntegratedGradients

    from nsde_ray.attribution import completeness_error, integrated_gradients

    model, model_cl, images, labels = _attribution_setup(args, device, args.ig_images)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    captum_ig = IntegratedGradients(model)
    theirs, t_captum = timed(
        lambda: captum_ig.attribute(
            images, target=labels, n_steps=args.ig_steps, internal_batch_size=args.captum_batch
        ),
        device,
    )
    n = args.ig_images
    figures = {
        "images": n,
        "steps": args.ig_steps,
        "captum_img_s": n / t_captum,
        "captum_internal_batch": args.captum_batch,
    }
    variants = {  # name: options of integrated_gradients; "fast" is the library default with amp on a GPU
        "fast": dict(internal_batch_size=args.fast_batch, amp=amp, memory_format=memory_format),
        "fast_batch256": dict(internal_batch_size=256, amp=amp, memory_format=memory_format),
        "fast_unfolded": dict(internal_batch_size=args.fast_batch, amp=amp, memory_format=memory_format, fold_bn=False),
        "fast_unfolded_autograd_stem": dict(
            internal_batch_size=args.fast_batch,
            amp=amp,
            memory_format=memory_format,
            fold_bn=False,
            stem_gradient=False,
        ),
        "fast_fp32": dict(internal_batch_size=args.captum_batch, amp=False, memory_format=memory_format),
    }
    errors = {"captum": completeness_error(model, images, labels, theirs)}
    for name, options in variants.items():
        try:
            attributions, seconds = timed(
                functools.partial(integrated_gradients, model_cl, images, labels, n_steps=args.ig_steps, **options),
                device,
            )
        except Exception as err:  # noqa: BLE001 - a variant that fails must not cost the others
            figures[f"{name}_error"] = repr(err)[:200]
            continue
        errors[name] = completeness_error(model, images, labels, attributions)
        difference = (attributions - theirs).flatten(1).norm(dim=1) / theirs.flatten(1).norm(dim=1)
        figures.update(
            {
                f"{name}_img_s": n / seconds,
                f"{name}_speedup": t_captum / seconds,
                f"{name}_vs_captum_rel_l2_max": difference.max().item(),
            }
        )
    for name, error in errors.items():
        figures[f"completeness_{name}_mean"] = error.mean().item()
        figures[f"completeness_{name}_max"] = error.max().item()
    figures.update(
        fast=("bf16 autocast, " if amp else "")
        + ("channels_last" if device.type == "cuda" else "contiguous")
        + f", internal batch {args.fast_batch}, batch norm folded",
        target=">= 1.5",
        met=figures.get("fast_speedup", 0.0) >= 1.5,
    )
    report.row("4_ig", **figures)


def target_sensitivity(report: Report, args, device, amp) -> None:
    from captum.attr import IntegratedGradients
    from captum.metrics import sensitivity_max

    from nsde_ray.attribution import make_explainer
    from nsde_ray.metrics.sensitivity import max_sensitivity, uniform_perturbations

    model, model_cl, images, labels = _attribution_setup(args, device, args.sens_images)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    n = args.perturbations
    std = IMAGENET_STD[: args.channels] if args.channels == 3 else (1.0,) * args.channels
    deltas = uniform_perturbations(images.shape, n, args.radius, std, torch.Generator().manual_seed(0)).to(device)

    def same_perturbations(expanded, radius):  # Captum repeats each input n times in a row: deltas.flatten(0, 1)
        return expanded + deltas.flatten(0, 1)

    captum_ig = IntegratedGradients(model)
    theirs, t_captum = timed(
        lambda: sensitivity_max(
            captum_ig.attribute,
            images,
            perturb_func=same_perturbations,
            n_perturb_samples=n,
            target=labels,
            n_steps=args.ig_steps,
            internal_batch_size=args.captum_batch,
        ),
        device,
        repeats=1,
    )
    figures = {
        "images": args.sens_images,
        "perturbations": n,
        "steps": args.ig_steps,
        "radius": args.radius,
        "captum_img_s": args.sens_images / t_captum,
    }
    for name, use_amp in (("fast", amp), ("fast_fp32", False)):  # fp32 activations: Captum's (smaller) batch
        explain = make_explainer(
            model_cl,
            "ig",
            n_steps=args.ig_steps,
            fast=True,
            amp=use_amp,
            memory_format=memory_format,
            internal_batch_size=args.fast_batch if use_amp else args.captum_batch,
        )
        ours, seconds = timed(
            functools.partial(
                max_sensitivity,
                explain,
                model_cl,
                images,
                labels,
                deltas,
                keep_prediction=False,
                chunk_size=args.sens_chunk,
            ),
            device,
            repeats=1,
        )
        relative = (ours - theirs.view(-1)).abs() / theirs.view(-1).abs()
        figures.update(
            {
                f"{name}_img_s": args.sens_images / seconds,
                f"{name}_speedup": t_captum / seconds,
                f"{name}_rel_diff_max": relative.max().item(),
                f"{name}_rel_diff_mean": relative.mean().item(),
            }
        )
    figures.update(captum_mean=theirs.mean().item(), target=">= 2", met=figures["fast_speedup"] >= 2.0)
    report.row("5_sensitivity", **figures)


# ---------------------------------------------------------------------------------------------- Ray Train


def ray_loop(config: dict) -> None:
    """The training loop timed for target 6: bare (config['bare']) or as a Ray Train worker."""
    bare = config["bare"]
    if bare:
        device = torch.device(config["device"])
    else:
        import ray.train
        import ray.train.torch

        device = ray.train.torch.get_device()
    on_gpu = device.type == "cuda"
    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    torch.manual_seed(0)
    model = build_model(config["arch"], config["classes"], config["channels"], NoiseConfig("gaussian", 0.5))
    model = model.to(device, memory_format=memory_format)
    if not bare:
        model = ray.train.torch.prepare_model(model, move_to_device=False)
    shape = (config["batch"], config["channels"], config["image_size"], config["image_size"])
    images = torch.randn(shape, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, config["classes"], (config["batch"],), device=device)
    trainer = Trainer(model, images, labels, device, on_gpu)
    rates = [trainer.rate(config["steps"], warmup=3 if i == 0 else 1) for i in range(config["rounds"])]
    metrics = {"img_s": statistics.median(rates), "rates": rates}
    if bare:
        config["result"].update(metrics)
    else:
        with open(config["result_file"], "w") as handle:
            json.dump(metrics, handle)
        ray.train.report({"img_s": metrics["img_s"]})


def target_ray(report: Report, args, device) -> None:
    import tempfile

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    config = {
        "arch": args.arch,
        "classes": args.classes,
        "channels": args.channels,
        "image_size": args.image_size,
        "batch": args.batch,
        "steps": args.steps,
        "rounds": args.rounds,
        "device": str(device),
    }
    bare_result: dict = {}
    started = time.perf_counter()
    ray_loop({**config, "bare": True, "result": bare_result})
    bare_wall = time.perf_counter() - started
    if device.type == "cuda":
        torch.cuda.empty_cache()
    workdir = tempfile.mkdtemp(prefix="nsde_ray_bench_")
    result_file = os.path.join(workdir, "ray_result.json")
    started = time.perf_counter()
    ray.init(
        num_cpus=max(2, os.cpu_count() or 2),
        num_gpus=1 if device.type == "cuda" else 0,
        include_dashboard=False,
        log_to_driver=True,
    )
    ray_start = time.perf_counter() - started
    trainer = TorchTrainer(
        ray_loop,
        train_loop_config={**config, "bare": False, "result_file": result_file},
        scaling_config=ray.train.ScalingConfig(num_workers=1, use_gpu=device.type == "cuda"),
        run_config=ray.train.RunConfig(name="gpu_targets_overhead", storage_path=workdir),
    )
    started = time.perf_counter()
    trainer.fit()
    fit_wall = time.perf_counter() - started
    ray.shutdown()
    with open(result_file) as handle:
        in_ray = json.load(handle)
    slower = 1.0 - in_ray["img_s"] / bare_result["img_s"]
    report.row(
        "6_ray",
        bare_img_s=bare_result["img_s"],
        ray_img_s=in_ray["img_s"],
        slower=slower,
        target="<= 0.05",
        met=slower <= 0.05,
        bare_rounds=bare_result["rates"],
        ray_rounds=in_ray["rates"],
        ray_init_s=ray_start,
        fit_wall_s=fit_wall,
        bare_wall_s=bare_wall,
        fit_minus_bare_wall_s=fit_wall - bare_wall,
        ray=ray.__version__,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--targets", default="noise,shaping,ig,sensitivity", help=f"comma-separated, from: {', '.join(TARGETS)}"
    )
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--refresh-images", type=int, default=1024)
    parser.add_argument("--refresh-batch", type=int, default=256)
    parser.add_argument("--ig-images", type=int, default=32)
    parser.add_argument("--ig-steps", type=int, default=50)
    parser.add_argument("--captum-batch", type=int, default=256, help="Captum's internal_batch_size")
    parser.add_argument("--fast-batch", type=int, default=512, help="the fast path's internal_batch_size")
    parser.add_argument("--sens-images", type=int, default=16)
    parser.add_argument("--sens-chunk", type=int, default=160, help="perturbed images per explain call (ours)")
    parser.add_argument("--perturbations", type=int, default=10)
    parser.add_argument("--radius", type=float, default=0.02)
    parser.add_argument("--compile-plain", action="store_true", help="target 3: also compile plain torchvision")
    parser.add_argument(
        "--tune-noise",
        action="store_true",
        help="before target 1: time launch configurations of the fused noise kernels, keep the best",
    )
    parser.add_argument(
        "--cudnn-benchmark", action="store_true", help="targets 4 and 5: torch.backends.cudnn.benchmark"
    )
    parser.add_argument("--json", default=None, help="write every row here")
    args = parser.parse_args()
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    hardware = (
        torch.cuda.get_device_name()
        if on_gpu
        else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    )
    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version()}
    try:
        import captum

        versions["captum"] = captum.__version__
    except ImportError:
        pass
    header = (
        f"{time.strftime('%Y-%m-%d')} | {hardware} | "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f" | {args.arch} {args.image_size}px batch {args.batch} | "
        + ("bf16 autocast, channels_last" if on_gpu else "fp32")
    )
    print(header, flush=True)
    report = Report(header={"text": header, "command": " ".join(sys.argv), **versions})

    jobs = {
        "noise": lambda: target_noise_and_shaping(
            report, args, device, memory_format, on_gpu, shaping="shaping" in targets, noise=True
        ),
        "shaping": lambda: (
            None
            if "noise" in targets
            else target_noise_and_shaping(report, args, device, memory_format, on_gpu, shaping=True, noise=False)
        ),
        "compile": lambda: target_compile(report, args, device, memory_format, on_gpu),
        "ig": lambda: target_ig(report, args, device, on_gpu),
        "sensitivity": lambda: target_sensitivity(report, args, device, on_gpu),
        "ray": lambda: target_ray(report, args, device),
    }
    if args.tune_noise:
        try:
            tune_noise(report, args, device, memory_format)
        except Exception:  # noqa: BLE001
            traceback.print_exc()
    for target in targets:
        started = time.perf_counter()
        try:
            jobs[target]()
        except Exception:  # one failed target must not cost the others' figures
            traceback.print_exc()
            report[f"{target}_error"] = traceback.format_exc(limit=3)
            print(f"[row] {target}: FAILED (traceback above)", flush=True)
        print(f"[time] {target}: {time.perf_counter() - started:.1f} s", flush=True)
        if on_gpu:
            torch.cuda.empty_cache()
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
