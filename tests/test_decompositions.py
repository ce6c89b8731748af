"""Property tests: each backward decomposition of ours against the eager aten op it replaces.

Every case runs the eager kernel (``torch.ops.aten.*_backward``) and our function on the
same arguments, in float64, and compares. Hypothesis draws the window parameters (strides,
padding up to past the kernel's reach, dilation, groups, ceil mode, ``count_include_pad``,
``divisor_override``), odd and even small sizes and batch sizes; runs are derandomized so
CI sees the same examples every time. Further tests check which lowering each convolution
branch puts in the graph, where a decomposition declines (``NotImplemented``), and that a
small network traced symbolically with the table holds no backward op and matches eager
autograd at another batch size.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.proxy_tensor import make_fx
from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

from gradcam_model.graph import decompositions
from gradcam_model.graph.decompositions import StaticShapesRequired, backward_decompositions, is_backward_op

aten = torch.ops.aten
f64 = torch.float64

# Tolerances. float64 eps is 2.2e-16. Each compared element is a sum of at most ~50
# products of O(1) normal values (k_h*k_w*out_channels_per_group <= 4*4*3 for convs,
# a few overlapping windows for pools), summed in another order than the eager kernel:
# a few dozen eps. Measured: at most 7e-15 (relative to 1 + |value|) over ~7,000 cases
# drawn with wider ranges (kernels to 6, strides to 4). 1e-12, absolute and relative,
# leaves a 100x margin, yet sits 4 orders below the ~3e-8 a float32 constant left in
# float64 graphs and 12 below any indexing mistake.
TOL64 = {"rtol": 1e-12, "atol": 1e-12}
# Elementwise formulas (hardswish') differ from the kernel by a couple of roundings of
# O(1) terms: a few eps of the gradient.
TOL64_ELEMENTWISE = {"rtol": 1e-15, "atol": 1e-15}
# float32 runs check dtypes and the float32-specific saturation constant; the
# eager kernels also compute in float32, so differences are a few float32 ulps (1.2e-7)
# of sums of up to ~100 terms.
TOL32 = {"rtol": 1e-5, "atol": 1e-5}


def _settings(n: int):
    # derandomize: the same examples on every run (and no example database), so CI is reproducible
    return settings(max_examples=n, deadline=None, derandomize=True, database=None)


def _randn(shape, seed: int, dtype=f64, channels_last: bool = False) -> torch.Tensor:
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t


def _taken(result):
    """The tensor a decomposition returned; fails the test if it declined."""
    assert result is not NotImplemented, "the decomposition declined a case it should handle"
    return result


def _pair_of(draw, strategy) -> tuple[int, int]:
    return draw(strategy), draw(strategy)


def _min_size(reach: int, pad: int) -> int:
    # smallest input with at least one window: size + 2*pad >= reach + 1
    return max(1, reach + 1 - 2 * pad)


# ---------------------------------------------------------------------------------------
# convolution_backward (input gradient)


class ConvCase(NamedTuple):
    batch: int
    in_channels: int
    out_channels: int
    groups: int
    size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    channels_last: bool = False


@st.composite
def conv_cases(draw, branch: str) -> ConvCase:
    """``branch``: "stride1" (forward conv, flipped kernel), "dense" (strided ConvTranspose),
    "depthwise" (strided, one input channel per group: spread + forward conv)."""
    if branch == "depthwise":
        groups, in_per_group, out_per_group = draw(st.integers(2, 4)), 1, draw(st.integers(1, 3))
    elif branch == "dense":
        groups = draw(st.integers(1, 3))
        in_per_group = draw(st.integers(1 if groups == 1 else 2, 3))
        out_per_group = draw(st.integers(1, 3))
    else:
        groups, in_per_group, out_per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = _pair_of(draw, st.integers(1, 4))
    dilation = _pair_of(draw, st.integers(1, 3))
    if branch == "stride1":
        stride = (1, 1)
    else:
        stride = draw(st.tuples(st.integers(1, 3), st.integers(1, 3)).filter(lambda s: max(s) > 1))
    reach = [dilation[i] * (kernel[i] - 1) for i in range(2)]
    padding = tuple(draw(st.integers(0, reach[i] + 2)) for i in range(2))  # up to 2 past the reach
    size = tuple(
        draw(st.integers(_min_size(reach[i], padding[i]), _min_size(reach[i], padding[i]) + 7)) for i in range(2)
    )
    return ConvCase(
        batch=draw(st.integers(1, 3)),
        in_channels=groups * in_per_group,
        out_channels=groups * out_per_group,
        groups=groups,
        size=size,
        kernel=kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        channels_last=draw(st.booleans()),
    )


def _conv_args(case: ConvCase, seed: int, dtype=f64) -> tuple:
    x = _randn((case.batch, case.in_channels, *case.size), seed, dtype, case.channels_last)
    weight = _randn((case.out_channels, case.in_channels // case.groups, *case.kernel), seed + 1, dtype)
    out = F.conv2d(x, weight, None, case.stride, case.padding, case.dilation, case.groups)
    grad = _randn(out.shape, seed + 2, dtype, case.channels_last)
    s, p, d = list(case.stride), list(case.padding), list(case.dilation)
    return grad, x, weight, [case.out_channels], s, p, d, False, [0, 0], case.groups, [True, False, False]


def _check_conv(case: ConvCase, seed: int, dtype=f64, tol=TOL64) -> None:
    args = _conv_args(case, seed, dtype)
    want, _, _ = aten.convolution_backward.default(*args)
    got, grad_weight, grad_bias = _taken(decompositions.convolution_backward(*args))
    assert grad_weight is None and grad_bias is None
    assert got.dtype == dtype
    torch.testing.assert_close(got, want, **tol)


@_settings(250)
@given(case=conv_cases("stride1"), seed=st.integers(0, 2**16))
@example(  # padding 3 past a 3-wide kernel's reach of 2: the crop path
    case=ConvCase(2, 2, 3, 1, (4, 5), (3, 3), (1, 1), (3, 1), (1, 1)), seed=0
)
def test_conv_stride1_input_grad_matches_eager(case, seed):
    _check_conv(case, seed)


@_settings(250)
@given(case=conv_cases("dense"), seed=st.integers(0, 2**16))
def test_conv_strided_dense_input_grad_matches_eager(case, seed):
    _check_conv(case, seed)


@_settings(250)
@given(case=conv_cases("depthwise"), seed=st.integers(0, 2**16))
@example(  # channel multiplier 2 (out = 2 * in = 2 * groups): the spread path used an unswapped kernel
    case=ConvCase(2, 3, 6, 3, (7, 7), (3, 3), (2, 2), (1, 1), (1, 1)), seed=0
)
def test_conv_strided_depthwise_input_grad_matches_eager(case, seed):
    _check_conv(case, seed)


@st.composite
def transposed_cases(draw) -> tuple[ConvCase, tuple[int, int]]:
    """A ConvTranspose2d (``in_channels`` in, ``out_channels`` out) and its output padding,
    which torch allows below the stride or the dilation."""
    groups, in_per_group, out_per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kernel = _pair_of(draw, st.integers(1, 4))
    dilation = _pair_of(draw, st.integers(1, 3))
    stride = _pair_of(draw, st.integers(1, 3))
    reach = [dilation[i] * (kernel[i] - 1) for i in range(2)]
    padding = tuple(draw(st.integers(0, reach[i])) for i in range(2))
    output_padding = tuple(draw(st.integers(0, max(stride[i], dilation[i]) - 1)) for i in range(2))
    size = _pair_of(draw, st.integers(1, 6))
    # the output, (size - 1) * stride - 2 * padding + reach + output_padding + 1, must have a row
    assume(all((size[i] - 1) * stride[i] - 2 * padding[i] + reach[i] + output_padding[i] >= 0 for i in range(2)))
    case = ConvCase(
        draw(st.integers(1, 3)),
        groups * in_per_group,
        groups * out_per_group,
        groups,
        size,
        kernel,
        stride,
        padding,
        dilation,
        draw(st.booleans()),
    )
    return case, output_padding


def _transposed_args(case: ConvCase, output_padding, seed: int, dtype=f64) -> tuple:
    x = _randn((case.batch, case.in_channels, *case.size), seed, dtype, case.channels_last)
    weight = _randn((case.in_channels, case.out_channels // case.groups, *case.kernel), seed + 1, dtype)
    s, p, d, op = list(case.stride), list(case.padding), list(case.dilation), list(output_padding)
    out = F.conv_transpose2d(x, weight, None, s, p, op, case.groups, d)
    grad = _randn(out.shape, seed + 2, dtype, case.channels_last)
    return grad, x, weight, [case.out_channels], s, p, d, True, op, case.groups, [True, False, False]


@_settings(250)
@given(drawn=transposed_cases(), seed=st.integers(0, 2**16))
@example(  # output padding 2 >= stride 1, allowed by dilation 3: the crop path
    drawn=(ConvCase(2, 2, 3, 1, (4, 5), (3, 2), (1, 1), (1, 0), (3, 1)), (2, 0)), seed=0
)
@example(  # LowFormer's depthwise upsampling: kernel 2s, stride s, padding s // 2
    drawn=(ConvCase(2, 4, 4, 4, (3, 3), (4, 4), (2, 2), (1, 1), (1, 1)), (0, 0)), seed=0
)
def test_transposed_conv_input_grad_matches_eager(drawn, seed):
    args = _transposed_args(*drawn, seed)
    want, _, _ = aten.convolution_backward.default(*args)
    got, grad_weight, grad_bias = _taken(decompositions.convolution_backward(*args))
    assert grad_weight is None and grad_bias is None
    torch.testing.assert_close(got, want, **TOL64)
    assert _convolutions(_ops_in(decompositions.convolution_backward, *args)) == [False]  # a forward convolution


@pytest.mark.parametrize(
    ("stride", "padding", "output_padding", "dilation", "groups"), [(2, 1, 1, 1, 2), (1, 0, 1, 2, 1)]
)
def test_transposed_conv1d_input_grad_matches_eager(stride, padding, output_padding, dilation, groups):
    x, weight = _randn((2, 4, 5), 0), _randn((4, 3, 3), 1)  # ConvTranspose1d(4, 3 * groups, 3)
    out = F.conv_transpose1d(x, weight, None, stride, padding, output_padding, groups, dilation)
    args = (_randn(out.shape, 2), x, weight, [3 * groups], [stride], [padding], [dilation], True)
    args = (*args, [output_padding], groups, [True, False, False])
    want, _, _ = aten.convolution_backward.default(*args)
    torch.testing.assert_close(_taken(decompositions.convolution_backward(*args))[0], want, **TOL64)


@pytest.mark.parametrize(
    "case",
    [
        ConvCase(2, 4, 6, 2, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1), channels_last=True),
        ConvCase(2, 4, 6, 2, (9, 8), (3, 2), (2, 3), (1, 2), (2, 1)),
        ConvCase(2, 4, 8, 4, (9, 8), (5, 5), (2, 2), (2, 2), (1, 1)),
    ],
    ids=["stride1", "dense", "depthwise"],
)
def test_conv_input_grad_float32(case):
    _check_conv(case, 3, torch.float32, TOL32)


def _ops_in(fn, *args) -> list:
    graph = make_fx(fn)(*args).graph
    return [node for node in graph.nodes if node.op == "call_function"]


def _convolutions(nodes) -> list[bool]:
    """The ``transposed`` flag of each convolution in the graph."""
    return [bool(node.args[6]) for node in nodes if node.target is aten.convolution.default]


@pytest.mark.parametrize(
    ("case", "transposed", "uses_matmul"),
    [
        # stride 1: one forward convolution (cheaper than ConvTranspose in ORT), also past the reach
        (ConvCase(2, 4, 6, 2, (9, 8), (3, 3), (1, 1), (1, 1), (1, 1)), [False], False),
        (ConvCase(2, 4, 6, 2, (9, 8), (3, 3), (1, 1), (4, 0), (1, 1)), [False], False),
        # strided dense/grouped: ConvTranspose
        (ConvCase(2, 4, 6, 2, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1)), [True], False),
        # strided depthwise: spread by a product with a constant matrix, then a forward convolution
        (ConvCase(2, 4, 4, 4, (9, 8), (3, 3), (2, 2), (1, 1), (1, 1)), [False], True),
        (ConvCase(2, 4, 8, 4, (9, 8), (3, 3), (2, 2), (4, 1), (1, 1)), [False], True),
    ],
    ids=["stride1", "stride1-past-reach", "dense", "depthwise", "depthwise-multiplier-past-reach"],
)
def test_conv_lowering_branch(case, transposed, uses_matmul):
    nodes = _ops_in(decompositions.convolution_backward, *_conv_args(case, 0))
    assert _convolutions(nodes) == transposed
    assert any(node.target in (aten.mm.default, aten.bmm.default) for node in nodes) == uses_matmul


# ---------------------------------------------------------------------------------------
# max_pool2d_with_indices_backward


class PoolCase(NamedTuple):
    batch: int
    channels: int
    size: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int] | None  # None: the op's default (the kernel), passed as []
    padding: tuple[int, int]
    ceil_mode: bool
    dilation: tuple[int, int] = (1, 1)
    channels_last: bool = False


@st.composite
def pool_cases(draw, *, dilated: bool) -> PoolCase:
    kernel = _pair_of(draw, st.integers(1, 4))
    dilation = _pair_of(draw, st.integers(1, 3)) if dilated else (1, 1)
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, kernel[i] // 2)) for i in range(2))  # torch allows up to half the kernel
    reach = [dilation[i] * (kernel[i] - 1) for i in range(2)]
    size = tuple(
        draw(st.integers(_min_size(reach[i], padding[i]), _min_size(reach[i], padding[i]) + 8)) for i in range(2)
    )
    ceil_mode = draw(st.booleans())
    # A dilated window can fall entirely into the padding (size 1, kernel 2, dilation 2,
    # padding 1). torch's forward then returns an index outside the plane and the eager
    # backward writes out of bounds (the process aborted); models never have such windows.
    assume(
        all(
            _every_window_reads_input(size[i], kernel[i], (stride or kernel)[i], padding[i], dilation[i], ceil_mode)
            for i in range(2)
        )
    )
    return PoolCase(
        batch=draw(st.integers(1, 3)),
        channels=draw(st.integers(1, 3)),
        size=size,
        kernel=kernel,
        stride=stride,
        padding=padding,
        ceil_mode=ceil_mode,
        dilation=dilation,
        channels_last=draw(st.booleans()),
    )


def _every_window_reads_input(n: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> bool:
    out = (n + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= n + p:  # torch drops a last window that starts in the padding
        out -= 1
    return all(any(0 <= i * s - p + d * t < n for t in range(k)) for i in range(out))


def _max_pool_args(case: PoolCase, seed: int, dtype=f64) -> tuple:
    x = _randn((case.batch, case.channels, *case.size), seed, dtype, case.channels_last)
    k, s, p, d = list(case.kernel), list(case.stride or []), list(case.padding), list(case.dilation)
    out, indices = aten.max_pool2d_with_indices.default(x, k, s, p, d, case.ceil_mode)
    grad = _randn(out.shape, seed + 1, dtype, case.channels_last)
    return grad, x, k, s, p, d, case.ceil_mode, indices


@_settings(250)
@given(case=pool_cases(dilated=True), seed=st.integers(0, 2**16))
def test_max_pool_backward_matches_eager(case, seed):
    args = _max_pool_args(case, seed)
    want = aten.max_pool2d_with_indices_backward.default(*args)
    got = _taken(decompositions.max_pool2d_with_indices_backward(*args))
    torch.testing.assert_close(got, want, **TOL64)


# ---------------------------------------------------------------------------------------
# avg_pool2d_backward


class AvgCase(NamedTuple):
    pool: PoolCase
    count_include_pad: bool
    divisor_override: int | None


@st.composite
def avg_cases(draw) -> AvgCase:
    return AvgCase(
        pool=draw(pool_cases(dilated=False)),
        count_include_pad=draw(st.booleans()),
        divisor_override=draw(st.none() | st.integers(1, 7)),
    )


def _avg_pool_args(case: AvgCase, seed: int, dtype=f64) -> tuple:
    pool = case.pool
    x = _randn((pool.batch, pool.channels, *pool.size), seed, dtype, pool.channels_last)
    k, s, p = list(pool.kernel), list(pool.stride or []), list(pool.padding)
    flags = (pool.ceil_mode, case.count_include_pad, case.divisor_override)
    out = aten.avg_pool2d.default(x, k, s, p, *flags)
    grad = _randn(out.shape, seed + 1, dtype, pool.channels_last)
    return grad, x, k, s, p, *flags


@_settings(300)
@given(case=avg_cases(), seed=st.integers(0, 2**16))
# one channel, ceil mode: ConvTranspose cannot express the last window (it reaches past
# the padded input), so the full-then-crop path runs
@example(case=AvgCase(PoolCase(2, 1, (6, 5), (3, 3), (2, 2), (1, 1), True), False, None), seed=0)
# several channels, ceil mode: the depthwise spread path, with a window in the padding
@example(case=AvgCase(PoolCase(2, 3, (6, 5), (3, 2), (2, 2), (1, 1), True), True, None), seed=0)
@example(case=AvgCase(PoolCase(1, 2, (7, 7), (3, 3), (2, 3), (1, 1), True), False, 5), seed=0)
def test_avg_pool_backward_matches_eager(case, seed):
    args = _avg_pool_args(case, seed)
    want = aten.avg_pool2d_backward.default(*args)
    got = _taken(decompositions.avg_pool2d_backward(*args))
    torch.testing.assert_close(got, want, **TOL64)


# ---------------------------------------------------------------------------------------
# _adaptive_avg_pool2d_backward


class AdaptiveCase(NamedTuple):
    batch: int | None  # None: an unbatched [C, H, W] input
    channels: int
    size: tuple[int, int]
    output_size: tuple[int, int]


@st.composite
def adaptive_cases(draw) -> AdaptiveCase:
    size = _pair_of(draw, st.integers(1, 12))
    # output sizes that divide the input, that do not, and that exceed it (windows then repeat)
    output_size = tuple(draw(st.integers(1, size[i] + 3)) for i in range(2))
    return AdaptiveCase(draw(st.none() | st.integers(1, 3)), draw(st.integers(1, 3)), size, output_size)


def _adaptive_args(case: AdaptiveCase, seed: int, dtype=f64) -> tuple:
    lead = (case.channels,) if case.batch is None else (case.batch, case.channels)
    x = _randn((*lead, *case.size), seed, dtype)
    return _randn((*lead, *case.output_size), seed + 1, dtype), x


@_settings(250)
@given(case=adaptive_cases(), seed=st.integers(0, 2**16))
@example(case=AdaptiveCase(2, 3, (7, 5), (1, 1)), seed=0)  # the global-pool shortcut
@example(case=AdaptiveCase(2, 3, (7, 6), (3, 4)), seed=0)  # 1/3-weights: a float32 constant showed at 1e-8
def test_adaptive_avg_pool_backward_matches_eager(case, seed):
    args = _adaptive_args(case, seed)
    want = aten._adaptive_avg_pool2d_backward.default(*args)
    got = _taken(decompositions._adaptive_avg_pool2d_backward(*args))
    torch.testing.assert_close(got, want, **TOL64)


@pytest.mark.parametrize("output_size", [(1, 1), (3, 4)])
def test_pool_backwards_float32(output_size):
    avg = AvgCase(PoolCase(2, 3, (9, 8), (3, 3), (2, 2), (1, 1), True), False, None)
    pairs = [
        (
            decompositions._adaptive_avg_pool2d_backward,
            aten._adaptive_avg_pool2d_backward.default,
            _adaptive_args(AdaptiveCase(2, 3, (7, 6), output_size), 0, torch.float32),
        ),
        (decompositions.avg_pool2d_backward, aten.avg_pool2d_backward.default, _avg_pool_args(avg, 0, torch.float32)),
    ]
    for ours, eager, args in pairs:
        got = _taken(ours(*args))
        assert got.dtype == torch.float32  # constants follow the gradient's dtype (no float64 leaks into graphs)
        torch.testing.assert_close(got, eager(*args), **TOL32)


# ---------------------------------------------------------------------------------------
# elementwise: hardswish_backward, threshold_backward (ReLU's backward)

_HARDSWISH_EDGES = [
    -3.0,
    3.0,
    math.nextafter(3.0, 0.0),
    math.nextafter(-3.0, 0.0),
    math.nextafter(3.0, 4.0),
    -math.inf,
    math.inf,
    0.0,
    -0.0,
    -1.5,
    1e-300,
]


def _values(dtype):
    width = 32 if dtype == torch.float32 else 64
    return st.lists(
        st.sampled_from(_HARDSWISH_EDGES) | st.floats(-5, 5, width=width) | st.floats(allow_nan=False, width=width),
        min_size=1,
        max_size=40,
    )


# NaN inputs are left out on purpose: the eager kernels pass the gradient through at a
# NaN activation (comparisons with NaN are false), ours give NaN (hardswish) or block
# it (threshold). A NaN activation has already made the logits NaN.
@_settings(100)
@given(data=st.data(), dtype=st.sampled_from([f64, torch.float32]))
def test_hardswish_backward_matches_eager(data, dtype):
    x = torch.tensor(data.draw(_values(dtype), label="x"), dtype=dtype)
    grad = torch.tensor(data.draw(st.lists(st.floats(-4, 4, width=32), min_size=len(x), max_size=len(x))), dtype=dtype)
    want = aten.hardswish_backward.default(grad, x)
    got = decompositions.hardswish_backward(grad, x)
    tol = TOL64_ELEMENTWISE if dtype == f64 else {"rtol": 2e-7, "atol": 5e-7}  # float32: a few ulps, as above
    torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("dtype", [f64, torch.float32])
def test_hardswish_backward_on_feature_maps_matches_eager(dtype):
    """[N, C, H, W] activations take the batch-norm form of ``- 1/2`` (kept blocked by ONNX Runtime)."""
    x = _randn((2, 5, 4, 4), 7, dtype) * 4
    edges = torch.tensor(_HARDSWISH_EDGES, dtype=dtype)
    x.view(-1)[: len(edges)] = edges  # the breakpoints, their neighbours and infinities in a feature map
    grad = _randn(x.shape, 8, dtype)
    want = aten.hardswish_backward.default(grad, x)
    got = decompositions.hardswish_backward(grad, x)
    tol = TOL64_ELEMENTWISE if dtype == f64 else {"rtol": 2e-7, "atol": 5e-7}
    torch.testing.assert_close(got, want, **tol)


@_settings(100)
@given(data=st.data(), threshold=st.sampled_from([0.0, -1.0, 2.5]) | st.floats(-3, 3))
def test_threshold_backward_matches_eager_exactly(data, threshold):
    x = data.draw(_values(f64), label="x")
    x = torch.tensor(x + [threshold], dtype=f64)  # the threshold itself blocks the gradient
    grad = _randn(x.shape, len(x))
    want = aten.threshold_backward.default(grad, x, threshold)
    got = decompositions.threshold_backward(grad, x, threshold)
    assert torch.equal(got, want)  # a product with a 0/1 mask: bit-identical (-0.0 == 0.0)


def test_nonfinite_deviations_are_the_documented_ones():
    """Where the Where-free formulas differ from the kernels (see decompositions.py): NaN
    activations and infinite gradients at blocked positions. Pinned so a change shows."""
    nan, inf = math.nan, math.inf
    x, grad = torch.tensor([nan, -4.0, 4.0], dtype=f64), torch.tensor([2.0, inf, 1.0], dtype=f64)
    assert aten.hardswish_backward.default(grad, x).tolist() == [2.0, 0.0, 1.0]
    assert decompositions.hardswish_backward(grad, x)[:2].isnan().all()
    x, grad = torch.tensor([nan, -1.0, 1.0], dtype=f64), torch.tensor([2.0, inf, 3.0], dtype=f64)
    assert aten.threshold_backward.default(grad, x, 0.0).tolist() == [2.0, 0.0, 3.0]
    got = decompositions.threshold_backward(grad, x, 0.0)
    assert got[0] == 0.0 and got[1].isnan() and got[2] == 3.0


# ---------------------------------------------------------------------------------------
# where decompositions decline, and the table


def _unbatched(args: tuple) -> tuple:
    """The same pooling call on the first sample only: [C, H, W] tensors."""
    return tuple(a[0] if isinstance(a, torch.Tensor) else a for a in args)


def _decline_cases() -> dict:
    conv = _conv_args(ConvCase(2, 2, 3, 1, (5, 5), (3, 3), (1, 1), (1, 1), (1, 1)), 0)
    conv_3d = (_randn((1, 3, 2, 2, 2), 2), _randn((1, 2, 4, 4, 4), 0), _randn((3, 2, 3, 3, 3), 1), None)
    pool = PoolCase(1, 2, (6, 6), (2, 2), None, (0, 0), False)
    return {
        # a parameter gradient means parameters required grad while tracing: misuse, left to the builder
        "conv-weight-grad": (decompositions.convolution_backward, (*conv[:-1], [True, True, False])),
        "conv-bias-grad": (decompositions.convolution_backward, (*conv[:-1], [True, False, True])),
        # conv1d is decomposed (CoaT's relative position encoding): tests/test_timm_families.py checks it
        "conv3d": (decompositions.convolution_backward, (*conv_3d, *([[1] * 3] * 3), False, [0] * 3, 1, conv[-1])),
        "max-pool-unbatched": (decompositions.max_pool2d_with_indices_backward, _unbatched(_max_pool_args(pool, 0))),
        "avg-pool-unbatched": (
            decompositions.avg_pool2d_backward,
            _unbatched(_avg_pool_args(AvgCase(pool, True, None), 0)),
        ),
    }


@pytest.mark.parametrize("name", list(_decline_cases()))
def test_decomposition_declines(name):
    fn, args = _decline_cases()[name]
    assert fn(*args) is NotImplemented


def test_conv_without_input_grad_returns_nothing():
    args = _conv_args(ConvCase(2, 2, 3, 1, (5, 5), (3, 3), (2, 2), (1, 1), (1, 1)), 0)
    assert decompositions.convolution_backward(*args[:-1], [False, False, False]) == (None, None, None)


# Each op we register, and the test above that compares it with eager.
TESTED = {
    aten.convolution_backward.default: (
        test_conv_stride1_input_grad_matches_eager,
        test_conv_strided_dense_input_grad_matches_eager,
        test_conv_strided_depthwise_input_grad_matches_eager,
        test_transposed_conv_input_grad_matches_eager,
    ),
    aten.max_pool2d_with_indices_backward.default: test_max_pool_backward_matches_eager,
    aten.avg_pool2d_backward.default: test_avg_pool_backward_matches_eager,
    aten._adaptive_avg_pool2d_backward.default: test_adaptive_avg_pool_backward_matches_eager,
    aten.hardswish_backward.default: test_hardswish_backward_matches_eager,
    aten.threshold_backward.default: test_threshold_backward_matches_eager_exactly,
}


def test_every_decomposition_of_ours_is_tested_and_registered():
    assert set(decompositions._OURS) == set(TESTED)
    table = backward_decompositions()
    assert all(table[op] is fn for op, fn in decompositions._OURS.items())  # ours override torch's
    assert all(is_backward_op(op) for op in table)  # the graph check in capture sees every one


# ---------------------------------------------------------------------------------------
# end to end: autograd traced symbolically with the table


def _trace(fn, example: torch.Tensor, *, dynamic_spatial: bool):
    """make_fx as capture.py calls it: batch dynamic, spatial sizes dynamic only if asked;
    the weights are graph inputs with static shapes (as the model's parameters are there)."""
    dyn, static = DimDynamic.DYNAMIC, DimDynamic.STATIC
    dims = [dyn, static, *([dyn if dynamic_spatial else static] * 2)]
    mode = FakeTensorMode(shape_env=ShapeEnv())
    fake = mode.from_tensor(example, symbolic_context=StatelessSymbolicContext(dynamic_sizes=dims))
    weights = [mode.from_tensor(w, static_shapes=True) for w in _WEIGHTS]
    return make_fx(fn, decomposition_table=backward_decompositions(), tracing_mode="symbolic")(fake, *weights)


def _input_grad(forward):
    def fn(x, *weights):
        leaf = x.detach().requires_grad_(True)
        with torch.enable_grad():
            out = forward(leaf, *weights)
            (grad,) = torch.autograd.grad((out * torch.cos(out)).sum(), leaf)  # a nonuniform output gradient
        return grad

    return fn


_WEIGHTS = (
    _randn((6, 3, 3, 3), 10),  # stem
    _randn((12, 1, 3, 3), 11),  # depthwise, channel multiplier 2
    _randn((5, 12, 2, 2), 12),  # dense
)


def _small_net(x, stem, depthwise, dense):
    h = F.hardswish(F.relu(F.conv2d(x, stem, padding=3)))  # padding past the 3x3 kernel's reach
    h = F.max_pool2d(h, 3, 2, 1, ceil_mode=True)
    h = F.conv2d(h, depthwise, stride=2, padding=1, groups=6)
    h = F.avg_pool2d(F.conv2d(h, dense, stride=2), 2, 2, 1, ceil_mode=True, count_include_pad=False)
    return F.adaptive_avg_pool2d(h, (2, 3))


def _global_net(x, stem, _depthwise, dense):  # stride 1 and a global pool: no size needs to be concrete
    h = F.relu(F.conv2d(x, stem, padding=4, dilation=2))
    h = F.conv2d(h, dense[:, :6], padding="same")  # a 2x2 kernel: torch pads asymmetrically
    return F.adaptive_avg_pool2d(h, 1)


def _backward_ops(gm) -> list[str]:
    return [str(node.target) for node in gm.graph.nodes if node.op == "call_function" and is_backward_op(node.target)]


def test_traced_network_has_no_backward_op_and_matches_eager_at_other_batches():
    fn = _input_grad(_small_net)
    gm = _trace(fn, _randn((2, 3, 23, 21), 0), dynamic_spatial=False)
    assert _backward_ops(gm) == []
    for batch in (1, 5):
        x = _randn((batch, 3, 23, 21), batch)
        torch.testing.assert_close(gm(x, *_WEIGHTS), fn(x, *_WEIGHTS), **TOL64)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")  # torch's note on the extra pad
def test_traced_with_dynamic_spatial_sizes():
    fn = _input_grad(_global_net)
    gm = _trace(fn, _randn((2, 3, 12, 10), 0), dynamic_spatial=True)
    assert _backward_ops(gm) == []
    x = _randn((3, 3, 9, 14), 1)
    torch.testing.assert_close(gm(x, *_WEIGHTS), fn(x, *_WEIGHTS), **TOL64)
    # strided windows and non-global pools need concrete sizes, and say so while tracing
    with pytest.raises(StaticShapesRequired):
        _trace(_input_grad(_small_net), _randn((2, 3, 23, 21), 0), dynamic_spatial=True)
