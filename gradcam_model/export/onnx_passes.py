"""Graph passes on the exported ONNX model: one copy of every weight, in the file and in ONNX Runtime.

A Linear layer between the target layer and the logits uses its weight twice: the
forward multiplies by ``W^T`` and the gradient by ``W``. torch.onnx folds transposes of
weights into extra initializers (one per explained class), and ONNX Runtime folds any
remaining ``Transpose(W)`` into another copy at load. ``Gemm`` reads its second operand
transposed for free (``transB``), so every product with a transposed copy becomes a
``Gemm`` on the one weight kept, identical copies are merged, and the copies go.

Then the copies ONNX Runtime makes itself: its CPU ``Gemm``/``MatMul`` kernels pre-pack a
constant operand B into a private buffer per node and keep the initializer while another
node reads it, so a weight that the forward and the gradient both read as B was held
three times (VGG19 at 128 px: load 1499 MB vs 1042 MB logits-only). Operand A is never
pre-packed, so every further product of the weight is computed transposed with the
weight as A, ``(W @ X^T)^T``: the weight's rows, the orientation a skinny product reads
at memory speed. The forward keeps its pre-packed B, and ONNX Runtime holds the packed
copy plus the initializer (see :func:`weight_as_operand_a`). Feeding the forward's weight
as A too was measured and dropped: its product runs across the weight's rows, 3x slower
unpacked, and as ``Gemm`` ORT's transpose fusions move the weight back to B. Where the
gradient only reduces that product (a pool's backward, then Grad-CAM's spatial mean, as on
VGG19), :mod:`.onnx_fold` replaces it by a product with a small folded weight, and the
forward is left the weight's only reader.
"""

from __future__ import annotations

import logging
import math

import numpy as np

__all__ = ["inferred_shapes", "share_transposed_weights", "weight_as_operand_a"]

log = logging.getLogger(__name__)

_PRODUCTS = ("Gemm", "MatMul")


def share_transposed_weights(proto) -> int:
    """Rewrite ``proto`` in place so that no 2-D weight is also stored (or computed) transposed.

    Identical initializers are merged first, and weights read by several products are
    then read as operand B once (:func:`weight_as_operand_a`). Returns the bytes of
    transposed copies removed. Weights are compared only with those of a matching
    shape, and shapes are inferred on the graph without its weights: on VGG19 (558 MB)
    comparing every weight's bytes and inferring shapes over the full model took 18 of
    the export's 52 s.
    """
    from onnx import numpy_helper

    graph = proto.graph
    _merge_identical(graph, numpy_helper)
    weights = {i.name: i for i in graph.initializer if len(i.dims) == 2}
    by_shape: dict[tuple, list[str]] = {}
    for name, init in weights.items():
        by_shape.setdefault((init.data_type, tuple(init.dims)), []).append(name)
    # name -> the weight it is the transpose of: stored copies, and Transpose nodes of a weight
    transposed_of: dict[str, str] = {}
    # a copy read by anything but a product's operand B (a Gather of rows) cannot be dropped
    pinned = {
        name for n in graph.node for i, name in enumerate(n.input) if n.op_type not in ("Gemm", "MatMul") or i != 1
    }
    for name, init in weights.items():
        twins = [t for t in by_shape.get((init.data_type, tuple(reversed(init.dims))), []) if t != name]
        if not twins or name in pinned:
            continue
        flipped = np.ascontiguousarray(numpy_helper.to_array(init).T).tobytes()
        twin = next((t for t in twins if numpy_helper.to_array(weights[t]).tobytes() == flipped), None)
        if twin is not None and twin not in transposed_of:
            transposed_of[name] = twin
    for node in graph.node:
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), [1, 0])
        if node.op_type == "Transpose" and node.input[0] in weights and perm == [1, 0]:
            transposed_of[node.output[0]] = node.input[0]
    readers = [n for n in graph.node if n.op_type in _PRODUCTS and len(n.input) >= 2 and n.input[1] in transposed_of]
    if not readers:
        weight_as_operand_a(graph)
        return 0
    shapes = inferred_shapes(proto) if any(n.op_type == "MatMul" for n in readers) else {}
    for node in readers:
        original = transposed_of[node.input[1]]
        if node.op_type == "Gemm":
            attrs = {a.name: a for a in node.attribute}
            trans_b = attrs["transB"].i if "transB" in attrs else 0
            _set_int(node, "transB", 1 - trans_b)
        elif len(shapes.get(node.input[0], ())) == 2:  # MatMul(A, W^T) of a 2-D A is Gemm(A, W, transB=1)
            node.op_type = "Gemm"
            _set_int(node, "transB", 1)
        else:
            continue
        node.input[1] = original
    freed = _drop_unused(graph, weights)
    weight_as_operand_a(graph)
    return freed


def weight_as_operand_a(graph) -> int:
    """Leave each 2-D weight as operand B of one product; ``Gemm(X, W, transB=1)`` elsewhere
    becomes ``Transpose(MatMul(W, Transpose(X)))``, the same product with the weight as A.

    The first product in graph order (the forward) keeps ``W`` as B, unless a node other
    than a product reads ``W`` (then ORT keeps the initializer anyway and no product
    should pre-pack a second copy). Products that read ``W`` untransposed stay: as A they
    would read it transposed, the slow way. ``alpha`` must be 1 (and ``beta``, with a bias).
    Returns the number of products rewritten.
    """
    import onnx

    weights = {i.name for i in graph.initializer if len(i.dims) == 2}
    readers: dict[str, list] = {}
    other_readers: set[str] = set()
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in weights and node.op_type in _PRODUCTS and i == 1:
                readers.setdefault(name, []).append(node)
            elif name in weights:
                other_readers.add(name)
    rewritten = 0
    for weight, nodes in readers.items():
        if len(nodes) < 2 and weight not in other_readers:
            continue
        # the forward's product (first in graph order) keeps W as B, unless ORT keeps the
        # initializer for another reader anyway (the head's Gather of rows): then none does
        kept = nodes[0] if weight not in other_readers else None
        for node in nodes:
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            if node is kept or node.op_type != "Gemm" or _attr(node, "transA", 0) or not _attr(node, "transB", 0):
                continue
            if _attr(node, "alpha", 1.0) != 1.0 or (bias and _attr(node, "beta", 1.0) != 1.0):
                continue
            x, (out,) = node.input[0], node.output
            stem = f"{out}__weight_as_a"
            product = f"{stem}_p" if bias else out
            replacement = [
                onnx.helper.make_node("Transpose", [x], [f"{stem}_xt"], perm=[1, 0], name=f"{stem}_xt"),
                onnx.helper.make_node("MatMul", [weight, f"{stem}_xt"], [f"{stem}_t"], name=f"{stem}_mm"),
                onnx.helper.make_node("Transpose", [f"{stem}_t"], [product], perm=[1, 0], name=f"{stem}_t"),
            ]
            if bias:
                replacement.append(onnx.helper.make_node("Add", [product, bias], [out], name=f"{stem}_bias"))
            index = list(graph.node).index(node)
            graph.node.remove(node)
            for offset, new in enumerate(replacement):
                graph.node.insert(index + offset, new)
            rewritten += 1
    if rewritten:
        log.debug("%d products read their weight as operand A", rewritten)
    return rewritten


def _attr(node, name: str, default):
    for attribute in node.attribute:
        if attribute.name == name:
            return attribute.f if attribute.type == attribute.FLOAT else attribute.i
    return default


def _merge_identical(graph, numpy_helper) -> None:
    """Initializers with the same dtype, shape and bytes become one (each explained class's
    backward pass folds its own copy of the same transposed weight)."""
    by_shape: dict[tuple, list] = {}
    for init in graph.initializer:
        by_shape.setdefault((init.data_type, tuple(init.dims)), []).append(init)
    alias: dict[str, str] = {}
    for inits in by_shape.values():
        seen: dict[bytes, str] = {}
        for init in inits if len(inits) > 1 else ():
            key = numpy_helper.to_array(init).tobytes()
            if key in seen:
                alias[init.name] = seen[key]
            else:
                seen[key] = init.name
    if not alias:
        return
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    for init in [i for i in graph.initializer if i.name in alias]:
        graph.initializer.remove(init)


_SMALL = 1 << 14  # elements: shape and index constants, whose values shape inference reads


def inferred_shapes(proto) -> dict[str, tuple]:
    """Every value's shape (ints, dim names, None where unknown), by shape inference on a copy of
    the graph whose big weights are typed inputs: inferring over the model itself serializes it
    (seconds for VGG19's 558 MB). No ``ByteSize()`` either: upb computes it by serializing."""
    import onnx

    graph = proto.graph
    small = [i for i in graph.initializer if math.prod(i.dims) <= _SMALL]
    big = [
        onnx.helper.make_tensor_value_info(i.name, i.data_type, list(i.dims))
        for i in graph.initializer
        if math.prod(i.dims) > _SMALL
    ]
    skeleton = onnx.helper.make_model(
        onnx.helper.make_graph(
            list(graph.node),
            graph.name,
            [*graph.input, *big],
            list(graph.output),
            small,
            value_info=list(graph.value_info),  # the exporter's shapes, with its names for dynamic sizes
        ),
        opset_imports=list(proto.opset_import),
        ir_version=proto.ir_version,
    )
    skeleton.functions.extend(proto.functions)
    inferred = onnx.shape_inference.infer_shapes(skeleton).graph
    shapes = {
        v.name: tuple(
            d.dim_value if d.HasField("dim_value") else d.dim_param or None for d in v.type.tensor_type.shape.dim
        )
        for v in [*inferred.input, *inferred.value_info, *inferred.output]
        if v.type.tensor_type.HasField("shape")
    }
    shapes.update({i.name: tuple(i.dims) for i in graph.initializer})
    return shapes


def _set_int(node, name: str, value: int) -> None:
    import onnx

    for attribute in node.attribute:
        if attribute.name == name:
            attribute.i = value
            return
    node.attribute.append(onnx.helper.make_attribute(name, value))


def _drop_unused(graph, weights) -> int:
    """Remove Transpose nodes and initializers nothing reads any more; return the bytes freed."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        dead = [n for n in graph.node if n.op_type == "Transpose" and not any(o in used for o in n.output)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    freed = 0
    for init in [i for i in graph.initializer if i.name in weights and i.name not in used]:
        freed += len(init.raw_data) or init.ByteSize()
        graph.initializer.remove(init)
    if freed:
        log.debug("shared transposed weights: %.1f MB of copies removed", freed / 1e6)
    return freed
