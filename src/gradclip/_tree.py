"""Pytrees in Python, for the operations that return arrays in the input's structure or work
per leaf (AGC, per-example clipping, the functional copies). The rule is the compiled parse's:
lists, tuples (named tuples too) and dicts are containers, nested to any depth; everything
else, None included, is a leaf; leaves depth first, dicts in their iteration order. A tree that
``_inputs.as_sequence`` flattened with ``jax.tree_util`` (a ``JaxLeaves``) carries its treedef,
and JAX rebuilds it."""

from __future__ import annotations

from typing import Any

from ._inputs import JaxLeaves

__all__ = ["flatten", "unflatten"]

_MAX_DEPTH = 200


def flatten(tree: Any) -> tuple[list[Any], Any]:
    """``(leaves, spec)``: the leaves in order, and what ``unflatten`` needs to rebuild the
    containers around new leaves."""
    if isinstance(tree, JaxLeaves):
        return list(tree), tree
    leaves: list[Any] = []

    def visit(node: Any, depth: int) -> Any:
        if depth > _MAX_DEPTH:
            raise TypeError(
                f"grads is nested more than {_MAX_DEPTH} levels deep (a container that "
                "contains itself?)"
            )
        if isinstance(node, dict):
            return (type(node), [(k, visit(v, depth + 1)) for k, v in node.items()])
        if isinstance(node, (list, tuple)):
            return (type(node), [visit(v, depth + 1) for v in node])
        leaves.append(node)
        return None

    spec = visit(tree, 0)
    return leaves, spec


def unflatten(spec: Any, leaves: list[Any]) -> Any:
    """The containers of ``spec`` around ``leaves`` (in order)."""
    if isinstance(spec, JaxLeaves):
        return spec.treedef.unflatten(leaves)
    it = iter(leaves)

    def build(node: Any) -> Any:
        if node is None:
            return next(it)
        kind, children = node
        if issubclass(kind, dict):
            items = [(k, build(c)) for k, c in children]
            try:
                return kind(items)
            except TypeError:  # a dict subclass that cannot be built from items
                return dict(items)
        values = [build(c) for c in children]
        if issubclass(kind, tuple) and hasattr(kind, "_fields"):  # a named tuple
            return kind(*values)
        try:
            return kind(values)
        except TypeError:
            return tuple(values) if issubclass(kind, tuple) else list(values)

    return build(spec)
