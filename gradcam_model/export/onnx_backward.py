"""Graph passes on the exported gradient: fewer elementwise passes, and ops ONNX Runtime keeps blocked.

ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc) and converts
tensors back to plain NCHW (``ReorderOutput``/``ReorderInput``, a full copy each) around
every op its layout transformer does not handle. It handles convolutions, ``Add``/``Mul``
of two blocked tensors of one shape, and activations such as ``HardSigmoid``, but not a
product with a constant, ``Greater``/``Cast`` or ``Expand``. The gradient, as autograd and
the decompositions write it, is full of those, so each backward step paid two layout
round trips on top of its own elementwise passes. These rewrites compute the same values
with ops that stay blocked, or with no op at all. (Folding the eval-mode BatchNorm scale that
precedes each input-gradient convolution into its kernel was tried and dropped: ONNX Runtime
then held both kernels while folding at load, resnet50 layer3 +43 to +72 MB of load memory,
with no time gain measurable on mobilenet_v3_large or resnet50.)

- :func:`relu_masks_as_steps`: ReLU's backward mask ``Cast(Greater(y, 0))`` becomes
  ``HardSigmoid(y, alpha=2^127, beta=0)``, a step with the same 0/1 values.
- :func:`clamped_affines_as_hardsigmoid`: ``Clip(x * a + b, 0, 1)`` with constant scalars is
  ``HardSigmoid(x, alpha=a, beta=b)`` by definition: one op instead of three, and one the
  blocked layout keeps (the step inside the hardswish backward of
  :func:`gradcam_model.decompositions.hardswish_backward`).
- :func:`broadcast_instead_of_expand`: ``Expand(g) / k`` read by an elementwise op whose
  other operand has the expanded shape (the backward of a global average pool or a mean)
  becomes ``g / k`` broadcast by that op.
"""

from __future__ import annotations

import logging

import numpy as np

from .onnx_passes import inferred_shapes

__all__ = [
    "broadcast_instead_of_expand",
    "clamped_affines_as_hardsigmoid",
    "relu_masks_as_steps",
    "simplify_backward",
]

log = logging.getLogger(__name__)

_FLOAT = 1  # TensorProto.FLOAT
# 2^127 * y >= 1 for every float32 y >= 2^-127 (all normal numbers), and inf clips to 1
_STEP_SLOPE = 2.0**127


def simplify_backward(proto) -> dict[str, int]:
    """Apply every pass of this module to ``proto`` in place; returns how often each fired."""
    shapes = inferred_shapes(proto)
    graph = proto.graph
    counts = {
        "ReLU masks as steps": relu_masks_as_steps(graph),
        "clamped affines as HardSigmoid": clamped_affines_as_hardsigmoid(graph),
        "expands dropped": broadcast_instead_of_expand(graph, shapes),
    }
    _drop_dead(graph)
    log.debug("backward graph passes: %s", counts)
    return counts


def relu_masks_as_steps(graph) -> int:
    """``Cast(Greater(y, 0), float)`` becomes ``HardSigmoid(y, alpha=2^127, beta=0)``.

    ``clip(2^127 * y, 0, 1)`` is 0 for ``y <= 0`` and 1 for every ``y >= 2^-127``; the two
    differ only for positive subnormals below 2^-127 (a fraction instead of 1) and NaN.
    Returns the number of masks rewritten.
    """
    from onnx import helper, numpy_helper

    initializers = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    rewritten = 0
    for node in list(graph.node):
        if node.op_type != "Cast" or _attr(node, "to") != _FLOAT:
            continue
        compare = producers.get(node.input[0])
        if compare is None or compare.op_type != "Greater" or compare.input[1] not in initializers:
            continue
        threshold = numpy_helper.to_array(initializers[compare.input[1]])
        if threshold.size != 1 or threshold.dtype != np.float32 or float(threshold.reshape(())) != 0.0:
            continue
        step = helper.make_node(
            "HardSigmoid", [compare.input[0]], list(node.output), name=f"{node.name}_step", alpha=_STEP_SLOPE, beta=0.0
        )
        graph.node.insert(list(graph.node).index(node), step)
        graph.node.remove(node)
        rewritten += 1
    return rewritten


def clamped_affines_as_hardsigmoid(graph) -> int:
    """``Clip(Add(Mul(x, a), b), 0, 1)`` with float32 scalar initializers ``a``, ``b`` (the
    product and the sum read by nothing else) becomes ``HardSigmoid(x, alpha=a, beta=b)``.
    Returns the number of clamps rewritten."""
    from onnx import helper

    scalars = _float_scalars(graph)
    producers = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    rewritten = 0
    for clip in list(graph.node):
        if clip.op_type != "Clip" or len(clip.input) != 3 or [scalars.get(i) for i in clip.input[1:]] != [0.0, 1.0]:
            continue
        add = producers.get(clip.input[0])
        if add is None or add.op_type != "Add" or len(readers[add.output[0]]) != 1:
            continue
        beta, mul_name = _scalar_and_other(add, scalars)
        mul = producers.get(mul_name)
        if beta is None or mul is None or mul.op_type != "Mul" or len(readers[mul.output[0]]) != 1:
            continue
        alpha, x = _scalar_and_other(mul, scalars)
        if alpha is None:
            continue
        step = helper.make_node(
            "HardSigmoid", [x], list(clip.output), name=f"{clip.name}_hardsigmoid", alpha=alpha, beta=beta
        )
        graph.node.insert(list(graph.node).index(clip), step)
        graph.node.remove(clip)
        rewritten += 1
    return rewritten


def _float_scalars(graph) -> dict[str, float]:
    from onnx import numpy_helper

    return {
        i.name: float(numpy_helper.to_array(i).reshape(()))
        for i in graph.initializer
        if i.data_type == _FLOAT and int(np.prod(i.dims)) == 1
    }


def _scalar_and_other(node, scalars: dict[str, float]) -> tuple[float | None, str | None]:
    """The scalar operand of a binary ``node`` and the name of its other operand."""
    if len(node.input) != 2:
        return None, None
    for k in (1, 0):
        if node.input[k] in scalars and node.input[1 - k] not in scalars:
            return scalars[node.input[k]], node.input[1 - k]
    return None, None


def broadcast_instead_of_expand(graph, shapes: dict[str, tuple]) -> int:
    """``Div(Expand(g, shape), k)`` read only by ``Mul``/``Add`` partners of the expanded shape
    becomes ``Div(g, k)``: the partner broadcasts it, and the division runs on the small tensor.
    Returns the number of ``Expand`` nodes bypassed."""
    producers = {o: n for n in graph.node for o in n.output}
    readers = _readers(graph)
    bypassed = 0
    stale: set[str] = set()
    for node in graph.node:
        if node.op_type != "Div":
            continue
        expand = producers.get(node.input[0])
        if expand is None or expand.op_type != "Expand" or len(readers.get(expand.output[0], [])) != 1:
            continue
        full = shapes.get(node.output[0])
        if full is None or shapes.get(node.input[1], ()) != ():
            continue
        users = readers.get(node.output[0], [])
        if users and all(
            u.op_type in ("Mul", "Add") and len(u.input) == 2 and u.input[0] != u.input[1]
            and shapes.get(u.input[1] if u.input[0] == node.output[0] else u.input[0]) == full
            for u in users
        ):  # fmt: skip
            node.input[0] = expand.input[0]
            stale.add(node.output[0])  # now the small shape: ORT warns at load about a recorded full one
            bypassed += 1
    kept = [v for v in graph.value_info if v.name not in stale]
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return bypassed


def _attr(node, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return attribute.i
    return default


def _readers(graph) -> dict[str, list]:
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    return readers


def _drop_dead(graph) -> None:
    """Remove nodes and initializers that nothing reads any more."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)
