"""One probe of the model: how often each entry point runs it, and when the record is taken again."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from gradcam_model import GradCAMModel, list_layers, reference_cam
from gradcam_model.graph.probe import cached_probe, probe


class _Counted:
    """Counts the model's forward passes (a pre-hook on the root module, as the issue counted them)."""

    def __init__(self, model: nn.Module) -> None:
        self.runs = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, _module, _inputs) -> None:
        self.runs += 1

    def take(self) -> int:
        runs, self.runs = self.runs, 0
        return runs


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    return model, _Counted(model)


def test_each_entry_point_runs_the_model_as_often_as_promised(resnet):
    model, counter = resnet
    image = torch.randn(1, 3, 64, 64)
    wrapper = GradCAMModel(model, "layer4", example_input=image)
    # the probe (the image's size and a taller one), the trace, the check of the dynamic-size graph at another size
    assert counter.take() == 4
    assert wrapper.dynamic_spatial
    assert [i.name for i in list_layers(model, image) if i.auto] == ["layer4"]
    assert counter.take() == 0  # read off the record
    cam = reference_cam(model, "layer4", image)
    assert counter.take() == 1  # the reference itself
    classes = torch.tensor([3])
    reference_cam(model, "layer4", image, classes)
    assert counter.take() == 1  # the class count is on the record too
    with torch.inference_mode():
        torch.testing.assert_close(wrapper(image)[4], cam, atol=1e-5, rtol=0)
    counter.take()
    reference_cam(model, "layer4", torch.randn(1, 3, 80, 72))
    assert counter.take() == 3  # another size: probed once (two passes), then the reference


def test_the_record_is_taken_again_when_the_model_changes(resnet):
    model, counter = resnet
    image = torch.randn(1, 3, 48, 48)
    first = probe(model, image)
    assert counter.take() == 2
    assert probe(model, image) is first and counter.take() == 0
    assert first.num_classes == 10 and not first.attention
    # loading weights copies in place: the parameters' version counters move
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    assert cached_probe(model, image) is None
    second = probe(model, image)
    assert second is not first and counter.take() == 2
    # a replaced module: another record, and what it says is the new module's
    old = model.fc
    model.fc = nn.Linear(512, 7)
    try:
        assert cached_probe(model, image) is None
        assert probe(model, image).num_classes == 7
    finally:
        model.fc = old
    counter.take()
    # another batch size, dtype or size is another record
    assert cached_probe(model, image.expand(2, -1, -1, -1)) is None


def test_errors_are_raised_every_time_and_never_recorded():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())  # returns [N, 4*h*w]... logits-shaped
    bad = nn.Sequential(nn.Conv2d(3, 4, 3))  # returns a 4-D map, not logits
    image = torch.randn(1, 3, 8, 8)
    assert probe(model, image).num_classes == 4 * 6 * 6
    for _ in range(2):
        with pytest.raises(Exception, match="expected logits of shape"):
            probe(bad, image)
    assert cached_probe(bad, image) is None


def test_a_model_that_changes_itself_in_its_forward_pass_is_probed_each_time():
    class Counting(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x):
            self.seen += 1  # in place: the buffer's version counter moves on every pass
            return self.conv(x).mean((2, 3))

    model = Counting()
    image = torch.randn(1, 3, 8, 8)
    first = probe(model, image)
    assert probe(model, image) is not first
