"""Lower the backward operators that autograd records into plain forward operators.

The table is torch's own decompositions for ``*_backward`` ops, with our versions
of the four that torch leaves alone (or lowers into ops ONNX cannot express).
Constants (pooling matrices, divisor maps) are built with numpy from concrete
sizes, never with index writes inside the trace: those become ``slice_scatter``
ops that ONNX Runtime rejects with a symbolic batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch._decomp
import torch.nn.functional as F
from torch.fx.experimental.symbolic_shapes import is_concrete_int

__all__ = ["StaticShapesRequired", "backward_decompositions", "is_backward_op"]

aten = torch.ops.aten


class StaticShapesRequired(Exception):
    """Raised while tracing when a decomposition needs concrete spatial sizes."""


def is_backward_op(target: object) -> bool:
    """True for an aten op that only autograd would call (``*_backward*``)."""
    return isinstance(target, torch._ops.OpOverload) and "backward" in target.name()


def _static(value, what: str) -> int:
    if isinstance(value, int):
        return value
    if is_concrete_int(value):
        return int(value)
    raise StaticShapesRequired(what)


def _pair(v: Sequence[int] | int, n: int = 2) -> list[int]:
    if isinstance(v, int):
        return [v] * n
    v = list(v)
    return v * n if len(v) == 1 else v


def _transpose_to_input(
    grad: torch.Tensor,
    weight: torch.Tensor,
    in_size: Sequence,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    groups: int,
) -> torch.Tensor:
    """Input gradient of a 2-D sliding-window op given its (forward) kernel ``weight``.

    A stride-1 window becomes a forward convolution with the kernel flipped and its
    in/out channels swapped per group: cheaper than ConvTranspose in ONNX Runtime and
    exact for any input size, so it keeps spatial sizes symbolic. Strided windows use
    ConvTranspose with the output padding that restores the input size; measured
    alternatives (zero-insertion + forward conv) were slower.
    """
    k = [int(s) for s in weight.shape[2:]]
    if all(s == 1 for s in stride):
        # full correlation with the flipped kernel, then crop the original padding
        w = _flipped_transpose(weight, groups)
        pad = [dilation[i] * (k[i] - 1) - padding[i] for i in range(2)]
        if min(pad) >= 0:
            return F.conv2d(grad, w, None, 1, pad, dilation, groups)
        # padding larger than the kernel reach: crop after a zero-padded correlation
        g = F.conv2d(grad, w, None, 1, [max(p, 0) for p in pad], dilation, groups)
        crop = [max(-p, 0) for p in pad]
        return g[:, :, crop[0] : g.shape[2] - crop[0], crop[1] : g.shape[3] - crop[1]]
    out_size = grad.shape[2:]
    output_padding = []
    for i in range(2):
        n_in = _static(in_size[i], "strided window on a dynamic spatial size")
        n_out = _static(out_size[i], "strided window on a dynamic spatial size")
        output_padding.append(n_in - ((n_out - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1) + 1))
    if groups > 1 and weight.shape[1] == 1:
        return _depthwise_strided_to_input(grad, weight, in_size, stride, padding, dilation, groups)
    if all(0 <= op < max(s, d) for op, s, d in zip(output_padding, stride, dilation, strict=True)):
        return F.conv_transpose2d(grad, weight, None, stride, padding, output_padding, groups, dilation)
    # ceil_mode windows can reach past the padded input: build the full result, then crop/pad
    full = F.conv_transpose2d(grad, weight, None, stride, 0, 0, groups, dilation)
    n_in = [int(in_size[0]), int(in_size[1])]
    need = [padding[i] + n_in[i] - full.shape[2 + i] for i in range(2)]
    full = F.pad(full, (0, max(need[1], 0), 0, max(need[0], 0)))
    return full[:, :, padding[0] : padding[0] + n_in[0], padding[1] : padding[1] + n_in[1]]


def _flipped_transpose(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The kernel of the transposed window as a forward one: flipped, in/out channels swapped per group."""
    k = [int(s) for s in weight.shape[2:]]
    out_c, in_c_per_group = weight.shape[0], weight.shape[1]
    w = weight.flip(2, 3).reshape(groups, out_c // groups, in_c_per_group, *k).transpose(1, 2)
    return w.reshape(groups * in_c_per_group, out_c // groups, *k)


def _spread_matrix(n_grad: int, stride: int, before: int, total: int) -> np.ndarray:
    """``[n_grad, total]`` 0/1 matrix putting gradient ``j`` at ``before + j * stride``."""
    m = np.zeros((n_grad, total), dtype=np.float32)
    for j in range(n_grad):
        pos = before + j * stride
        if 0 <= pos < total:
            m[j, pos] = 1.0
    return m


def _depthwise_strided_to_input(grad, weight, in_size, stride, padding, dilation, groups) -> torch.Tensor:
    """Input gradient of a strided depthwise window: spread onto the stride grid, then a forward conv.

    ONNX Runtime's CPU ConvTranspose is slow for grouped kernels: the one strided
    depthwise 5x5 behind MobileNetV3-Large ``features.12`` took 4.5 ms of an 83 ms
    graph (batch 8, 2 threads). Spreading the gradient onto the stride grid, with the
    transposed window's padding around it, and correlating with the flipped kernel
    is the same sum and runs in the fast depthwise Conv (0.7 ms, plus ~1 ms to
    spread). Columns spread with one product by a constant 0/1 matrix (a GEMM);
    rows by padding a 5-D view on a middle axis (a product from the left became a
    slow batched matmul, a pad of the innermost axis of a 6-D view took 7 ms).
    Gradients that land outside the padded input reach no input cell and drop out,
    which also covers ceil-mode pooling windows. Dense strided convs keep
    ConvTranspose, which measured faster than zero insertion there.
    """
    k = [int(s) for s in weight.shape[2:]]
    n_out = [_static(s, "strided window on a dynamic spatial size") for s in grad.shape[2:]]
    n_in = [_static(s, "strided window on a dynamic spatial size") for s in in_size]
    # the correlation reads reach = dilation*(k-1) cells past each end of the input
    reach = [dilation[i] * (k[i] - 1) for i in range(2)]
    total = [n_in[i] + reach[i] for i in range(2)]
    before = [reach[i] - padding[i] for i in range(2)]
    pw = torch.tensor(_spread_matrix(n_out[1], stride[1], before[1], total[1]), dtype=grad.dtype, device=grad.device)
    rows = torch.matmul(grad, pw)  # [n, c, h, W]: columns on the grid, one GEMM
    n, c, h, width = rows.shape
    # rows: append stride-1 zero rows after each row, then shift by `before` and crop to `total`
    rows = F.pad(rows[:, :, :, None, :], (0, 0, 0, stride[0] - 1)).reshape(n, c, h * stride[0], width)
    top, bottom = before[0], total[0] - before[0] - h * stride[0]
    rows = F.pad(rows, (0, 0, max(top, 0), max(bottom, 0)))
    spread = rows[:, :, max(-top, 0) : rows.shape[2] - max(-bottom, 0)]
    # swap in/out channels too: with a channel multiplier m > 1 (out = m * in) the weight
    # is [m*groups, 1, kh, kw] and the spread gradient has m*groups channels; a bare
    # flip was only right for m == 1 (found by tests/test_decompositions.py)
    return F.conv2d(spread, _flipped_transpose(weight, groups), None, 1, 0, dilation, groups)


def convolution_backward(
    grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed, output_padding, groups, output_mask
):
    if weight.dim() not in (3, 4):
        return NotImplemented  # leaves the op in the graph; the builder names it
    if output_mask[1] or output_mask[2]:
        # parameters never require grad while we trace; a weight gradient means misuse
        return NotImplemented
    if weight.dim() == 3:  # Conv1d (CoaT's parallel-block aggregation) as a 1 x L Conv2d
        (grad_input, *_) = convolution_backward(
            grad_output.unsqueeze(2),
            input.unsqueeze(2),
            weight.unsqueeze(2),
            bias_sizes,
            [1, *_pair(stride, 1)],
            [0, *_pair(padding, 1)],
            [1, *_pair(dilation, 1)],
            transposed,
            [0, *_pair(output_padding, 1)],
            groups,
            output_mask,
        )
        return (None if grad_input is None else grad_input.squeeze(2)), None, None
    grad_input = None
    if output_mask[0]:
        window = (_pair(stride), _pair(padding), _pair(dilation))
        if transposed:  # ConvTranspose2d (LowFormer's attention upsampling)
            grad_input = _transposed_to_input(
                grad_output, weight, input.shape[2:], *window, _pair(output_padding), groups
            )
        else:
            grad_input = _transpose_to_input(grad_output, weight, input.shape[2:], *window, groups)
    return grad_input, None, None


def _transposed_to_input(grad, weight, in_size, stride, padding, dilation, output_padding, groups) -> torch.Tensor:
    """Input gradient of a transposed convolution: the forward convolution with the same weight.

    A transposed convolution is the adjoint of that convolution (the weight ``[in, out/groups,
    kh, kw]`` is read as a forward kernel from ``out`` to ``in`` channels), so its own adjoint
    is the convolution itself, with the same stride, padding, dilation and groups. Its output
    is the input's size whenever ``output_padding < stride``; a larger output padding (allowed
    below the dilation) adds rows that reach past the input, cropped here.
    """
    g = F.conv2d(grad, weight, None, stride, padding, dilation, groups)
    if any(op >= s for op, s in zip(output_padding, stride, strict=True)):
        g = g[:, :, : in_size[0], : in_size[1]]
    return g


def max_pool2d_with_indices_backward(grad_output, self, kernel_size, stride, padding, dilation, ceil_mode, indices):
    # indices are flat positions in each (n, c) plane: scatter-add the gradient there
    if self.dim() != 4:
        return NotImplemented
    flat = torch.zeros_like(self).flatten(2)
    return flat.scatter_add(2, indices.flatten(2), grad_output.flatten(2)).view_as(self)


# Weights and divisors are built in float64 and cast to the gradient's dtype: a float32
# 1/3 left float64 graphs off by ~3e-8 (found by tests/test_decompositions.py); for
# float32 graphs the cast rounds to the same values as before.
def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    m = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)
        m[i, start:end] = 1.0 / (end - start)
    return m


def _adaptive_avg_pool2d_backward(grad_output, self):
    out_h, out_w = grad_output.shape[-2:]
    if out_h == 1 and out_w == 1:  # global average pool: any input size
        h, w = self.shape[-2:]
        return grad_output.expand(self.shape) / (h * w)
    h = _static(self.shape[-2], "adaptive average pool to a size other than 1x1")
    w = _static(self.shape[-1], "adaptive average pool to a size other than 1x1")
    ph = torch.tensor(_adaptive_matrix(h, int(out_h)), dtype=grad_output.dtype, device=grad_output.device)
    pw = torch.tensor(_adaptive_matrix(w, int(out_w)), dtype=grad_output.dtype, device=grad_output.device)
    # forward pool is Ph @ x @ Pw^T, so the input gradient is Ph^T @ g @ Pw
    return torch.matmul(torch.matmul(ph.t(), grad_output), pw)


def _avg_pool_divisors(n_in, k, s, p, n_out, count_include_pad) -> np.ndarray:
    div = np.empty(n_out, dtype=np.float64)
    for i in range(n_out):
        start = i * s - p
        end = min(start + k, n_in + p)
        size = end - start
        start, end = max(start, 0), min(end, n_in)
        div[i] = size if count_include_pad else end - start
    return div


def avg_pool2d_backward(
    grad_output, self, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override
):
    if self.dim() != 4:
        return NotImplemented
    k = _pair(kernel_size)
    s = _pair(stride) if stride else k
    p = _pair(padding)
    n_in = [_static(x, "average pool on a dynamic spatial size") for x in self.shape[-2:]]
    n_out = [int(x) for x in grad_output.shape[-2:]]
    if divisor_override:
        div = np.full(n_out, float(divisor_override))
    else:
        dh = _avg_pool_divisors(n_in[0], k[0], s[0], p[0], n_out[0], count_include_pad)
        dw = _avg_pool_divisors(n_in[1], k[1], s[1], p[1], n_out[1], count_include_pad)
        div = np.outer(dh, dw)
    inv = torch.tensor(1.0 / div, dtype=grad_output.dtype, device=grad_output.device)
    channels = self.shape[1]
    ones = torch.ones((channels, 1, k[0], k[1]), dtype=grad_output.dtype, device=grad_output.device)
    return _transpose_to_input(grad_output * inv, ones, self.shape[-2:], s, p, [1, 1], channels)


# Elementwise backward ops without Where: in ONNX Runtime's CPU provider Where (and
# Sign) cost 3-4x a Mul, and MobileNetV3's backward is mostly these ops. Measured on
# one [8, 672, 14, 14] tensor, 2 threads: hardswish' 3.2 ms (torch's decomposition,
# two Where) -> 1.7 ms; ReLU's 1.5 ms -> 0.9 ms.
_SATURATE = 2.0**100  # any nonzero float32 gap times this is >= 1: a step from a clamp


def hardswish_backward(grad_output, self):
    # h'(x) = hardsigmoid(x) + x/6 inside (-3, 3): x/3 + 1/2 there, 0 from -3 down, 1 from
    # 3 up (the eager kernel's values at the boundaries too). Inside, x/6 = hardsigmoid(x) - 1/2,
    # a finite value (an infinite activation cannot turn 0 * inf into NaN). The indicator of
    # (-3, 3) is a clamp of (9 - x^2) * 2^100, exact: x^2 < 9 exactly when |x| < 3 (rounding
    # keeps (3 - ulp)^2 below 9), the difference near 9 is computed exactly, and its smallest
    # nonzero value times 2^100 is far above 1. Every op here is one that ONNX Runtime's
    # blocked (NCHWc) layout keeps: HardSigmoid, products and sums of two same-shape
    # tensors, a per-channel BatchNormalization for the -1/2, and the clamp, which the ONNX
    # export turns into one HardSigmoid (gradcam_model.export.onnx_backward); a constant
    # Sub/Mul/Abs/Clip chain cost two layout round trips per activation. Unlike the kernel,
    # a NaN activation gives NaN (the kernel passes the gradient) and an infinite gradient
    # below -3 gives NaN (the kernel gives 0).
    hardsigmoid = F.hardsigmoid(self)
    inside = torch.clamp(self * self * -_SATURATE + 9.0 * _SATURATE, 0.0, 1.0)
    return grad_output * (hardsigmoid + _minus_half(hardsigmoid) * inside)


def _minus_half(x: torch.Tensor) -> torch.Tensor:
    """``x - 1/2``; on [N, C, H, W] tensors as an eval-mode batch norm (exact: mean 0, variance 1,
    eps 0), which ONNX Runtime runs in its blocked layout (other ranks have no blocked layout)."""
    if x.dim() != 4 or not is_concrete_int(x.shape[1]):
        return x - 0.5
    channels = int(x.shape[1])

    def constant(value: float) -> torch.Tensor:
        return torch.tensor(np.full(channels, value), dtype=x.dtype, device=x.device)

    return F.batch_norm(x, constant(0.0), constant(1.0), constant(1.0), constant(-0.5), False, 0.0, 0.0)


def threshold_backward(grad_output, self, threshold):
    # ReLU's backward: the gradient where the input (or output) is above the threshold.
    # A product with the mask instead of torch's Where (see above); the differences: a
    # NaN or infinite gradient at a blocked position stays NaN, and a NaN input blocks
    # the gradient (the kernel passes it). The ONNX export writes the float32 mask of a
    # ReLU output as Sign (gradcam_model.export.onnx_backward).
    return grad_output * (self > threshold).to(grad_output.dtype)


_OURS: dict[torch._ops.OpOverload, Callable] = {
    aten.hardswish_backward.default: hardswish_backward,
    aten.threshold_backward.default: threshold_backward,
    aten.convolution_backward.default: convolution_backward,
    aten.max_pool2d_with_indices_backward.default: max_pool2d_with_indices_backward,
    aten._adaptive_avg_pool2d_backward.default: _adaptive_avg_pool2d_backward,
    aten.avg_pool2d_backward.default: avg_pool2d_backward,
}


def backward_decompositions() -> dict[torch._ops.OpOverload, Callable]:
    """Torch's decompositions of backward ops, overridden by ours."""
    table = {op: fn for op, fn in torch._decomp.decomposition_table.items() if is_backward_op(op)}
    table.update(_OURS)
    return table
