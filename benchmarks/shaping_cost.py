"""Cost of noise and of attribution-driven shaping, side by side in one run (no Ray; model code only).

Measures, on synthetic data with the same model, batch and precision:
- training throughput (img/s) of plain torchvision, our Gaussian-noise model and our shaped-noise
  model (maps set, so the per-step cost of shaping is included);
- the throughput of one shaping refresh (img/s of maps) with IG (``ig_steps``) and saliency;
- the amortised slowdown of shaped training against Gaussian training for refresh intervals of
  1, 2, 5 and 10 epochs: (t_shaped_step + t_refresh / interval) / t_gaussian_step, per image.

    python benchmarks/shaping_cost.py --arch resnet50 --image-size 224 --batch 256   # GPU: bf16 + channels_last
    python benchmarks/shaping_cost.py --arch cifar_resnet8 --image-size 32 --batch 32 --channels 1   # CPU default model
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torchvision
from torch.utils.data import TensorDataset

from nsde_ray.config import NoiseConfig, ShapingConfig
from nsde_ray.models import build_model, build_plain_model, set_noise_shape_maps
from nsde_ray.shaping import NoiseShaper


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_throughput(model, images, labels, steps, device, amp, shape_map=None) -> float:
    """Images per second of forward + backward + SGD step."""
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train()
    if shape_map is not None:
        set_noise_shape_maps(model, shape_map)
    for step in range(steps + 5):
        if step == 5:
            _sync(device)
            started = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return steps * len(images) / (time.perf_counter() - started)


def refresh_throughput(model, dataset, cfg: ShapingConfig, device, memory_format, amp) -> float:
    """Images per second of shaping maps (eval mode, batched; bf16 autocast with ``amp`` on a GPU)."""
    shaper = NoiseShaper(cfg, dataset, torch.arange(len(dataset)), steps_per_epoch=1, device=device,
                         memory_format=memory_format, amp=amp)
    shaper.refresh(model, 0)  # warm-up (cuDNN autotune, allocator)
    _sync(device)
    started = time.perf_counter()
    shaper.refresh(model, 0)
    _sync(device)
    return len(dataset) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--refresh-images", type=int, default=1024)
    parser.add_argument("--refresh-batch", type=int, default=256)
    parser.add_argument("--ig-steps", type=int, default=4)
    args = parser.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    on_gpu = device.type == "cuda"
    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    hardware = torch.cuda.get_device_name() if on_gpu else f"{platform.processor() or 'CPU'}, {torch.get_num_threads()} threads"
    print(f"{time.strftime('%Y-%m-%d')} | {hardware} | torch {torch.__version__}, torchvision {torchvision.__version__} | "
          f"{args.arch} {args.image_size}px batch {args.batch} | {'bf16 autocast, channels_last' if on_gpu else 'fp32'}")

    torch.manual_seed(0)
    shape = (args.batch, args.channels, args.image_size, args.image_size)
    images = torch.randn(shape, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)

    def ours(mode):
        return build_model(args.arch, args.classes, args.channels, NoiseConfig(mode, 0.5)).to(device, memory_format=memory_format)

    plain = build_plain_model(args.arch, args.classes, args.channels).to(device, memory_format=memory_format)
    gaussian, shaped = ours("gaussian"), ours("attribution")
    shape_map = torch.rand(args.batch, 1, min(args.image_size, ShapingConfig().map_size),
                           min(args.image_size, ShapingConfig().map_size), device=device)
    rates = {"plain": train_throughput(plain, images, labels, args.steps, device, on_gpu),
             "gaussian": train_throughput(gaussian, images, labels, args.steps, device, on_gpu),
             "shaped step": train_throughput(shaped, images, labels, args.steps, device, on_gpu, shape_map)}
    set_noise_shape_maps(shaped, None)
    refresh_data = TensorDataset(torch.randn(args.refresh_images, *shape[1:]),
                                 torch.randint(0, args.classes, (args.refresh_images,)))
    for method in ("ig", "saliency"):
        cfg = ShapingConfig(method=method, ig_steps=args.ig_steps, batch_size=args.refresh_batch)
        rates[f"refresh {method}"] = refresh_throughput(shaped, refresh_data, cfg, device, memory_format, on_gpu)

    for name, rate in rates.items():
        print(f"  {name:18s} {rate:10.1f} img/s")
    print(f"  gaussian / plain   {rates['gaussian'] / rates['plain']:.3f}x throughput")
    per_image_gaussian = 1 / rates["gaussian"]
    for method in ("ig", "saliency"):
        slowdowns = []
        for interval in (1, 2, 5, 10):
            per_image = 1 / rates["shaped step"] + 1 / (rates[f"refresh {method}"] * interval)
            slowdowns.append(f"every {interval}: {100 * (per_image / per_image_gaussian - 1):+.1f}%")
        label = f"{method} ({args.ig_steps} steps)" if method == "ig" else method
        print(f"  shaped vs gaussian, refresh {label}: " + ", ".join(slowdowns))


if __name__ == "__main__":
    main()
