"""Fold the reduction that follows a weight's gradient product into the weight.

Grad-CAM reads the gradient at the target layer only through its spatial mean, the
channel weights. Between a head's first Linear and that mean the gradient passes only
linear, row-wise ops: the backward of the flatten and of an average pool, a reshape, the
mean. On VGG19 at 128 px the product ``g @ W0`` builds a ``[N, 25088]`` gradient that
the pool's backward and the mean reduce to ``[N, 512]``: the gradient read all 411 MB of
``W0`` (as operand A, so ONNX Runtime kept the weight beside its pre-packed copy for the
forward) to make 49 numbers per channel that are then averaged. Applied to each row of
``W0`` at export, that linear chain gives a ``[4096, 512]`` weight (8 MB): the gradient
becomes one small product, and the forward is ``W0``'s only reader, so ONNX Runtime drops
the plain copy once it has pre-packed it. VGG19 at 128 px, batch 8: ORT load 1107 -> 1052 MB
(the logits-only floor 1044), resident after runs 1237 -> 822-853 MB, a run 38-64 ms shorter
(about 1.3 s under load), the fold itself about 3 s of the export.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from .onnx_backward import _drop_dead
from .onnx_passes import weight_as_operand_a

__all__ = ["fold_reduced_gradients"]

log = logging.getLogger(__name__)

# ops linear in the one input that comes from the gradient, with every other input constant
_LINEAR = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Expand",
    "MatMul", "Mul", "Div", "ReduceMean", "ReduceSum",
}  # fmt: skip
_ROWS = 256  # weight rows pushed through the chain at a time: bounds the export's extra memory


def fold_reduced_gradients(proto) -> int:
    """Replace ``reduce(chain(X @ M))`` by ``X @ F`` with ``F = reduce(chain(M))`` row by row,
    where ``M`` is a 2-D weight and the chain is linear and row-wise; returns how many products
    were folded.

    The chain is followed from the product while each value has one reader, each op is in
    :data:`_LINEAR` and its other inputs come from constants and the batch size only; it ends
    where a row is narrowest, and is folded only when that is at most half the product's
    width (a reduction worth a new weight). Row-wise and linear are checked numerically too:
    a fold that would not give the same values is skipped.
    """
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    dims = {i.name: i.type.tensor_type.shape.dim for i in graph.input}
    batch_inputs = {name for name, d in dims.items() if d and d[0].dim_param}  # a dynamic first axis
    constant = _constants(graph, inits, batch_inputs)  # once: a fold only removes readers of these
    folded: dict[tuple, str] = {}  # each explained class folds the same weight: stored once
    count, gone = 0, set()
    for node in list(graph.node):
        if node.output[0] in gone:
            continue
        product = _product(graph, node, inits)
        if product is None:
            continue
        x, weight, transpose, nodes, y = product
        chain = _chain(graph, y, constant)
        if not chain:
            continue
        matrix = _as_rows(inits[weight], transpose)
        result = _evaluate(proto, y, chain, matrix)
        if result is None:
            continue
        end, value, shape = result
        key = (value.shape, value.tobytes())
        name = folded.get(key)
        if name is None:
            from onnx import numpy_helper

            name = f"{weight}__folded_{len(folded)}"
            graph.initializer.append(numpy_helper.from_array(value, name))
            folded[key] = name
        gone.update(n.output[0] for n in [*nodes, *chain[: end + 1]])
        _replace(graph, nodes, chain[: end + 1], x, name, shape)
        count += 1
    if count:
        _drop_dead(graph)
        weight_as_operand_a(graph)  # several explained classes read the folded weight: one pre-packed copy
        log.debug("%d gradient products folded into their reductions", count)
    return count


def _product(graph, node, inits):
    """``(X, weight, transpose, nodes, Y)`` where ``Y = X @ M`` with ``M = weight`` or its transpose."""
    if node.op_type == "MatMul" and node.input[0] in inits and len(inits[node.input[0]].dims) == 2:
        # weight_as_operand_a's form: Transpose(MatMul(W, Transpose(X))) = X @ W^T
        xt = _producer(graph, node.input[1])
        after = _readers(graph, node.output[0])
        if xt is None or xt.op_type != "Transpose" or _perm(xt) != [1, 0] or len(after) != 1:
            return None
        if after[0].op_type != "Transpose" or _perm(after[0]) != [1, 0]:
            return None
        return xt.input[0], node.input[0], True, [xt, node, after[0]], after[0].output[0]
    if node.op_type in ("Gemm", "MatMul") and node.input[1] in inits and len(inits[node.input[1]].dims) == 2:
        if len(node.input) > 2 and node.input[2]:  # a bias makes the product affine
            return None
        attrs = {a.name: (a.f if a.type == a.FLOAT else a.i) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0:
            return None
        return node.input[0], node.input[1], bool(attrs.get("transB", 0)), [node], node.output[0]
    return None


def _constants(graph, inits, batch_inputs) -> set[str]:
    """Values computed from constants and the batch size only."""
    constant = set(inits)
    for node in graph.node:
        if node.op_type == "Shape" and node.input[0] in batch_inputs and _shape_slice(node) == (0, 1):
            constant.update(node.output)
        elif node.input and all(i in constant or not i for i in node.input) and node.op_type != "Shape":
            constant.update(node.output)
    return constant


def _chain(graph, start, constant: set[str]) -> list:
    """The linear ops that follow ``start``, one reader each, other inputs ``constant``."""
    chain, value = [], start
    while True:
        readers = _readers(graph, value)
        if len(readers) != 1 or value in {o.name for o in graph.output}:
            return chain
        node = readers[0]
        others = [i for i in node.input if i != value]
        if node.op_type not in _LINEAR or list(node.input).count(value) != 1 or not all(i in constant for i in others):
            return chain
        if node.op_type == "Div" and node.input[0] != value:  # c / g is not linear in g
            return chain
        chain.append(node)
        value = node.output[0]


def _evaluate(proto, start, chain, matrix):
    """``(index of the chain's last op, folded weight, row shape)``; None where it does not pay or fails a check."""
    from onnx import helper
    from onnx.reference import ReferenceEvaluator

    graph = proto.graph
    produced = {o for n in chain for o in n.output}
    needed = {i for n in chain for i in n.input if i and i != start and i not in produced}
    inits = {i.name: i for i in graph.initializer}
    feeds_shape, support_outputs, frontier = set(), set(), set(needed)
    while frontier:  # the constant side: nodes that compute the chain's other inputs
        name = frontier.pop()
        if name in inits or name in support_outputs or name in feeds_shape:
            continue
        node = _producer(graph, name)
        if node.op_type == "Shape":
            feeds_shape.add(name)
            continue
        support_outputs.update(node.output)
        frontier.update(i for i in node.input if i)
    support = [n for n in graph.node if n.output[0] in support_outputs]
    outputs = [o for n in chain for o in n.output[:1]]
    used = {i for n in [*support, *chain] for i in n.input}
    model = helper.make_model(
        helper.make_graph(
            [*support, *chain],
            "chain",
            [helper.make_tensor_value_info(start, 1, None)]
            + [helper.make_tensor_value_info(n, 7, [1]) for n in sorted(feeds_shape)],
            [helper.make_tensor_value_info(o, 1, None) for o in outputs],
            [i for i in graph.initializer if i.name in used],
        ),
        opset_imports=list(proto.opset_import),
        ir_version=proto.ir_version,
    )
    evaluator = ReferenceEvaluator(model)

    def run(rows):
        feeds = {start: rows, **{n: np.array([len(rows)], np.int64) for n in feeds_shape}}
        return evaluator.run(None, feeds)

    try:
        probe = np.random.default_rng(0).standard_normal((2, matrix.shape[1])).astype(np.float32)
        values = run(probe)
        widths = [v.size // 2 if v.ndim and v.shape[0] == 2 else None for v in values]
        end = min((w, i) for i, w in enumerate(widths) if w is not None)[1]
        if widths[end] * 2 > matrix.shape[1]:
            return None
        # row-wise and linear: each row alone, and a combination of rows, give the same values
        alone = np.concatenate([run(probe[i : i + 1])[end] for i in range(2)])
        mixed = run(probe[:1] * 2 - probe[1:] * 3)[end]
        scale = np.abs(values[end]).max() + 1e-30
        if not np.allclose(alone, values[end], rtol=0, atol=1e-5 * scale):
            return None
        if not np.allclose(mixed, values[end][:1] * 2 - values[end][1:] * 3, rtol=0, atol=1e-5 * scale * 5):
            return None
        rows = [run(np.ascontiguousarray(matrix[i : i + _ROWS]))[end] for i in range(0, len(matrix), _ROWS)]
    except Exception as exc:  # an op the reference evaluator cannot run here: leave the graph as it is
        log.debug("gradient fold skipped at %s: %s", start, exc)
        return None
    value = np.concatenate(rows)
    shape = list(value.shape[1:])
    return end, np.ascontiguousarray(value.reshape(len(value), math.prod(shape)).T, dtype=np.float32), shape


def _replace(graph, product_nodes, chain, x, folded, shape) -> None:
    from onnx import helper, numpy_helper

    out = chain[-1].output[0]
    index = list(graph.node).index(product_nodes[0])
    product = out if len(shape) == 1 else f"{out}__folded"
    # stored transposed, as torch.onnx stores Linear weights: weight_as_operand_a reads it as A where needed
    new = [helper.make_node("Gemm", [x, folded], [product], name=f"{out}__folded_mm", transB=1)]
    if len(shape) != 1:
        target = f"{out}__folded_shape"
        graph.initializer.append(numpy_helper.from_array(np.array([-1, *shape], np.int64), target))
        new.append(helper.make_node("Reshape", [product, target], [out], name=f"{out}__folded_rs"))
    for node in [*product_nodes, *chain]:
        graph.node.remove(node)
    for offset, node in enumerate(new):
        graph.node.insert(index + offset, node)


def _as_rows(init, transpose: bool) -> np.ndarray:
    """``M`` of ``Y = X @ M``: the weight, or its transpose, row ``k`` being ``Y`` for ``X = e_k``."""
    from onnx import numpy_helper

    weight = numpy_helper.to_array(init)
    return weight.T if transpose else weight


def _producer(graph, name):
    return next((n for n in graph.node if name in n.output), None)


def _readers(graph, name) -> list:
    return [n for n in graph.node if name in n.input]


def _perm(node) -> list[int]:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), [])


def _shape_slice(node) -> tuple:
    attrs = {a.name: a.i for a in node.attribute}
    return attrs.get("start", 0), attrs.get("end")
