"""list_layers and target-layer resolution."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import zoo_images, zoo_model
from test_wrapper import _Branchy
from torch import nn

from gradcam_model import GradCAMModel, LayerNotFoundError, list_layers, reference_cam
from gradcam_model.errors import GradCAMError, InputError, LayerError
from gradcam_model.graph.layers import auto_layer
from gradcam_model.models import architecture_name


@pytest.mark.parametrize(
    ("arch", "auto"),
    [
        ("vgg19", "features"),  # the original write-up's layer; VGG's adaptive avgpool is not a candidate
        ("resnet18", "layer4"),
        ("densenet121", "features"),
        ("mobilenet_v3_large", "features"),
        ("inception_v3", "Mixed_7c"),
    ],
)
def test_auto_picks_the_last_spatial_layer_before_the_head(arch, auto):
    model = zoo_model(arch)
    layers = list_layers(model, zoo_images(arch, 1))
    assert [info.name for info in layers if info.auto] == [auto]
    assert auto_layer(model, zoo_images(arch, 1)) == auto


def test_list_layers_reports_shapes_types_and_paths():
    model = zoo_model("resnet18")
    layers = {info.name: info for info in list_layers(model, torch.randn(2, 3, 64, 64))}
    assert layers["layer4"].output_shape == (2, 512, 2, 2)
    assert layers["layer4"].type == "Sequential"
    assert layers["layer2.0.conv1"].output_shape == (2, 128, 8, 8)
    assert layers["layer1.0.relu"].calls == 2  # reused inside the block: not a valid target
    assert "fc" not in layers and "avgpool" in layers  # 2-D outputs are not candidates
    assert all(info.influences_logits for info in layers.values())


def test_list_layers_marks_layers_without_gradient_path():
    layers = {info.name: info for info in list_layers(_Branchy(), torch.randn(1, 3, 16, 16))}
    assert layers["side"].influences_logits is False
    assert layers["stem"].influences_logits is True


def test_unknown_layer_suggests_close_matches():
    with pytest.raises(LayerNotFoundError) as info:
        GradCAMModel(zoo_model("resnet18"), "layer5", example_input=torch.randn(1, 3, 64, 64))
    message = str(info.value)
    assert "layer 'layer5' not found" in message and "'layer4'" in message and "gradcam layers" in message
    assert isinstance(info.value, GradCAMError)


def test_no_candidate_layer():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    with pytest.raises(LayerError, match=r"no layer of the model produces a map of the image \(\[N, C, h, w\]"):
        GradCAMModel(model, "auto", example_input=torch.randn(1, 3, 2, 2))


# ---------------------------------------------------------------------------- layers that are not image maps


class _Permute(nn.Module):
    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class _ChannelsLastNet(nn.Module):
    """A conv whose map is handed on channels-last: ``perm`` returns ``[N, h, w, C]`` of ``act``'s map."""

    def __init__(self, channels: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, stride=8, padding=1)
        self.act = nn.ReLU()
        self.perm = _Permute()
        self.fc = nn.Linear(channels, 4)

    def forward(self, x):
        return self.fc(self.perm(self.act(self.conv(x))).mean((1, 2)))


@pytest.mark.parametrize("size", [64, 48])  # 64: [N, 8, 8, 8], square as NCHW too; 48: [N, 6, 6, 8]
def test_a_channels_last_layer_is_read_as_channels_last(size):
    """Never explained as NCHW: permuted back (reshape='auto') or refused (reshape=None)."""
    model = _ChannelsLastNet().eval()
    x = torch.randn(2, 3, size, size)
    layers = {info.name: info for info in list_layers(model, x[:1])}
    assert layers["perm"].layout.kind == "NHWC" and layers["perm"].problem is None
    assert layers["perm"].map_shape == (8, size // 8, size // 8)
    # the same activations and gradients as `act`, laid out differently: the same maps
    torch.testing.assert_close(reference_cam(model, "perm", x), reference_cam(model, "act", x), rtol=0, atol=0)
    wrapper = GradCAMModel(model, "perm", example_input=x)
    torch.testing.assert_close(wrapper(x)[4], reference_cam(model, "act", x), rtol=0, atol=1e-6)
    with pytest.raises(
        LayerError, match=r"layer 'perm' is laid out channels-last 8x8x8 -> 8x8x8|laid out channels-last"
    ):
        GradCAMModel(model, "perm", example_input=x, reshape=None)
    with pytest.raises(LayerError, match="laid out channels-last"):
        reference_cam(model, "perm", x, reshape=None)  # the eager reference refuses too


@pytest.fixture(scope="module")
def timm_models():
    timm = pytest.importorskip("timm")  # a [dev] dependency: installed by scripts/setup.sh
    torch.manual_seed(0)
    return {
        name: timm.create_model(name, pretrained=False, num_classes=5).eval()
        for name in ("swin_tiny_patch4_window7_224", "vit_tiny_patch16_224", "convnext_atto")
    }


def test_swin_stages_are_channels_last_and_attention_is_refused(timm_models):
    """timm's Swin hands [N, 7, 7, 768] from stage to stage; read as NCHW its maps were stripes."""
    model = timm_models["swin_tiny_patch4_window7_224"]
    x = torch.randn(1, 3, 224, 224)
    layers = {info.name: info for info in list_layers(model, x)}
    assert layers["norm"].output_shape == (1, 7, 7, 768) and layers["norm"].layout.kind == "NHWC"
    assert layers["norm"].map_shape == (768, 7, 7) and layers["norm"].auto
    attention = [info for name, info in layers.items() if ".attn." in name]
    assert attention and all(info.problem is not None and info.layout is None for info in attention)
    with pytest.raises(LayerError, match=r"layer 'norm' is laid out channels-last 7x7x768 -> 768x7x7"):
        GradCAMModel(model, "norm", example_input=x, reshape=None)
    with pytest.raises(LayerError, match="layer 'layers.3.blocks.1.attn.softmax' cannot be explained: it is computed"):
        GradCAMModel(model, "layers.3.blocks.1.attn.softmax", example_input=x)


def test_torchvision_swin_channels_last_without_reshape_is_refused():
    model = torchvision.models.swin_t(num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    layers = {info.name: info for info in list_layers(model, x)}
    assert layers["features"].output_shape == (1, 2, 2, 768) and layers["features"].layout.kind == "NHWC"
    with pytest.raises(LayerError, match="layer 'features' is laid out channels-last"):
        GradCAMModel(model, "features", example_input=x, reshape=None)


def test_vit_auto_picks_the_last_norm1_never_an_attention_internal(timm_models):
    model = timm_models["vit_tiny_patch16_224"]
    x = torch.randn(1, 3, 224, 224)
    layers = {info.name: info for info in list_layers(model, x)}
    assert [name for name, info in layers.items() if info.auto] == ["blocks.11.norm1"]
    assert layers["blocks.11.norm1"].layout.kind == "tokens" and layers["blocks.11.norm1"].map_shape == (192, 14, 14)
    assert all(layers[f"blocks.{i}.attn.{q}_norm"].problem is not None for i in range(12) for q in "qk")
    with pytest.raises(LayerError, match=r"computed inside 'blocks' \(Sequential\), which takes 197x192 tokens"):
        GradCAMModel(model, "blocks.11.attn.k_norm", example_input=x)
    # after the last attention only the class token reaches the head: zero patch gradient, refused
    assert "do not reach the logits" in layers["blocks.11.norm2"].problem
    with pytest.raises(LayerError, match="its patch tokens do not reach the logits"):
        GradCAMModel(model, "blocks.11", example_input=x)


def test_auto_skips_modules_that_return_their_input(timm_models):
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    layers = {info.name: info for info in list_layers(model, torch.randn(1, 3, 16, 16))}
    assert layers["2"].passthrough and not layers["2"].auto
    assert layers["1"].auto and not layers["1"].passthrough
    # timm ConvNeXt ends its stages with norm_pre = nn.Identity
    layers = {info.name: info for info in list_layers(timm_models["convnext_atto"], torch.randn(1, 3, 64, 64))}
    assert layers["norm_pre"].passthrough
    assert [name for name, info in layers.items() if info.auto] == ["stages"]


def test_an_input_too_small_for_the_model_is_an_input_error():
    model = nn.Sequential(
        nn.Conv2d(3, 4, 5), nn.MaxPool2d(4), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()
    with pytest.raises(InputError) as info:
        GradCAMModel(model, "2", example_input=torch.randn(1, 3, 8, 8))
    assert str(info.value) == (
        "input 8x8 is too small for this model: the feature map reaching '2' (Conv2d) is only 4x1x1; "
        "the smallest input of this aspect ratio that works is about 16x16: use a larger input size"
    )
    assert GradCAMModel(model, "2", example_input=torch.randn(1, 3, 16, 16)).target_layer == "2"


def test_the_recorded_architecture_is_the_factory_name(resnet18_layer4, timm_models):
    assert resnet18_layer4.architecture == "resnet18"  # built from Python without architecture=
    assert architecture_name(timm_models["convnext_atto"]) == "timm:convnext_atto"
    assert architecture_name(torchvision.models.regnet_y_400mf(num_classes=3), 3) == "regnet_y_400mf"
    assert architecture_name(_ChannelsLastNet()) == "_ChannelsLastNet"  # unknown: validate asks for --arch


def test_layers_command_marks_a_module_called_twice_refused_with_the_reason(capsys):
    from gradcam_model.cli import main

    code = main(["layers", "--arch", "resnet18", "--num-classes", "3", "--input-size", "64", "64"])
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    row = next(line for line in out.splitlines() if line[2:].split()[0] == "layer4.1.relu")
    assert row[2:].split()[3] == "2"  # calls
    assert "refused: it ran 2 times in one forward pass" in row
    # what export says when asked for it anyway
    with pytest.raises(LayerError, match=r"layer 'layer4.1.relu' cannot be explained: it ran 2 times"):
        GradCAMModel(zoo_model("resnet18"), "layer4.1.relu", example_input=torch.randn(1, 3, 64, 64))
