"""Model state while tracing: parameters swapped for graph inputs, caches and MKLDNN set aside, all restored."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["reparametrized", "without_mkldnn", "fresh_caches", "copy_model"]


@contextmanager
def reparametrized(model: nn.Module, originals: Sequence[torch.Tensor], tensors: Sequence[torch.Tensor]):
    """Run the model with each of its parameters and buffers replaced by the tensor standing in for it.

    In place of ``torch.func.functional_call``, which mishandles a module reached under two
    names (CoaT shares its convolutional position encodings between blocks): given one name,
    its ``tie_weights`` swaps the module's parameter once per name and restores it once per
    name, so the second restore puts the traced stand-in back and the caller's model keeps a
    fake tensor; given both names it refuses them as "multiple values for keys ... tied".
    Here each module is visited once and every place holding an original gets its stand-in,
    so a shared module or a tied parameter stays one tensor in the graph.
    """
    stand_in = {id(t): s for t, s in zip(originals, tensors, strict=True)}
    saved = []
    for module in model.modules():  # each module object once, however many names reach it
        for store in (module._parameters, module._buffers):
            for key, tensor in store.items():
                if tensor is not None and id(tensor) in stand_in:
                    saved.append((store, key, tensor))
    try:
        for store, key, tensor in saved:
            store[key] = stand_in[id(tensor)]
        yield
    finally:
        for store, key, tensor in saved:
            store[key] = tensor


@contextmanager
def without_mkldnn():
    # torch.backends.mkldnn.flags() would also set oneDNN's TF32 flag, which warns on CPUs
    enabled = torch._C._get_mkldnn_enabled()
    torch._C._set_mkldnn_enabled(False)
    try:
        yield
    finally:
        torch._C._set_mkldnn_enabled(enabled)


@contextmanager
def fresh_caches(model: nn.Module):
    """Trace with every plain dict attribute of a sub-module copied without its tensors.

    timm's LeViT, EfficientFormer(V2) and EfficientViT attention blocks keep
    ``attention_biases[:, attention_bias_idxs]`` in ``attention_bias_cache`` (a dict, neither
    parameter nor buffer) in eval mode. Filled by an eager pass, the trace would meet a real
    tensor among fake ones (FakeTensorMode refuses it) or bake the bias as a constant cut off
    from its parameter; without it, the trace computes it from the traced parameters. The
    copy (with the fake tensor the trace stored) is dropped and the caller's own dict object,
    contents unchanged, put back. A tensor a forward needs cannot live only in a plain dict
    (``model.to(device)`` would not move it), so such dicts hold caches, keyed by device.
    """
    saved = []
    for module in model.modules():
        for attr, value in vars(module).items():
            if type(value) is dict and not attr.startswith("_"):
                saved.append((module, attr, value))
    try:
        for module, attr, value in saved:
            object.__setattr__(module, attr, {k: v for k, v in value.items() if not isinstance(v, torch.Tensor)})
        yield
    finally:
        for module, attr, value in saved:
            object.__setattr__(module, attr, value)


def copy_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` without the tensor caches of :func:`fresh_caches`.

    A cache filled by a pass with gradients on (LeViT's ``attention_bias_cache`` after any
    forward outside ``no_grad``) holds non-leaf tensors, which ``deepcopy`` refuses
    ("Only Tensors created explicitly by the user ... support the deepcopy protocol").
    """
    with fresh_caches(model):
        return copy.deepcopy(model)
