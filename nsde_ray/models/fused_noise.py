"""The block tail ``relu(out + identity) + sigma * std * m * eps`` as two Triton kernels.

Eager PyTorch needs five passes over every block output for the noise (the std, the draw, the
multiply-add, on top of the residual ``add`` and ``relu``); Inductor's version of the same function
(``torch.compile``) was slower still on an H100, its Philox draw costing one generator call per
element. Here:

1. ``_stats_kernel`` reads ``out`` and ``identity`` once and writes per-sample partial sums of
   y = relu(out + identity) and y**2 (fp32, fixed order: deterministic);
2. ``_apply_kernel`` reads them again, finishes the per-sample std (unbiased, as ``torch.std``),
   draws eps with ``tl.randn4x`` (four normals per Philox call) and writes y + sigma * std * m * eps
   in the inputs' dtype, plus a uint8 ReLU mask for the backward pass.

Backward is ``grad * mask`` for both inputs (the noise scale is detached, as in the eager path). So
the fused tail moves about the bytes of the plain block's own ``add`` and ``relu``. The seed of each
call is drawn from torch's CUDA generator on the device (no host synchronisation), so
``torch.manual_seed`` makes runs reproducible.

The function is a ``torch.library`` custom op (``nsde_ray::residual_noise``): ``torch.compile`` keeps
it as one opaque kernel call instead of tracing into it. It runs wherever Triton runs: on CUDA
tensors, or on CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it).
"""

from __future__ import annotations

import os
import warnings

import torch

try:  # Triton ships with CUDA builds of torch; without it the eager path is used
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only torch builds
    triton = None

# Launch configuration (module globals, so benchmarks/gpu_targets.py --tune-noise can try others).
REDUCE_BLOCK = 4096  # elements per load in the statistics kernel
REDUCE_CHUNK = 64 * 1024  # elements per statistics program (a split of one sample)
REDUCE_WARPS = 8
APPLY_BLOCK = 2048  # elements per noise program: 4 sub-blocks, one randn4x call for 4 elements
APPLY_WARPS = 4
_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton reads it when the kernels are defined


disabled_reason: str | None = None  # set when the kernels failed once in this process; the eager path is used then


def disable(error: BaseException) -> None:
    """Stop using the kernels in this process after ``error`` (warns once); the eager path computes the same noise."""
    global disabled_reason
    if disabled_reason is None:
        disabled_reason = f"{type(error).__name__}: {error}"
        warnings.warn(
            f"nsde_ray: the fused noise kernels failed ({disabled_reason}); using the eager path from now on",
            RuntimeWarning,
            stacklevel=3,
        )


def available(x: torch.Tensor) -> bool:
    """Whether the Triton tail can run on tensors like ``x`` (CUDA, or CPU under the Triton interpreter)."""
    if triton is None or disabled_reason is not None:
        return False
    return x.is_cuda or (_INTERPRET and x.device.type == "cpu")


def supported(out: torch.Tensor, identity: torch.Tensor) -> bool:
    """Dense (B, C, H, W) inputs of one dtype and one layout (contiguous or channels_last)."""
    return (
        out.ndim == 4
        and out.shape == identity.shape
        and out.dtype == identity.dtype
        and out.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and out.stride() == identity.stride()
        and (out.is_contiguous() or out.is_contiguous(memory_format=torch.channels_last))
    )


if triton is not None:

    @triton.jit
    def _stats_kernel(out_ptr, id_ptr, partial_ptr, N, SPLITS, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
        b = tl.program_id(0)
        split = tl.program_id(1)
        base = b.to(tl.int64) * N
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        acc2 = tl.zeros([BLOCK], dtype=tl.float32)
        for i in range(0, CHUNK, BLOCK):
            offs = split * CHUNK + i + tl.arange(0, BLOCK)
            m = offs < N
            o = tl.load(out_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
            d = tl.load(id_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
            y = tl.maximum(o + d, 0.0)
            acc += y
            acc2 += y * y
        slot = (b.to(tl.int64) * SPLITS + split) * 2
        tl.store(partial_ptr + slot, tl.sum(acc, axis=0))
        tl.store(partial_ptr + slot + 1, tl.sum(acc2, axis=0))

    @triton.jit
    def _apply_part(
        out_ptr,
        id_ptr,
        y_ptr,
        mask_ptr,
        map_ptr,
        offs,
        z,
        scale,
        N,
        HW,
        C,
        HAS_MAP: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
    ):
        # The pointers are those of the sample's first element (map_ptr: of its row of the shape map).
        m = offs < N
        o = tl.load(out_ptr + offs, mask=m, other=0.0).to(tl.float32)
        d = tl.load(id_ptr + offs, mask=m, other=0.0).to(tl.float32)
        s = o + d
        y = tl.maximum(s, 0.0)
        noise = z * scale
        if HAS_MAP:
            if CHANNELS_LAST:
                hw = offs // C
            else:
                hw = offs % HW
            noise = noise * tl.load(map_ptr + hw, mask=m, other=0.0)
        tl.store(y_ptr + offs, (y + noise).to(y_ptr.dtype.element_ty), mask=m)
        tl.store(mask_ptr + offs, (s > 0.0).to(tl.uint8), mask=m)

    @triton.jit
    def _apply_kernel(
        out_ptr,
        id_ptr,
        y_ptr,
        mask_ptr,
        partial_ptr,
        map_ptr,
        seed_ptr,
        sigma,
        N,
        HW,
        C,
        SPLITS,
        SPLITS_P2: tl.constexpr,
        BLOCK: tl.constexpr,
        HAS_MAP: tl.constexpr,
        CHANNELS_LAST: tl.constexpr,
    ):
        tile = tl.program_id(0)
        b = tl.program_id(1)
        splits = tl.arange(0, SPLITS_P2)
        valid = splits < SPLITS
        slots = (b.to(tl.int64) * SPLITS + splits) * 2
        total = tl.sum(tl.load(partial_ptr + slots, mask=valid, other=0.0), axis=0)
        total2 = tl.sum(tl.load(partial_ptr + slots + 1, mask=valid, other=0.0), axis=0)
        mean = total / N
        variance = tl.maximum((total2 - total * mean) / (N - 1), 0.0)
        scale = sigma * tl.sqrt(variance)
        QUARTER: tl.constexpr = BLOCK // 4
        r = tl.arange(0, QUARTER)
        program = b.to(tl.int64) * tl.num_programs(0) + tile
        seed = tl.load(seed_ptr)
        z0, z1, z2, z3 = tl.randn4x(seed, program * QUARTER + r)
        base = b.to(tl.int64) * N
        out_ptr, id_ptr, y_ptr, mask_ptr = out_ptr + base, id_ptr + base, y_ptr + base, mask_ptr + base
        map_ptr = map_ptr + b.to(tl.int64) * HW
        offs = tile * BLOCK + r  # the first quarter of the tile; z0 to z3 are the draws of its four quarters
        _apply_part(out_ptr, id_ptr, y_ptr, mask_ptr, map_ptr, offs, z0, scale, N, HW, C, HAS_MAP, CHANNELS_LAST)
        offs += QUARTER
        _apply_part(out_ptr, id_ptr, y_ptr, mask_ptr, map_ptr, offs, z1, scale, N, HW, C, HAS_MAP, CHANNELS_LAST)
        offs += QUARTER
        _apply_part(out_ptr, id_ptr, y_ptr, mask_ptr, map_ptr, offs, z2, scale, N, HW, C, HAS_MAP, CHANNELS_LAST)
        offs += QUARTER
        _apply_part(out_ptr, id_ptr, y_ptr, mask_ptr, map_ptr, offs, z3, scale, N, HW, C, HAS_MAP, CHANNELS_LAST)


def _forward(
    out: torch.Tensor, identity: torch.Tensor, sigma: float, shape_map: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    batch, channels, height, width = out.shape
    n = channels * height * width
    y = torch.empty_like(out)
    mask = torch.empty_like(out, dtype=torch.uint8)
    if batch == 0 or n == 0:
        return y, mask
    splits = triton.cdiv(n, REDUCE_CHUNK)
    partial = torch.empty((batch, splits, 2), device=out.device, dtype=torch.float32)
    _stats_kernel[(batch, splits)](
        out, identity, partial, n, splits, CHUNK=REDUCE_CHUNK, BLOCK=REDUCE_BLOCK, num_warps=REDUCE_WARPS
    )
    seed = torch.randint(0, 2**31 - 1, (1,), device=out.device, dtype=torch.int64)
    if shape_map is not None:
        shape_map = shape_map.reshape(batch, height * width).float().contiguous()
    channels_last = not out.is_contiguous()
    _apply_kernel[(triton.cdiv(n, APPLY_BLOCK), batch)](
        out,
        identity,
        y,
        mask,
        partial,
        shape_map if shape_map is not None else partial,
        seed,
        float(sigma),
        n,
        height * width,
        channels,
        splits,
        SPLITS_P2=max(2, triton.next_power_of_2(splits)),
        BLOCK=APPLY_BLOCK,
        HAS_MAP=shape_map is not None,
        CHANNELS_LAST=channels_last,
        num_warps=APPLY_WARPS,
    )
    return y, mask


@torch.library.custom_op("nsde_ray::residual_noise", mutates_args=())
def _residual_noise_op(
    out: torch.Tensor, identity: torch.Tensor, sigma: float, shape_map: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(out, identity, sigma, shape_map)


@_residual_noise_op.register_fake
def _(out, identity, sigma, shape_map):
    return torch.empty_like(out), torch.empty_like(out, dtype=torch.uint8)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, grad_y, grad_mask):
    (mask,) = ctx.saved_tensors
    grad = grad_y * mask
    return grad, grad, None, None


_residual_noise_op.register_autograd(_backward, setup_context=_setup_context)


def residual_noise(
    out: torch.Tensor, identity: torch.Tensor, sigma: float, shape_map: torch.Tensor | None = None
) -> torch.Tensor:
    """``relu(out + identity) + sigma * std * m * eps`` (std per sample over (C, H, W) of the ReLU output).

    out, identity: (B, C, H, W), same dtype and layout (see :func:`supported`); shape_map: None or
    (B, 1, H, W) on the same device (:class:`nsde_ray.models.BlockNoise` resizes the per-sample maps).
    Returns a tensor like ``out``.
    """
    return _residual_noise_op(out, identity, float(sigma), shape_map)[0]
