"""GradCAMModel: one graph of forward ops equals the live-autograd reference and pytorch-grad-cam."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import VARIANTS, zoo_images, zoo_model, zoo_params, zoo_wrapper
from oracle import ORACLE, oracle_cam
from torch import nn
from zoo import CASES

from gradcam_model import (
    METHODS,
    CAMMethod,
    GradCAMModel,
    InputError,
    LayerError,
    MethodError,
    ModelOutputError,
    UnsupportedOperatorError,
    reference_cam,
)
from gradcam_model.graph.decompositions import is_backward_op
from gradcam_model.graph.methods import get_method, postprocess

CAM_ATOL = 1e-4
LOGITS_ATOL = 1e-5

# pytorch-grad-cam stores the target layer's output by reference; DenseNet's forward
# then applies F.relu(inplace=True) to it, so the oracle sees post-ReLU activations
# for `features` (a known oracle bug). Our reference is checked there instead.
ORACLE_INPLACE_BUG = {("densenet121", "last")}


def _not_flat(cam: torch.Tensor, min_fraction: float = 1.0) -> None:
    """A comparison of flat maps proves nothing: require real structure in the maps.

    A map can legitimately be all zero (every weighted channel sum negative before
    the ReLU), so callers comparing several maps may accept a few flat ones.
    """
    flat = cam.flatten(2)
    structured = (flat.amax(-1) - flat.amin(-1) > 0.5).float().mean()
    assert float(structured) >= min_fraction, f"only {float(structured):.0%} of the compared maps have structure"


def _reference_args(arch, which, images, wrapper):
    classes = None
    if wrapper.class_input:
        classes = torch.arange(images.shape[0]) % wrapper.num_classes
        classes[0] = -1
    return classes


@pytest.mark.parametrize(("arch", "which"), zoo_params())
def test_zoo_matches_reference_and_oracle(arch, which):
    wrapper = zoo_wrapper(arch, which)
    model = zoo_model(arch)
    maps = []
    for batch in (1, 3):  # the wrapper was built from a batch-1 example
        images = zoo_images(arch, batch, seed=batch)
        classes = _reference_args(arch, which, images, wrapper)
        with torch.inference_mode():
            got = wrapper(images, classes) if wrapper.class_input else wrapper(images)
        want = reference_cam(
            model, wrapper.target_layer, images, classes, wrapper.method, top_k=wrapper.top_k, return_all=True
        )
        k = 1 if wrapper.class_input else VARIANTS[which]["top_k"]
        assert got[4].shape == (batch, k, *images.shape[2:])
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=LOGITS_ATOL)
        assert torch.equal(got[2], want[2])
        torch.testing.assert_close(got[4], want[4], rtol=0, atol=CAM_ATOL)
        maps.append(want[4].flatten(0, 1))
        if (arch, which) in ORACLE_INPLACE_BUG:
            continue
        oracle = oracle_cam(model, wrapper.target_layer, images, got[2][:, 0], wrapper.method)
        np.testing.assert_allclose(got[4][:, 0].numpy(), oracle, rtol=0, atol=CAM_ATOL)
    _not_flat(torch.cat(maps)[:, None], min_fraction=0.5)


class AllMethods(CAMMethod):
    """Every gradient method side by side along the width: one trace checks them all."""

    name = "all"
    methods = [get_method(name) for name in ORACLE]

    def saliency(self, activations, gradients):
        return torch.cat([m.saliency(activations, gradients) for m in self.methods], dim=-1)


def _float32_noise(model, layer: str, images: torch.Tensor, method: str, mapped: torch.Tensor) -> float:
    """Max |float32 - float64| of the normalized maps: the allowance ``validate`` gives a map (twice this).

    XGrad-CAM divides by sum(A) per channel, which is near 0 for some channels of a layer
    that is not ReLU'd (densenet121 ``features.denseblock3``): two float32 computations in
    different orders (pytorch-grad-cam's, ours; oneDNN picks its kernels by thread count)
    then differ by more than 1e-4, and so does each from float64.
    """
    model64 = copy.deepcopy(model).double()
    raw64 = reference_cam(model64, layer, images.double(), method=method, upsample=False, normalize=False)
    mapped64 = postprocess(raw64, images.shape[-2:], normalize=True)
    return float((mapped.double() - mapped64).abs().max())


@pytest.mark.parametrize(("arch", "which"), zoo_params())
def test_zoo_every_method(arch, which):
    case = CASES[arch]
    layer = case.last if which == "last" else case.inner
    model = zoo_model(arch)
    wrapper = GradCAMModel(
        model, layer, method=AllMethods(), example_input=zoo_images(arch, 1), upsample=False, normalize=False
    )
    images = zoo_images(arch, 3, seed=5)
    with torch.inference_mode():
        logits, _, classes, _, raw = wrapper(images)
    width = raw.shape[-1] // len(ORACLE)
    scales = {}
    for i, method in enumerate(ORACLE):
        ours = raw[..., i * width : (i + 1) * width]
        want = reference_cam(model, layer, images, method=method, upsample=False, normalize=False)
        scales[method] = scale = float(want.abs().max())
        torch.testing.assert_close(ours, want, rtol=1e-4, atol=CAM_ATOL * max(scale, 1e-3))
        if (arch, which) in ORACLE_INPLACE_BUG or scale <= 1e-3:
            # a (near-)zero map (e.g. HiResCAM on convnext_tiny features.5: 2e-6) matched above;
            # pytorch-grad-cam's 1e-7 eps would decide its normalization, so no oracle there
            continue
        mapped = postprocess(ours, images.shape[-2:], normalize=True)
        _not_flat(mapped, min_fraction=0.5)
        oracle = oracle_cam(model, layer, images, classes[:, 0], method)
        atol = CAM_ATOL
        if np.abs(mapped[:, 0].numpy() - oracle).max() > atol:
            atol = max(atol, 2 * _float32_noise(model, layer, images, method, mapped))
        np.testing.assert_allclose(mapped[:, 0].numpy(), oracle, rtol=0, atol=atol, err_msg=method)
    faint = [m for m, v in scales.items() if v <= 1e-3]
    assert len(faint) <= 2, f"too many methods with faint maps to prove anything: {faint}"


# the input-gradient methods (fullgrad, guided-*) have their own oracle tests: tests/test_fullgrad_guided.py
@pytest.mark.parametrize("method", sorted(set(METHODS) - {"cam", "fullgrad", "guided-backprop", "guided-gradcam"}))
def test_each_named_method_full_pipeline(resnet18, method):
    """Each method by name, with upsampling and normalization, across strided convolutions."""
    wrapper = GradCAMModel(resnet18, "layer2", method=method, example_input=torch.randn(2, 3, 64, 64))
    assert wrapper.method == method
    images = zoo_images("resnet18", 4, seed=11)
    with torch.inference_mode():
        got = wrapper(images)
    want = reference_cam(resnet18, "layer2", images, method=method)
    _not_flat(want)
    torch.testing.assert_close(got[4], want, rtol=0, atol=CAM_ATOL)
    oracle = oracle_cam(resnet18, "layer2", images, got[2][:, 0], method)
    np.testing.assert_allclose(got[4][:, 0].numpy(), oracle, rtol=0, atol=CAM_ATOL)


def test_cam_method_uses_linear_head_weights(resnet18):
    """CAM's weights are W[c, k] of the final Linear (computed here from the weights)."""
    wrapper = GradCAMModel(resnet18, "layer4", method="cam", example_input=torch.randn(1, 3, 64, 64), normalize=False)
    images = zoo_images("resnet18", 2, seed=3)
    with torch.inference_mode():
        _, _, classes, _, cam = wrapper(images)
    feats = {}
    handle = resnet18.layer4.register_forward_hook(lambda m, i, o: feats.__setitem__("a", o))
    with torch.no_grad():
        resnet18(images)
    handle.remove()
    weights = resnet18.fc.weight.detach()[classes[:, 0].clone()]  # [N, C]
    manual = torch.relu((weights[:, :, None, None] * feats["a"]).sum(1))
    manual = F.interpolate(manual[:, None], size=(64, 64), mode="bilinear", align_corners=False)
    assert float(manual.max()) > 1e-2
    torch.testing.assert_close(cam, manual, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("arch", "layer", "match"),
    [
        ("mobilenet_v3_large", "features", "takes 1280 features, the layer has 960 channels"),
        ("densenet121", "features", "global average pool"),  # F.relu sits between
        ("resnet18", "layer3", "takes 512 features"),
    ],
)
def test_cam_method_refuses_other_heads(arch, layer, match):
    with pytest.raises(MethodError, match=match):
        GradCAMModel(zoo_model(arch), layer, method="cam", example_input=zoo_images(arch, 1))


def test_graph_is_forward_ops_only_and_runs_in_inference_mode(resnet18_layer2):
    graph = resnet18_layer2.graph.graph
    targets = [n.target for n in graph.nodes if n.op == "call_function"]
    assert not [t for t in targets if is_backward_op(t)]
    assert not [t for t in targets if "autograd" in str(t) or "grad" in getattr(t, "__name__", "")]
    # the backward really is in there: the head's rows W[c] and transposed convolutions
    names = {str(t) for t in targets}
    assert "aten.index_select.default" in names
    convolution = torch.ops.aten.convolution.default
    assert any(n.args[6] for n in graph.nodes if n.target is convolution)  # the strided convs' input gradients
    with torch.inference_mode():
        out = resnet18_layer2(torch.randn(2, 3, 64, 64))
    assert all(o.is_inference() for o in out)


def test_batch_one_example_keeps_batch_dynamic(resnet18_layer2, resnet18):
    for batch in (1, 2, 5):
        images = zoo_images("resnet18", batch, seed=batch)
        with torch.inference_mode():
            cam = resnet18_layer2(images)[4]
        torch.testing.assert_close(cam, reference_cam(resnet18, "layer2", images), rtol=0, atol=CAM_ATOL)


def test_spatial_size_dynamic_for_global_pool_head(resnet18_layer4, resnet18):
    assert resnet18_layer4.dynamic_spatial and resnet18_layer4.input_size is None
    images = torch.randn(2, 3, 64, 128)
    with torch.inference_mode():
        cam = resnet18_layer4(images)[4]
    assert cam.shape == (2, 1, 64, 128)
    torch.testing.assert_close(cam, reference_cam(resnet18, "layer4", images), rtol=0, atol=CAM_ATOL)


def test_spatial_size_fixed_and_enforced_where_baked(resnet18_layer2, resnet18_layer4):
    assert resnet18_layer2.input_size == (64, 64)
    with pytest.raises(InputError, match="64x64"):
        resnet18_layer2(torch.randn(1, 3, 96, 96))
    # the one line `gradcam export` prints: which backward op made the sizes static, and why
    assert resnet18_layer2.fixed_size_reason == (
        "the gradient of convolution_backward needs concrete sizes (strided window on a dynamic spatial size)"
    )
    assert resnet18_layer4.fixed_size_reason is None


class _FlattenHead(nn.Module):
    """A conv and a Linear over the flattened map: its input size is baked into the Linear's width."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_spatial_size_fixed_when_the_dynamic_graph_fails_at_another_size(caplog):
    torch.manual_seed(0)
    model = _FlattenHead().eval()
    with caplog.at_level("INFO", logger="gradcam_model.graph.wrapper"):
        wrapper = GradCAMModel(model, "conv", example_input=torch.randn(1, 3, 8, 8))
    assert wrapper.input_size == (8, 8)
    reason = wrapper.fixed_size_reason
    assert reason.startswith("the graph traced with a symbolic size failed at 41x25 (") and "shape" in reason, reason
    assert f"height/width fixed at 8x8: {reason}" in caplog.messages
    images = torch.randn(3, 3, 8, 8)
    with torch.inference_mode():
        cam = wrapper(images)[4]
    torch.testing.assert_close(cam, reference_cam(model, "conv", images), rtol=0, atol=CAM_ATOL)


def test_model_state_is_left_unchanged():
    model = zoo_model("resnet18")
    model = copy.deepcopy(model)
    model.train()
    model.layer1.eval()
    model.fc.weight.requires_grad_(False)
    calls = []
    handle = model.layer3.register_forward_hook(lambda *a: calls.append(1))
    flags = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.state_dict().items()}
    hooks = {n: len(m._forward_hooks) for n, m in model.named_modules()}
    wrapper = GradCAMModel(model, "layer4", example_input=torch.randn(1, 3, 64, 64))
    images = torch.randn(2, 3, 64, 64)
    reference_cam(model, "layer4", images)
    assert flags == {n: m.training for n, m in model.named_modules()}
    assert grads == {n: p.requires_grad for n, p in model.named_parameters()}
    assert hooks == {n: len(m._forward_hooks) for n, m in model.named_modules()}
    for name, value in model.state_dict().items():  # BatchNorm statistics included
        assert torch.equal(value, params[name]), name
    handle.remove()
    # explained in eval mode although the model was in train mode: deterministic and
    # equal to the eval-mode model's result
    model.eval()
    with torch.inference_mode():
        a, b = wrapper(images)[4], wrapper(images)[4]
    assert torch.equal(a, b)
    torch.testing.assert_close(a, reference_cam(model, "layer4", images), rtol=0, atol=CAM_ATOL)


def test_inplace_relu_right_after_conv_target():
    """VGG: features.28 is a conv followed by ReLU(inplace=True)."""
    model = zoo_model("vgg16")
    images = zoo_images("vgg16", 2, seed=4)
    wrapper = GradCAMModel(model, "features.28", example_input=images[:1])
    with torch.inference_mode():
        got = wrapper(images)
    want = reference_cam(model, "features.28", images)
    _not_flat(want)
    torch.testing.assert_close(got[4], want, rtol=0, atol=CAM_ATOL)
    # the oracle is right on a copy without in-place ReLUs
    clean = copy.deepcopy(model)
    for m in clean.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    oracle = oracle_cam(clean, "features.28", images, got[2][:, 0], "gradcam")
    np.testing.assert_allclose(got[4][:, 0].numpy(), oracle, rtol=0, atol=CAM_ATOL)


@pytest.mark.parametrize("method", sorted(m for m, cls in METHODS.items() if cls.uses_gradients))  # not EigenCAM
def test_zero_gradient_gives_zero_map_not_nan(method):
    model = copy.deepcopy(zoo_model("resnet18"))
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.arange(10.0))
    wrapper = GradCAMModel(model, "layer4", method=method, example_input=torch.randn(1, 3, 64, 64))
    with torch.inference_mode():
        out = wrapper(torch.randn(3, 3, 64, 64))
    assert all(bool(torch.isfinite(o.float()).all()) for o in out)
    assert bool((out[4] == 0).all())
    assert bool((out[2] == 9).all())


def test_class_input_and_top_k(resnet18):
    wrapper = GradCAMModel(resnet18, "layer4", example_input=torch.randn(1, 3, 64, 64), class_input=True)
    images = zoo_images("resnet18", 3, seed=9)
    with torch.inference_mode():
        logits, probs, classes, score, cam = wrapper(images, torch.tensor([-1, 4, 7]))
    assert classes[:, 0].tolist() == [int(logits[0].argmax()), 4, 7]
    torch.testing.assert_close(score[:, 0], probs.gather(1, classes)[:, 0])
    torch.testing.assert_close(probs, torch.softmax(logits, 1))
    with torch.inference_mode():
        top = GradCAMModel(resnet18, "layer4", example_input=images[:1], top_k=3)(images)
    assert torch.equal(top[2], top[0].topk(3, 1).indices)
    assert top[4].shape == (3, 3, 64, 64)
    want = reference_cam(resnet18, "layer4", images, top[2][:, 1].clone())
    torch.testing.assert_close(top[4][:, 1:2], want, atol=CAM_ATOL, rtol=0)


class _Branchy(nn.Module):
    """Has a layer that never reaches the logits, one returning a tuple, and a reused one."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.side = nn.Conv2d(8, 8, 3, padding=1)
        self.pair = _Pair()
        self.shared = nn.ReLU()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        x = self.shared(self.stem(x))
        _unused = self.side(x)
        x, _ = self.pair(x)
        x = self.shared(x)
        return self.head(x.mean((2, 3)))


class _Pair(nn.Module):
    def forward(self, x):
        return x, x


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return {"logits": self.body(x).mean((2, 3))}


class _GridSampleHead(nn.Module):
    """grid_sample's backward has no decomposition to forward ops."""

    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        a = self.body(x)
        theta = torch.tensor([[0.9, 0.1, 0.0], [0.0, 0.9, 0.0]]).expand(x.shape[0], 2, 3)
        grid = F.affine_grid(theta, list(a.shape), align_corners=False)
        return self.head(F.grid_sample(a, grid, align_corners=False).mean((2, 3)))


@pytest.mark.parametrize(
    ("model", "layer", "error", "match"),
    [
        (_Branchy(), "side", LayerError, "no gradient path"),
        (_Branchy(), "pair", LayerError, "gives a tuple; a target layer must give one"),
        (_Branchy(), "shared", LayerError, "ran 2 times"),
        (_Branchy(), "stme", Exception, "'stem'"),
        (_DictOut(), "body", ModelOutputError, "returned dict"),
        (_GridSampleHead(), "body", UnsupportedOperatorError, "'body' uses operator aten.grid_sampler_2d_backward"),
    ],
)
def test_layer_and_model_errors(model, layer, error, match):
    with pytest.raises(error, match=match):
        GradCAMModel(model, layer, example_input=torch.randn(1, 3, 16, 16))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "gradcam+++"}, MethodError, "unknown method 'gradcam\\+\\+\\+'"),
        ({"top_k": 0}, ValueError, "top_k must be a positive int"),
        ({"top_k": 11}, ValueError, "exceeds the model's 10 classes"),
        ({"top_k": 2, "class_input": True}, ValueError, "use top_k=1"),
        ({"example_input": torch.randn(3, 64, 64)}, InputError, "N, C, H, W"),
        ({"example_input": torch.zeros(1, 3, 64, 64, dtype=torch.uint8)}, InputError, "floating-point"),
        ({"class_names": ["a", "b"]}, ValueError, "2 entries but the model has 10"),
        ({"std": (1.0, 0.0, 1.0)}, ValueError, "std must be positive"),
    ],
)
def test_bad_arguments(resnet18, kwargs, error, match):
    kwargs = {"example_input": torch.randn(1, 3, 64, 64), **kwargs}
    with pytest.raises(error, match=match):
        GradCAMModel(resnet18, "layer4", **kwargs)


@pytest.mark.parametrize(
    ("images", "classes", "match"),
    [
        (torch.randn(2, 3, 64, 64), torch.tensor([0, 10]), "class_index\\[1\\] = 10 is out of range"),
        (torch.randn(2, 3, 64, 64), torch.tensor([-2, 1]), "class_index\\[0\\] = -2"),
        (torch.randn(2, 3, 64, 64), torch.tensor([1, 2, 3]), "shape \\[2\\]"),
        (torch.randn(2, 3, 64, 64), torch.tensor([0.5, 1.0]), "integers"),
        (torch.randn(2, 1, 64, 64), torch.tensor([0, 1]), "3 channels"),
        (torch.randn(0, 3, 64, 64), torch.tensor([], dtype=torch.long), "empty batch"),
    ],
)
def test_bad_forward_inputs(resnet18, images, classes, match):
    wrapper = _class_input_wrapper(resnet18)
    with pytest.raises(InputError, match=match):
        wrapper(images, classes)


_CLASS_INPUT = {}


def _class_input_wrapper(model):
    if "w" not in _CLASS_INPUT:
        _CLASS_INPUT["w"] = GradCAMModel(model, "layer4", example_input=torch.randn(1, 3, 64, 64), class_input=True)
    return _CLASS_INPUT["w"]


def test_graph_takes_device_from_its_input():
    """No factory op keeps the trace's device, and constants are buffers that .to() moves:
    the same graph (and its TorchScript export) runs on whatever device the image is on."""
    wrapper = GradCAMModel(zoo_model("vgg16"), "features.16", example_input=torch.randn(1, 3, 64, 64))
    nodes = list(wrapper.graph.graph.nodes)
    devices = [n.kwargs["device"] for n in nodes if n.op == "call_function" and "device" in n.kwargs]
    assert devices, "expected factory ops in the backward (zeros for max-pool scatter)"
    assert all(getattr(d, "target", None) is torch.ops.prim.device for d in devices)
    buffers = {name for name, _ in wrapper.graph.named_buffers()}
    constants = [n.target for n in nodes if n.op == "get_attr"]
    assert any(c.startswith("_tensor_constant") for c in constants)  # adaptive-pool matrices
    assert set(constants) <= buffers
