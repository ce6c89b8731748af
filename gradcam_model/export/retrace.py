"""Spare torch.onnx a second full re-trace of our graph when it would change nothing.

``torch.onnx.export(dynamo=True)`` traces the module with ``torch.export`` and then
re-traces the whole program once more through ``run_decompositions`` to lower the
ops that ONNX has no translation for. Our graph is already plain ATen from
``make_fx``; what that table still finds in it is in-place ops (``relu_`` after a
convolution, ``add_`` in a residual), and the re-trace of a graph holding the
forward pass *and* its gradient, with symbolic sizes, was about two thirds of the
export time (measured: timm efficientnetv2_rw_t at 224, 115 of 174 s under cProfile).

So, before the export, in-place ops whose input nothing reads afterwards become
their out-of-place versions (the same values: nobody sees the mutation) and the few
ops of that table (``aten._safe_softmax`` from attention) become calls of their
decomposition, which ``torch.export`` traces anyway; during the export the re-trace
runs only when some op of the program is still in the table, otherwise the program
goes to translation as it is (measured: efficientnetv2_rw_t 81 -> 22 s, vit_tiny
73 -> 40 s, the same ONNX graph and outputs).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import operator

import torch
from torch import fx

__all__ = ["decompose_only_when_needed", "prepare_graph"]

log = logging.getLogger(__name__)


def prepare_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of ``gm`` (buffers shared) ready for torch.onnx: in-place ops made out-of-place where
    nothing sees the mutation, ops ONNX cannot express replaced by their decomposition.

    ``aten.relu_(x)`` becomes ``aten.relu(x)`` when ``x`` is an intermediate result (not
    an input or buffer), is not a view of another tensor, and no node after it reads ``x``.
    An op in torch.onnx's decomposition table (``aten._safe_softmax`` from attention)
    becomes a call of that decomposition, which ``torch.export`` traces into its ops.
    """
    graph = copy.deepcopy(gm.graph)
    order = {node: i for i, node in enumerate(graph.nodes)}
    table = _onnx_decompositions()
    changed = decomposed = 0
    for node in graph.nodes:
        functional = _functional_version(node)
        if functional is not None:
            mutated = node.args[0]
            if not isinstance(mutated, fx.Node) or mutated.op != "call_function" or _aliases_input(mutated):
                continue
            if any(order[user] > order[node] for user in mutated.users if user is not node):
                continue
            node.target = functional
            changed += 1
        elif node.op == "call_function" and node.target in table:
            node.target = _with_own_lists(table[node.target])
            decomposed += 1
    log.debug("before the export: %d in-place op(s) made out-of-place, %d decomposed", changed, decomposed)
    return fx.GraphModule(gm, graph)


@functools.cache
def _onnx_decompositions() -> dict:
    """torch.onnx's decomposition table: the ops its translation lacks, with torch's decompositions."""
    try:
        from torch.onnx._internal.exporter import _decomp, _registration

        registry = _registration.ONNXRegistry.from_torchlib()
        return _decomp.create_onnx_friendly_decomposition_table(set(_decomp.get_onnx_implemented_overloads(registry)))
    except (ImportError, AttributeError):  # pragma: no cover - another torch layout: torch.onnx decomposes them
        return {}


@functools.cache
def _with_own_lists(decomposition):
    """``decomposition`` called with fresh copies of its list arguments.

    When ``torch.export`` runs our graph it hands each call a node's list argument as fx's
    ``immutable_list``; torch's decomposition of ``aten._unsafe_masked_index`` (which its
    reflection-pad backward emits: timm's BlurPool2d in tresnet) clamps its ``indices`` in
    place and raised ``'immutable_list' object does not support mutation``. Decompositions
    that ``run_decompositions`` calls itself get plain lists, so only our substitution needs
    this. (Not ``functools.wraps``: fx would then write the call as torch's own function.)
    """

    def call(*args, **kwargs):
        args = [list(a) if isinstance(a, list) else a for a in args]
        kwargs = {k: list(v) if isinstance(v, list) else v for k, v in kwargs.items()}
        return decomposition(*args, **kwargs)

    return call


def _functional_version(node: fx.Node):
    """``aten.relu.default`` for a ``aten.relu_.default`` node that writes its first argument, else None."""
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return None
    schema = op._schema
    first = schema.arguments[0] if schema.arguments else None
    if not (schema.name.endswith("_") and first is not None and first.alias_info and first.alias_info.is_write):
        return None
    namespace, name = schema.name.split("::", 1)
    packet = getattr(getattr(torch.ops, namespace), name[:-1], None)
    functional = getattr(packet, op._overloadname, None) if packet is not None else None
    if functional is None or any(a.alias_info for a in functional._schema.arguments):
        return None
    return functional


def _aliases_input(node: fx.Node) -> bool:
    """Whether ``node``'s output may share memory with one of its inputs (a view, an in-place result)."""
    if node.target is operator.getitem and isinstance(node.args[0], fx.Node):  # one output of a multi-output op
        node = node.args[0]
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
        return True  # unknown: assume it does
    return any(r.alias_info is not None for r in op._schema.returns)


# assertion ops that torch.onnx removes after the decomposition step (_fx_passes.remove_assertion_nodes)
_REMOVED_LATER = {
    torch.ops.aten.sym_constrain_range_for_size.default,
    torch.ops.aten._assert_async.default,
    torch.ops.aten._assert_async.msg,
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten._assert_tensor_metadata.default,
}


def _drop_identities(program) -> None:
    """Remove the nodes of ``program`` that pass their input through unchanged and that torch.onnx
    would re-trace the whole program to lower: ``detach_`` (a constant made by ``torch.tensor``
    inside a traced function) and ``aten.to.dtype`` to the dtype the tensor already has
    (torch's adaptive-pooling decomposition). Seen on VGG19 at 128 px, where they alone
    cost a full re-trace (about 7 of the export's 17 s)."""
    graph = program.graph
    dropped = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or not isinstance(node.args[0] if node.args else None, fx.Node):
            continue
        source = node.args[0]
        value, before = node.meta.get("val"), source.meta.get("val")
        if node.target is torch.ops.aten.detach_.default:
            pass
        elif node.target is torch.ops.aten.to.dtype and not node.kwargs and len(node.args) == 2:
            if not (isinstance(value, torch.Tensor) and isinstance(before, torch.Tensor)):
                continue
            if before.dtype != node.args[1] or value.dtype != before.dtype:
                continue
        else:
            continue
        node.replace_all_uses_with(source)
        graph.erase_node(node)
        dropped += 1
    if dropped:
        program.graph_module.recompile()
        log.debug("before torch.onnx's decomposition: %d identity node(s) dropped", dropped)


@contextlib.contextmanager
def decompose_only_when_needed():
    """Within: torch.onnx re-traces a program through its decomposition table only when it holds an op of it.

    It replaces torch.onnx's ``_fx_passes.decompose_with_registry`` (private) for the
    duration; on a torch where that is not there, it does nothing and the export is
    just slower.
    """
    try:
        from torch.onnx._internal.exporter import _decomp, _fx_passes
    except ImportError:  # pragma: no cover - another torch layout
        yield
        return
    original = getattr(_fx_passes, "decompose_with_registry", None)
    if (
        original is None or getattr(_decomp, "get_onnx_implemented_overloads", None) is None
    ):  # pragma: no cover - another torch layout
        yield
        return

    def decompose(program, registry):
        # skip only when the translation has a function for every op as it stands: training-IR
        # programs can also hold composite ops (aten.to) that only the re-trace lowers
        translatable = set(_decomp.get_onnx_implemented_overloads(registry)) | _REMOVED_LATER
        _drop_identities(program)
        ops = sorted(
            {
                str(n.target)
                for n in program.graph.nodes
                if n.op == "call_function" and n.target is not operator.getitem and n.target not in translatable
            }
        )
        if ops:
            log.info("torch.onnx: decomposing %s", ", ".join(ops))
            return original(program, registry)
        log.info("torch.onnx: nothing to decompose, no re-trace")
        return program

    _fx_passes.decompose_with_registry = decompose
    try:
        yield
    finally:
        _fx_passes.decompose_with_registry = original
