"""Graph passes on the exported gradient: fewer elementwise passes, and ops ONNX Runtime keeps blocked.

ONNX Runtime's CPU provider runs convolutions in a blocked layout (NCHWc) and converts
tensors back to plain NCHW (``ReorderOutput``/``ReorderInput``, a full copy each) around
every op its layout transformer does not handle. It handles convolutions, ``Add``/``Mul``
of two blocked tensors of one shape, and activations such as ``HardSigmoid`` or ``Sign``, but
not a product with a constant, ``Greater``/``Cast`` or ``Expand``. The gradient, as autograd and
the decompositions write it, is full of those, so each backward step paid two layout
round trips on top of its own elementwise passes. These rewrites compute the same values
with ops that stay blocked, or with no op at all. (Folding the eval-mode BatchNorm scale that
precedes each input-gradient convolution into its kernel was tried and dropped: ONNX Runtime
then held both kernels while folding at load, resnet50 layer3 +43 to +72 MB of load memory,
with no time gain measurable on mobilenet_v3_large or resnet50.)

- :func:`relu_masks_as_signs`: ReLU's backward mask ``Cast(Greater(y, 0))`` where ``y`` is a
  ``Relu`` output (never negative) becomes ``Sign(y)``, the same 0/1 values by the operator's
  definition. Masks of other tensors are left as they are.
- :func:`clamped_affines_as_hardsigmoid`: ``Clip(x * a + b, 0, 1)`` with constant nonzero
  scalars is ``HardSigmoid(x, alpha=a, beta=b)`` by definition: one op instead of three, and
  one the blocked layout keeps (the step inside the hardswish backward of
  :func:`gradcam_model.graph.decompositions.hardswish_backward`).

Every rewrite must give the same values under the operators' ONNX definitions, on every
runtime, not only ONNX Runtime's kernels (the file is shared; see docs/embedding.md). An
earlier ``HardSigmoid(y, alpha=2^127, beta=0)`` step was exact on ONNX Runtime only:
OpenVINO 2026.4's ONNX front end reads an explicit ``beta=0`` HardSigmoid as the default
beta 0.5, which put 0.5 in every mask element where the ReLU output is 0 (resnet18 layer3
maps 1.00 off), and the step is no step where a runtime keeps denormals (2^127 * 1e-40 =
0.017). So no rewrite here writes a zero HardSigmoid attribute, a slope that relies on
overflow or flushing, or a value that depends on a runtime's defaults.
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
    "relu_masks_as_signs",
    "simplify_backward",
]

log = logging.getLogger(__name__)

_FLOAT = 1  # TensorProto.FLOAT


def simplify_backward(proto) -> dict[str, int]:
    """Apply every pass of this module to ``proto`` in place; returns how often each fired."""
    shapes = inferred_shapes(proto)
    graph = proto.graph
    counts = {
        "ReLU masks as signs": relu_masks_as_signs(graph),
        "clamped affines as HardSigmoid": clamped_affines_as_hardsigmoid(graph),
        "expands dropped": broadcast_instead_of_expand(graph, shapes),
    }
    _drop_dead(graph)
    log.debug("backward graph passes: %s", counts)
    return counts


def relu_masks_as_signs(graph) -> int:
    """``Cast(Greater(y, 0), float)`` becomes ``Sign(y)`` where ``y`` is the output of a ``Relu``.

    A ReLU output is 0 or positive, where ``Sign`` is 0 or 1: the same mask by the operators'
    definitions, with no rounding, slope or runtime default involved (NaN, which ``Relu``
    passes, gives NaN instead of 0). ONNX Runtime keeps ``Sign`` in its blocked layout;
    measured on resnet18 layer3 @64, batch 8, 2 threads: outputs bit-identical to the
    ``Cast(Greater)`` form's. A mask of a tensor that can be negative is left as it is.
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
        source = producers.get(compare.input[0])
        if source is None or source.op_type != "Relu":
            continue
        sign = helper.make_node("Sign", [compare.input[0]], list(node.output), name=f"{node.name}_sign")
        graph.node.insert(list(graph.node).index(node), sign)
        graph.node.remove(node)
        rewritten += 1
    return rewritten


def clamped_affines_as_hardsigmoid(graph) -> int:
    """``Clip(Add(Mul(x, a), b), 0, 1)`` with nonzero float32 scalar initializers ``a``, ``b``
    (the product and the sum read by nothing else) becomes ``HardSigmoid(x, alpha=a, beta=b)``.

    A zero ``a`` or ``b`` is left as a clamp: OpenVINO 2026.4 reads an explicit ``beta=0`` as
    HardSigmoid's default 0.5 (docs/embedding.md). Returns the number of clamps rewritten."""
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
        if not alpha or not beta:  # None, or a zero some runtimes read as the default
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
