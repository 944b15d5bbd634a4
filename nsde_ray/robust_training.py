"""Robust-training baselines: FGSM adversarial training and input-gradient regularisation.

- :func:`fgsm_loss`: FGSM with a random start (Wong, Rice & Kolter 2020, "Fast is better than free"):
  the cross-entropy on ``x + delta``, ``delta`` one signed-gradient step from a uniform start in the
  L-infinity ball.
- :class:`OverfitGuard`: their early stop against catastrophic overfitting; PGD accuracy
  (:func:`perturbed_accuracy` under :func:`pgd_perturbation`) on a fixed training minibatch, once per
  epoch, collapsing from its best.
- :func:`gradient_penalty_loss`: double backprop (Ross & Doshi-Velez 2018): cross-entropy plus the
  squared norm of each sample's input gradient.

Units. Images arrive normalised, ``(pixel - mean) / std`` per channel, pixels in [0, 1]. Radii and
step sizes (``epsilon``, ``step``) are in pixel units, the scale of the attribution metric's
perturbation radius; they are divided by ``std`` per channel to act on the normalised images, and the
input gradient of the penalty is taken per pixel (normalised gradient divided by ``std``).
Perturbations (``delta``) returned here are in normalised units, to be added to the images as they are.

BatchNorm. The attacks run the model in whatever mode it is in: in training that is train mode, as in
Wong et al., so the FGSM forward pass normalises with the perturbed batch's statistics and updates
the running statistics once more per step (and a stochastic model draws its noise for it). The guard
switches to eval mode for its PGD and restores the mode afterwards.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

PGD_STEPS = 5
PGD_STEP_FRACTION = 0.25  # Wong et al.'s early stop: 5 steps of 2/255 for a radius of 8/255


def _per_channel(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    """``values`` (C,) as a tensor (1, C, 1, 1) of ``like``'s dtype and device, broadcasting over images."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)


def _autocast(autocast: dict | None):
    """``torch.autocast(**autocast)``, or no context for None."""
    return contextlib.nullcontext() if autocast is None else torch.autocast(**autocast)


def _no_sync(model: nn.Module):
    """A DDP model's ``no_sync()`` (an attack's forward pass prepares no gradient all-reduce), else no context."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) else contextlib.nullcontext()


def _delta_bounds(
    images: torch.Tensor, epsilon: float, mean: tuple[float, ...], std: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper bounds (N, C, H, W) on a normalised perturbation of ``images`` (N, C, H, W), normalised.

    The intersection of the L-infinity ball of radius ``epsilon`` (pixel units) with the set where
    ``images + delta`` is a valid image (pixels in [0, 1]); non-empty for valid images.
    """
    scale, shift = _per_channel(std, images), _per_channel(mean, images)
    radius = epsilon / scale
    return torch.maximum(-radius, -shift / scale - images), torch.minimum(radius, (1 - shift) / scale - images)


def _loss_gradient(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor, autocast: dict | None
) -> torch.Tensor:
    """Gradient (N, C, H, W) of the summed cross-entropy at ``images + delta`` w.r.t. ``delta`` alone.

    Parameters' ``.grad`` are left untouched (``torch.autograd.grad`` w.r.t. ``delta`` only).
    """
    delta = delta.detach().requires_grad_(True)
    with torch.enable_grad(), _no_sync(model), _autocast(autocast):
        loss = F.cross_entropy(model(images + delta), labels, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, delta)
    return gradient


def _random_start(
    low: torch.Tensor, high: torch.Tensor, epsilon: float, std: tuple[float, ...], generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform in [-epsilon, epsilon] (pixel units) per element, normalised, clamped to [low, high]: (N, C, H, W)."""
    unit = torch.rand(low.shape, generator=generator, dtype=low.dtype, device=low.device)
    return ((2 * unit - 1) * epsilon / _per_channel(std, low)).clamp(low, high)


def fgsm_perturbation(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    step: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast: dict | None = None,
) -> torch.Tensor:
    """FGSM with a random start: a perturbation (N, C, H, W), normalised units, detached, of ``images`` (N, C, H, W).

    ``delta`` starts uniform in the L-infinity ball of radius ``epsilon`` (pixel units), takes one step of
    ``step`` (pixel units; Wong et al. use 1.25 epsilon) along the sign of the loss gradient, and is
    projected back onto the ball and the valid pixel range [0, 1]. Draws from torch's global generator.
    """
    low, high = _delta_bounds(images.detach(), epsilon, mean, std)
    delta = _random_start(low, high, epsilon, std, None)
    gradient = _loss_gradient(model, images.detach(), labels, delta, autocast)
    return (delta + step / _per_channel(std, delta) * gradient.sign()).clamp(low, high)


def fgsm_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    step: float,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast: dict | None = None,
) -> torch.Tensor:
    """Mean cross-entropy (scalar) of ``model`` on ``images`` (N, C, H, W, normalised) moved by
    :func:`fgsm_perturbation` (detached), differentiable in the parameters.

    ``epsilon`` and ``step`` in pixel units. ``epsilon == 0`` is plain training: the plain cross-entropy,
    one forward pass and no random numbers drawn. ``autocast``: ``torch.autocast`` keyword arguments.
    """
    if epsilon > 0:
        images = images.detach() + fgsm_perturbation(model, images, labels, epsilon, step, mean, std, autocast)
    with _autocast(autocast):
        return F.cross_entropy(model(images), labels)


def pgd_perturbation(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    epsilon: float,
    step: float,
    steps: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast: dict | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """L-infinity PGD from a random start: a perturbation (N, C, H, W), normalised units, detached.

    ``steps`` signed-gradient steps of ``step`` (pixel units), each projected onto the ball of radius
    ``epsilon`` (pixel units) and the valid pixel range; the start is drawn from ``generator``
    (torch's global one if None). The model's mode is left as it is.
    """
    images = images.detach()
    low, high = _delta_bounds(images, epsilon, mean, std)
    delta = _random_start(low, high, epsilon, std, generator)
    step_normalised = step / _per_channel(std, images)
    for _ in range(steps):
        gradient = _loss_gradient(model, images, labels, delta, autocast)
        delta = (delta + step_normalised * gradient.sign()).clamp(low, high)
    return delta


def perturbed_accuracy(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, delta: torch.Tensor, autocast: dict | None = None
) -> float:
    """Fraction in [0, 1] of ``images + delta`` (N, C, H, W, normalised; ``delta`` e.g. :func:`pgd_perturbation`)
    classified as ``labels`` (N,); the model's mode is left as it is."""
    with torch.no_grad(), _autocast(autocast):
        predictions = model(images.detach() + delta).argmax(dim=1)
    return (predictions == labels).float().mean().item()


class OverfitGuard:
    """Early stop against catastrophic overfitting (Wong et al. 2020): once per epoch, PGD accuracy on a
    fixed training minibatch; it has collapsed when it falls more than ``drop`` (a fraction of the batch)
    below the best seen so far. The training loop then stops and keeps the last weights that passed.

    PGD: ``pgd_steps`` steps of ``pgd_step`` (pixel units; default ``epsilon / 4``, Wong et al.'s
    2/255 at 8/255) within radius ``epsilon`` (pixel units), in eval mode, from a random start drawn
    from a generator seeded with ``seed`` at every check: the same start each epoch, and torch's global
    generator untouched. ``best``: the best accuracy so far (None before the first check).
    """

    def __init__(
        self,
        epsilon: float,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        pgd_steps: int = PGD_STEPS,
        pgd_step: float | None = None,
        drop: float = 0.2,
        seed: int = 0,
    ) -> None:
        self.epsilon, self.mean, self.std, self.drop, self.seed = epsilon, mean, std, drop, seed
        self.pgd_steps = pgd_steps
        self.pgd_step = PGD_STEP_FRACTION * epsilon if pgd_step is None else pgd_step
        self.best: float | None = None

    def observe(self, accuracy: float) -> bool:
        """Whether ``accuracy`` (in [0, 1]) has collapsed from the best; a higher one becomes the best."""
        collapsed = self.best is not None and accuracy < self.best - self.drop
        self.best = accuracy if self.best is None else max(self.best, accuracy)
        return collapsed

    def check(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, autocast: dict | None = None) -> bool:
        """:meth:`observe` of the PGD accuracy of ``model`` (the unwrapped module, not DDP's) on ``images``
        (N, C, H, W, normalised) and ``labels`` (N,); the model runs in eval mode and gets its mode back."""
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        was_training = model.training
        model.eval()
        try:
            delta = pgd_perturbation(
                model,
                images,
                labels,
                self.epsilon,
                self.pgd_step,
                self.pgd_steps,
                self.mean,
                self.std,
                autocast,
                generator,
            )
            accuracy = perturbed_accuracy(model, images, labels, delta, autocast)
        finally:
            model.train(was_training)
        return self.observe(accuracy)


def gradient_penalty_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    weight: float,
    std: tuple[float, ...],
    autocast: dict | None = None,
) -> torch.Tensor:
    """Mean cross-entropy plus ``weight`` times the batch mean of ``|d CE_i / d pixel_i|^2`` (scalar).

    ``images`` (N, C, H, W, normalised), ``labels`` (N,). The input gradient is the gradient of the
    summed cross-entropy w.r.t. the batch, per pixel (chain rule: d/dpixel = d/dnormalised / std): each
    sample's own gradient when samples do not interact in the forward pass (eval-mode BatchNorm or none);
    train-mode BatchNorm adds the cross-sample terms through the batch statistics. Built with
    ``create_graph=True``, so the penalty trains; ``images.grad`` is not filled. ``weight == 0`` is the
    plain cross-entropy with one forward and no input gradient.
    """
    if weight == 0:
        with _autocast(autocast):
            return F.cross_entropy(model(images), labels)
    inputs = images.detach().requires_grad_(True)
    with _autocast(autocast):
        summed = F.cross_entropy(model(inputs), labels, reduction="sum")
    (gradient,) = torch.autograd.grad(summed, inputs, create_graph=True)
    penalty = (gradient / _per_channel(std, gradient)).pow(2).flatten(1).sum(dim=1).mean()
    return summed / len(labels) + weight * penalty


def fgsm_training_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    noise,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast: dict | None = None,
) -> torch.Tensor:
    """:func:`fgsm_loss` with ``noise``'s (:class:`nsde_ray.config.NoiseConfig`) ``fgsm_epsilon`` and ``fgsm_step``:
    the training loss of noise mode ``fgsm``."""
    return fgsm_loss(model, images, labels, noise.fgsm_epsilon, noise.fgsm_step, mean, std, autocast)


def gradreg_training_loss(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    noise,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    autocast: dict | None = None,
) -> torch.Tensor:
    """:func:`gradient_penalty_loss` with ``noise``'s ``gradreg_weight``: the training loss of noise mode
    ``gradreg``."""
    return gradient_penalty_loss(model, images, labels, noise.gradreg_weight, std, autocast)
