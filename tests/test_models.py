"""models: torchvision/timm/factory sources and local weights files. Nothing is downloaded."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torchvision

from gradcam_model.errors import GradCAMError, WeightsError
from gradcam_model.models import imagenet_class_names, load_model, load_weights, torchvision_architectures


@pytest.fixture(scope="module")
def trained():
    """A resnet18 with 3 classes and non-default weights, as a training run would leave it."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model.eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize(
    "layout",
    ["state_dict", "checkpoint[state_dict]", "checkpoint[model]", "module. prefix", "checkpoint[model] + module."],
)
def test_weights_layouts_load(tmp_path, trained, layout):
    state = trained.state_dict()
    if "module." in layout:
        state = {f"module.{k}": v for k, v in state.items()}
    if layout.startswith("checkpoint[state_dict]"):
        saved = {"epoch": 7, "state_dict": state, "best_acc1": torch.tensor(0.9)}
    elif layout.startswith("checkpoint[model]"):
        saved = {"model": state, "optimizer": {"lr": 0.1}, "epoch": 3}
    else:
        saved = state
    path = tmp_path / "w.pth"
    torch.save(saved, path)
    model = load_model("resnet18", num_classes=3, weights=path)
    assert _same_weights(model, trained)
    assert not model.training
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained(x), rtol=0, atol=0)


def test_mismatched_keys_name_the_first_few_and_count(tmp_path, trained):
    state = {f"backbone.{k}": v for k, v in trained.state_dict().items()}
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    n = len(state)
    with pytest.raises(WeightsError) as info:
        load_model("resnet18", num_classes=3, weights=path)
    message = str(info.value)
    assert f"{n} missing keys (conv1.weight, bn1.weight, bn1.bias, bn1.running_mean, bn1.running_var, ..." in message
    assert f"({n - 5} more)" in message
    assert f"{n} unexpected keys (backbone.conv1.weight" in message
    assert "\n" not in message


def test_one_missing_and_one_unexpected_key(tmp_path, trained):
    state = dict(trained.state_dict())
    del state["fc.bias"]
    state["fc.extra"] = torch.zeros(3)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"1 missing keys \(fc\.bias\); 1 unexpected keys \(fc\.extra\)"):
        load_model("resnet18", num_classes=3, weights=path)


def test_head_size_mismatch_suggests_num_classes(tmp_path, trained):
    path = tmp_path / "w.pth"
    torch.save(trained.state_dict(), path)
    with pytest.raises(WeightsError, match=r"fc\.weight \(3, 512\) vs \(1000, 512\).*--num-classes"):
        load_model("resnet18", weights=path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "does not exist"),
        (b"cat\ndog\n", "not a PyTorch checkpoint"),
        (b"", "not a PyTorch checkpoint"),
        ([1, 2, 3], "holds list; expected a state dict"),
        ({}, "holds an empty mapping"),
        ({"weight": torch.zeros(2), "note": "hi"}, "1 entries are not tensors"),
        ({"state_dict": {"a": torch.zeros(1)}, "args": torch.nn.Identity()}, "more than tensors and plain containers"),
    ],
    ids=["missing", "text", "empty-file", "list", "empty-dict", "not-tensors", "pickled-object"],
)
def test_unusable_weights_files(tmp_path, content, match):
    path = tmp_path / "w.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(WeightsError, match=match):
        load_model("resnet18", weights=path)


def test_load_weights_leaves_a_failed_model_untouched(tmp_path, trained):
    model = torchvision.models.resnet18(num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state = dict(trained.state_dict())
    del state["fc.bias"]
    torch.save(state, tmp_path / "w.pth")
    with pytest.raises(WeightsError):
        load_weights(model, tmp_path / "w.pth")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_googlenet_checkpoints_with_auxiliary_heads_load(tmp_path):
    torch.manual_seed(0)
    trained = torchvision.models.googlenet(num_classes=4, aux_logits=True, init_weights=False)
    torch.save(trained.state_dict(), tmp_path / "g.pth")
    model = load_model("googlenet", num_classes=4, weights=tmp_path / "g.pth")
    assert model.aux1 is None
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), trained.eval()(x), rtol=0, atol=0)


def test_torchvision_names():
    names = torchvision_architectures()
    assert {"resnet18", "vgg19", "efficientnet_b0", "vit_b_16"} <= set(names)
    assert not any(n.startswith(("fasterrcnn", "deeplab", "raft")) for n in names)  # classification only
    assert isinstance(load_model("ResNet18", num_classes=2), torchvision.models.ResNet)  # case-insensitive


@pytest.mark.parametrize(
    ("arch", "match"),
    [
        ("resnt18", r"unknown architecture 'resnt18' \(did you mean 'resnet18'"),
        ("fasterrcnn_resnet50_fpn", "unknown architecture"),
        (
            "timm:efficientnet_lit0",
            r"unknown timm architecture 'efficientnet_lit0' \(did you mean 'efficientnet_lite0'",
        ),
        ("timm:", "unknown timm architecture"),
        ("", "non-empty"),
        ("no_such_package_xyz.models:build", "cannot import 'no_such_package_xyz.models'"),
        (":build", "must look like 'package.module:callable'"),
    ],
)
def test_unknown_architectures(arch, match):
    with pytest.raises(GradCAMError, match=match):
        load_model(arch)


def test_num_classes_is_checked():
    with pytest.raises(GradCAMError, match="positive integer"):
        load_model("resnet18", num_classes=0)


def test_timm_source():
    import timm

    model = load_model("timm:resnet10t", num_classes=5)
    assert isinstance(model, timm.models.ResNet)
    assert not model.training
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(
        textwrap.dedent(
            """
            import torch
            from torch import nn

            calls = []

            def build(num_classes=7):
                calls.append(num_classes)
                pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
                return nn.Sequential(nn.Conv2d(3, 4, 3), pool, nn.Linear(4, num_classes))

            class Zoo:
                @staticmethod
                def small(**kwargs):
                    return build(**kwargs)

            def not_a_model(num_classes=1):
                return "nope"

            def broken(num_classes=1):
                raise RuntimeError("cuda needed")

            NOT_CALLABLE = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    module = importlib.import_module("my_factories")
    yield module
    import sys

    sys.modules.pop("my_factories", None)


def test_factory_source(factory_module):
    model = load_model("my_factories:build", num_classes=3)
    assert factory_module.calls == [3]
    load_model("my_factories:build")  # no num_classes: the factory's own default
    assert factory_module.calls == [3, 7]
    with torch.no_grad():
        assert model(torch.randn(1, 3, 8, 8)).shape == (1, 3)
    assert not model.training
    nested = load_model("my_factories:Zoo.small", num_classes=2)
    with torch.no_grad():
        assert nested(torch.randn(1, 3, 8, 8)).shape == (1, 2)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("my_factories:buidl", r"my_factories has no 'buidl' \(did you mean 'build'"),
        ("my_factories:not_a_model", "returned a str; expected a torch.nn.Module"),
        ("my_factories:broken", r"my_factories:broken\(num_classes=2\) failed: RuntimeError: cuda needed"),
        ("my_factories:NOT_CALLABLE", r"is not callable \(int\)"),
    ],
)
def test_factory_errors(factory_module, spec, match):
    with pytest.raises(GradCAMError, match=match):
        load_model(spec, num_classes=2)


def test_imagenet_class_names_are_offline_and_complete():
    names = imagenet_class_names()
    assert len(names) == 1000
    assert names[285] == "Egyptian cat" and names[967] == "espresso"
