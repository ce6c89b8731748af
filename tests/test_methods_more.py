"""RandomCAM, FinerCAM, AblationCAM and ``+aug-smooth`` against pytorch-grad-cam's own classes.

Maps are compared after min-max normalization (pytorch-grad-cam's aug_smooth mean is not
rescaled; ours is, as the contract says), classes must be identical. The oracle runs
through hooks and a live backward pass; ours through ``reference_cam`` (the eager path of
the graph's code) on several architectures and layers, and through the graph itself and its
ONNX / TorchScript artifacts on one.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from oracle import more_oracle
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

import gradcam_model as gc
from gradcam_model.checks.calibration import random_model
from gradcam_model.graph import methods_extra
from gradcam_model.graph._dce import eliminate_dead_writes
from gradcam_model.graph.methods import METHODS, get_method
from gradcam_model.graph.methods_extra import RandomCAM
from gradcam_model.runtime import load_explainer

CAM_ATOL = 1e-4
SIZE = 64
# (architecture, layer, pytorch-grad-cam AblationCAM batch_size): 32 (its default) where the
# layer's minimum is 0; 1 where it is not (its batches of 32 compound the ablation value)
CASES = [
    ("resnet18", "layer4", 32),
    ("resnet18", "layer3.0.conv1", 1),  # a conv output: negative values, inside a residual block
    ("mobilenet_v2", "features.13", 1),  # an inverted residual's output (no final activation)
    ("timm:resnet10t", "layer4", 32),
]
_MODELS: dict[str, torch.nn.Module] = {}


def _model(arch: str) -> torch.nn.Module:
    if arch not in _MODELS:
        _MODELS[arch] = random_model(arch, size=SIZE, num_classes=6)
    return _MODELS[arch]


def _images(seed: int, n: int = 2, size: int = SIZE) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _norm(maps: np.ndarray) -> np.ndarray:
    lo = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - lo
    return np.where(span > 0, (maps - lo) / np.where(span > 0, span, 1), 0)


def _ours(model, layer, images, method, **options):
    logits, _, classes, _, cam = gc.reference_cam(model, layer, images, method=method, return_all=True, **options)
    return logits.numpy(), classes.numpy(), cam.numpy()


def _close(ours: np.ndarray, oracle: np.ndarray, structure: float = 0.5) -> None:
    assert float(np.ptp(oracle)) > structure  # maps with structure (a mean of 6 maps has less)
    np.testing.assert_allclose(ours, _norm(oracle), rtol=0, atol=CAM_ATOL)


def _fixed_draws(monkeypatch, weights: np.ndarray) -> None:
    """pytorch-grad-cam's RandomCAM draws ``np.random.uniform(-1, 1, (N, C))``: hand it ours per image."""
    monkeypatch.setattr(np.random, "uniform", lambda low, high, size: np.tile(weights, (size[0], 1)))


@pytest.mark.parametrize(("arch", "layer", "_bs"), CASES)
def test_randomcam_equals_pytorch_grad_cams_with_our_draws(arch, layer, _bs, monkeypatch):
    model, images = _model(arch), _images(1)
    _, classes, cam = _ours(model, layer, images, "randomcam+seed-4")
    weights = RandomCAM(seed=4).channel_weights(_channels(model, layer))
    _fixed_draws(monkeypatch, weights)
    _close(cam[:, 0], more_oracle(model, layer, images, classes[:, 0], "randomcam"))
    other = _ours(model, layer, images, "randomcam")[2]  # seed 0: other weights, another map
    assert np.abs(other - cam).max() > 0.05


def _channels(model, layer: str) -> int:
    out = []
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, o: out.append(o.shape[1]))
    with torch.no_grad():
        model(_images(0, 1))
    handle.remove()
    return out[0]


@pytest.mark.parametrize(("arch", "layer", "_bs"), CASES)
def test_finercam_equals_pytorch_grad_cams(arch, layer, _bs):
    model, images = _model(arch), _images(2)
    logits, classes, cam = _ours(model, layer, images, "finercam")
    assert (classes[:, 0] == logits.argmax(1)).all()
    _close(cam[:, 0], more_oracle(model, layer, images, None, "finercam"))  # its own choice: the top class
    plain = _ours(model, layer, images, "gradcam")[2]
    assert np.abs(plain - cam).max() > 0.05  # the comparison classes change the map


def test_finercam_second_class_against_its_own_nearest_classes():
    model, images = _model("resnet18"), _images(3)
    _, classes, cam = _ours(model, "layer4", images, "finercam", top_k=2)
    for i in range(len(images)):  # pytorch-grad-cam's target_idx is one class for the whole batch
        oracle = more_oracle(model, "layer4", images[i : i + 1], None, "finercam", target_idx=int(classes[i, 1]))
        _close(cam[i : i + 1, 1], oracle)


@pytest.mark.parametrize(("arch", "layer", "batch_size"), CASES)
def test_ablationcam_equals_pytorch_grad_cams(arch, layer, batch_size):
    model, images = _model(arch), _images(4)
    _, classes, cam = _ours(model, layer, images, "ablationcam")
    oracle = more_oracle(model, layer, images, classes[:, 0], "ablationcam", batch_size=batch_size)
    _close(cam[:, 0], oracle)


@pytest.mark.parametrize(("arch", "layer", "_bs"), CASES)
def test_aug_smooth_equals_pytorch_grad_cams(arch, layer, _bs):
    """Without targets, each of pytorch-grad-cam's 6 passes explains its own top class."""
    model, images = _model(arch), _images(5)
    _, classes, cam = _ours(model, layer, images, "gradcam+aug-smooth")
    with torch.no_grad():
        assert (classes[:, 0] == model(images).argmax(1).numpy()).all()  # the image's own (pass 0)
    with GradCAM(model, [dict(model.named_modules())[layer]]) as oracle:
        expected = oracle(images, targets=None, aug_smooth=True)
    _close(cam[:, 0], expected, structure=0.2)
    assert np.abs(_ours(model, layer, images, "gradcam")[2] - cam).max() > 0.05


@pytest.mark.parametrize("method", ["ablationcam", "randomcam", "layercam+eigen-smooth"])
def test_aug_smooth_of_a_given_class_and_of_other_methods(method, monkeypatch):
    """A given class is explained in every pass; ``+aug-smooth`` combines with any method but FinerCAM."""
    model, images, layer = _model("timm:resnet10t"), _images(6), "layer4"
    given = torch.tensor([3, 0])
    if method == "ablationcam":  # pytorch-grad-cam: 6 passes of 512 channels per image
        images, given, layer = images[:1], given[:1], "layer2"
    _, classes, cam = _ours(model, layer, images, f"{method}+aug-smooth", class_index=given)
    assert (classes[:, 0] == given.numpy()).all()
    if method == "randomcam":
        _fixed_draws(monkeypatch, RandomCAM().channel_weights(_channels(model, layer)))
    if method.startswith("layercam"):
        from pytorch_grad_cam import LayerCAM, layer_cam
        from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction

        monkeypatch.setattr(layer_cam, "get_2d_projection", get_2d_projection_with_sign_correction)  # our sign
        with LayerCAM(model, [dict(model.named_modules())[layer]]) as oracle:
            expected = oracle(images, [ClassifierOutputTarget(int(c)) for c in given], aug_smooth=True,
                              eigen_smooth=True)  # fmt: skip
    else:
        expected = more_oracle(model, layer, images, given, method, aug_smooth=True)
    _close(cam[:, 0], expected, structure=0.2)


@pytest.mark.parametrize(
    ("method", "options"),
    [("randomcam+seed-3", {}), ("finercam", {"top_k": 2}), ("gradcam+aug-smooth", {"class_input": True}),
     ("ablationcam", {})],
)  # fmt: skip
def test_graph_and_artifacts_validate(method, options, tmp_path):
    model = _model("timm:resnet10t")
    images = _images(7, 2)
    wrapper = gc.GradCAMModel(model, "layer4", method=method, example_input=images[:1], **options)
    assert wrapper.method == method
    if method == "ablationcam":  # the rerun below layer4 is dead code: the first pass's convolutions only
        assert _convs(wrapper) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    got = wrapper(images)
    want = gc.reference_cam(model, "layer4", images, method=method, return_all=True, **_top_k(options))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-5, atol=CAM_ATOL)
    onnx_path = gc.export_onnx(wrapper, tmp_path / "m.onnx")
    ts_path = gc.export_torchscript(wrapper, tmp_path / "m.pt")
    for path in (onnx_path, ts_path):
        report = gc.validate(path, model)
        assert report.ok, report
    bigger = _images(8, 3, 80)  # another batch and size
    result = load_explainer(onnx_path)(bigger.numpy())
    expected = gc.reference_cam(model, "layer4", bigger, method=method, **_top_k(options))
    np.testing.assert_allclose(result.cam, expected.numpy(), rtol=0, atol=CAM_ATOL)


def _top_k(options: dict) -> dict:
    return {"top_k": options["top_k"]} if "top_k" in options else {}


def _convs(wrapper) -> int:
    nodes = wrapper.graph.graph.nodes
    return sum(n.op == "call_function" and n.target is torch.ops.aten.convolution.default for n in nodes)


def test_the_rerun_runs_again_below_a_layer_inside_a_residual_block():
    """Inside a block, the block's input joins after the layer: the layers below run again, on the repeated images
    (at a last stage they are dead code: ``test_graph_and_artifacts_validate``)."""
    model = _model("timm:resnet10t")
    wrapper = gc.GradCAMModel(model, "layer4.0.conv1", method="ablationcam", example_input=_images(9, 1))
    assert _convs(wrapper) > sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def test_dead_writes_go_but_a_write_read_through_a_view_stays():
    def fn(x):
        dead = torch.relu_(x * 2)  # written, never read: goes
        kept = x + 1
        view = kept.view(-1)
        torch.relu_(kept)  # its result unused, but read through the view below: stays
        dead.add_(1)
        return view * 3

    gm = torch.fx.experimental.proxy_tensor.make_fx(fn)(torch.randn(4))
    x = torch.randn(4)
    expected = gm(x.clone())
    assert eliminate_dead_writes(gm.graph) == 3  # mul, relu_, add_ of the dead branch
    gm.recompile()
    torch.testing.assert_close(gm(x.clone()), expected, rtol=0, atol=0)
    assert torch.equal(expected, torch.relu(x + 1) * 3)


@pytest.mark.parametrize(
    ("method", "kwargs", "message"),
    [
        ("finercam+aug-smooth", {}, "'finercam' takes no '\\+aug-smooth': pytorch-grad-cam's FinerCAM has no"),
        ("gradcam+seed-3", {}, "only 'randomcam' takes a seed"),
        ("randomcam+seed-1+seed-2", {}, "only 'randomcam' takes a seed, and one"),
        ("ablationcam", {"reshape": lambda t: t}, "'ablationcam' ablates channels of an \\[N, C, h, w\\] output"),
        ("ablationcam", {"limit": 256}, "runs the network above layer 'layer4' once per channel, 512 times per image"),
    ],
)  # fmt: skip
def test_what_does_not_apply_is_refused_at_build(method, kwargs, message, monkeypatch):
    if "limit" in kwargs:
        monkeypatch.setattr(methods_extra, "ABLATION_CHANNEL_LIMIT", kwargs.pop("limit"))
    with pytest.raises(gc.MethodError, match=message):
        gc.GradCAMModel(_model("timm:resnet10t"), "layer4", method=method, example_input=_images(0, 1), **kwargs)


def test_finercam_is_refused_for_one_class():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                torch.nn.Flatten(), torch.nn.Linear(4, 1)).eval()  # fmt: skip
    with pytest.raises(gc.MethodError, match="'finercam' compares the class with others; this model has 1 class"):
        gc.GradCAMModel(model, "1", method="finercam", example_input=_images(0, 1, 16))


def test_method_names_round_trip_and_are_registered_once():
    assert {"randomcam", "finercam", "ablationcam"} <= set(METHODS)
    for name in ("randomcam+seed-7+eigen-smooth+aug-smooth", "ablationcam+aug-smooth", "GradCAM+++Eigen_Smooth"):
        method = get_method(name)
        assert get_method(method.name).name == method.name
    assert get_method("RandomCAM+aug-smooth+seed-7").name == "randomcam+seed-7+aug-smooth"
    assert get_method("randomcam+seed-0").name == "randomcam"
    np.testing.assert_array_equal(RandomCAM(seed=7).channel_weights(5), np.random.default_rng(7).uniform(-1, 1, 5))


def test_mask_flip_reruns_follow_the_score_and_refuse_several_passes_per_image():
    """Validation's mask-flip diagnosis indexes gates by image row: FinerCAM keeps its score there,
    ``+aug-smooth`` and AblationCAM (several passes per image) are not diagnosed, so beyond-limit maps fail."""
    from gradcam_model.checks.maskflips import Unclipped, flippable

    assert Unclipped("finercam").score.__self__.name == "finercam"
    for name in ("gradcam+aug-smooth", "ablationcam"):
        assert not flippable(name)
        with pytest.raises(gc.MethodError, match="runs several passes per image"):
            Unclipped(name)
