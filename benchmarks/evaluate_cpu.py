"""Wall time of the attribution evaluation on CPU: 100 digits images, IG + max-sensitivity + SIC.

Trains the default small model (cifar_resnet8, Gaussian sigma 0.5) in-process for a few epochs,
then times ``evaluate`` with IG only (the sweep's objectives) and with the default methods.

    python benchmarks/evaluate_cpu.py
"""

import time

import torch
from torch.utils.data import DataLoader

from nsde_ray.config import DataConfig, EvalConfig, NoiseConfig, TrainConfig
from nsde_ray.data import build_datasets
from nsde_ray.evaluate import evaluate
from nsde_ray.models import build_model
from nsde_ray.train import build_optimizer


def main() -> None:
    torch.manual_seed(0)
    splits = build_datasets(DataConfig())
    model = build_model("cifar_resnet8", splits.num_classes, splits.in_channels, NoiseConfig("gaussian", 0.5))
    optimizer = build_optimizer(model, TrainConfig())
    model.train()
    for _ in range(4):
        for images, labels in DataLoader(splits.train, batch_size=32, shuffle=True):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for methods in (("ig",), EvalConfig().methods):
        cfg = EvalConfig(methods=methods, num_images=100, n_perturbations=10)
        started = time.perf_counter()
        metrics = evaluate(model, splits, cfg, progress=False).metrics
        elapsed = time.perf_counter() - started
        shown = {k: round(v, 4) for k, v in metrics.items() if k in ("eval_images", "sensitivity", "sic")}
        print(f"methods={','.join(methods)} n_steps={cfg.n_steps} perturbations={cfg.n_perturbations}: "
              f"{elapsed:.1f} s {shown}")


if __name__ == "__main__":
    main()
