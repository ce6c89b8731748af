"""list_layers and target-layer resolution."""

from __future__ import annotations

import pytest
import torch
from conftest import zoo_images, zoo_model
from test_wrapper import _Branchy

from gradcam_model import GradCAMModel, LayerNotFoundError, list_layers
from gradcam_model.errors import GradCAMError, LayerError
from gradcam_model.layers import auto_layer


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
    with pytest.raises(LayerError, match="no layer of the model produces a 4-D"):
        GradCAMModel(model, "auto", example_input=torch.randn(1, 3, 2, 2))
