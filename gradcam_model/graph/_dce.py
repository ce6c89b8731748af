"""Dead-code elimination that also removes dead in-place ops, alias-aware, for traced FX graphs.

``Graph.eliminate_dead_code`` keeps every op that writes to an argument (``relu_``, ``add_``):
it cannot tell a write that nobody reads from one that matters. AblationCAM reruns the whole
model on each image repeated ``C`` times, with the target layer's output replaced, and
everything that only fed that layer is then dead, in-place ReLUs and residual ``add_``
included: ``C`` times the network below the layer that would run for nothing.

Here a node is live when the output needs it, when it is a side effect other than a write
(an assertion), or when it writes to a tensor that shares storage with a live node or with
a graph input or buffer (views are followed through the op schemas' alias annotations).
"""

from __future__ import annotations

from torch import fx

__all__ = ["eliminate_dead_writes"]


def _alias_groups(graph: fx.Graph) -> dict[fx.Node, fx.Node]:
    """Each node -> the root of the nodes whose outputs may share its storage."""
    parent: dict[fx.Node, fx.Node] = {n: n for n in graph.nodes}

    def root(n: fx.Node) -> fx.Node:
        while parent[n] is not n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for node in graph.nodes:
        schema = getattr(node.target, "_schema", None) if node.op == "call_function" else None
        if schema is None:
            continue
        returned = {s for r in schema.returns if r.alias_info is not None for s in r.alias_info.after_set}
        for arg, value in zip(schema.arguments, node.args, strict=False):
            if isinstance(value, fx.Node) and arg.alias_info is not None and arg.alias_info.before_set & returned:
                parent[root(node)] = root(value)
    return {n: root(n) for n in graph.nodes}


def _writes(node: fx.Node) -> list[fx.Node]:
    """The argument nodes ``node`` writes to (empty for a functional op)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return []
    return [
        value
        for arg, value in zip(schema.arguments, node.args, strict=False)
        if isinstance(value, fx.Node) and arg.alias_info is not None and arg.alias_info.is_write
    ]


def eliminate_dead_writes(graph: fx.Graph) -> int:
    """Remove every call whose result and writes nobody reads; return how many were removed."""
    group = _alias_groups(graph)
    pinned = {group[n] for n in graph.nodes if n.op in ("placeholder", "get_attr")}  # writes to inputs stay
    live: set[fx.Node] = set()
    calls = [n for n in graph.nodes if n.op == "call_function"]
    writers = {n: _writes(n) for n in calls}
    stack = [n for n in graph.nodes if n.op != "call_function"]
    stack += [n for n in calls if n.is_impure() and not writers[n]]  # assertions and the like
    while True:
        while stack:
            node = stack.pop()
            if node in live:
                continue
            live.add(node)
            stack.extend(node.all_input_nodes)
        live_groups = {group[n] for n in live} | pinned
        stack = [n for n in calls if n not in live and any(group[w] in live_groups for w in writers[n])]
        if not stack:
            break
    dead = [n for n in reversed(calls) if n not in live]
    for node in dead:
        graph.erase_node(node)
    return len(dead)
