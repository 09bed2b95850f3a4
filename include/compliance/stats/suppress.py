"""Small-group suppression over hierarchical tables, so no published figure describes < k people.

Every report table is a tree whose nodes are cells and whose parents are their published totals:
total -> industry -> client -> campaign; total -> device type -> OS; window -> week. A node's
figures are the sum of its children's, which is what a reader can exploit by subtraction.

1. Primary: a cell whose distinct consumers may be fewer than k is suppressed. The count used is
   a *provable lower bound* (`lb`), so imprecision can only suppress more, never publish a small
   cell.
2. Complementary, to a fixed point, for every parent and its children:
   - a published parent with suppressed children: at least two of them are suppressed, and
     together they cover at least k consumers (otherwise `parent - published children` would
     reveal the lone cell, or a sum describing fewer than k people). The smallest published
     sibling is added until that holds; if no sibling is left, the parent is suppressed;
   - a suppressed parent with children: at least one child is suppressed (otherwise the sum of
     its children would reveal it).
   With both rules, every suppressed cell can be moved by some change of the suppressed values
   that leaves every published figure as it is (raise it, lower a suppressed sibling or raise
   the suppressed parent, and follow a suppressed child down each changed cell), so no
   combination of published cells and totals determines it. The tests check this by brute
   force: for every suppressed cell, linear algebra over all the trees' equations.
3. If the total itself is below k, everything is suppressed.

"Covers at least k consumers" adds up lower bounds only where children partition consumers
(`disjoint`: industries and clients, since a consumer belongs to one tenant); elsewhere (a
consumer reads two campaigns, uses two devices, returns every week) the largest child's bound is
the only safe lower bound of the union.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Tree:
    """Nodes 0..n-1; `parent[i]` is -1 for the (single) root."""

    parent: list[int]
    lb: list[int]  # provable lower bound of the node's distinct consumers
    size: list[float]  # tie-break when choosing the smallest cell (e.g. its events)
    disjoint: list[bool]  # the node's children partition its consumers

    def __post_init__(self) -> None:
        n = len(self.parent)
        if not (len(self.lb) == len(self.size) == len(self.disjoint) == n):
            raise ValueError("parent, lb, size and disjoint must have one entry per node")
        if sum(1 for p in self.parent if p == -1) != 1:
            raise ValueError("a suppression tree has exactly one root")


@dataclass(frozen=True)
class Suppressed:
    primary: frozenset[int]
    complementary: frozenset[int]
    lb: list[int]  # the bounds after propagation through the tree

    @property
    def cells(self) -> frozenset[int]:
        return self.primary | self.complementary

    def status(self, i: int) -> str:
        if i in self.primary:
            return "primary"
        return "complementary" if i in self.complementary else ""


def _order(tree: Tree) -> tuple[int, list[list[int]], list[int]]:
    n = len(tree.parent)
    children: list[list[int]] = [[] for _ in range(n)]
    root = -1
    for i, p in enumerate(tree.parent):
        if p == -1:
            root = i
        else:
            children[p].append(i)
    order, queue = [], deque([root])
    while queue:
        node = queue.popleft()
        order.append(node)
        queue.extend(children[node])
    if len(order) != n:
        raise ValueError("the parent links do not form one tree")
    return root, children, order


def propagate_bounds(tree: Tree) -> list[int]:
    """Tighten the lower bounds using the tree: a parent holds its children's consumers (the
    sum for disjoint children, else the largest), and an only child *is* its parent's cell."""
    _, children, order = _order(tree)
    lb = list(tree.lb)
    for node in reversed(order):
        kids = children[node]
        if kids:
            inner = sum(lb[c] for c in kids) if tree.disjoint[node] else max(lb[c] for c in kids)
            lb[node] = max(lb[node], inner)
    for node in order:
        kids = children[node]
        if len(kids) == 1:
            lb[kids[0]] = max(lb[kids[0]], lb[node])
    return lb


def suppress(tree: Tree, k: int) -> Suppressed:
    root, children, order = _order(tree)
    lb = propagate_bounds(tree)
    everything = frozenset(range(len(tree.parent)))
    # An empty cell (no events) describes nobody: its zeros are published, and hiding it would
    # protect nothing, so it is never chosen as a complement either.
    primary = frozenset(i for i in everything if lb[i] < k and tree.size[i] > 0)
    if root in primary:
        return Suppressed(primary, everything - primary, lb)
    hidden = set(primary)

    def smallest(candidates: list[int]) -> int:
        return min(candidates, key=lambda i: (lb[i], tree.size[i], i))

    def covered(node: int, cells: list[int]) -> bool:
        if len(cells) < 2:
            return False
        cover = sum(lb[c] for c in cells) if tree.disjoint[node] else max(lb[c] for c in cells)
        return cover >= k

    changed = True
    while changed:
        changed = False
        for node in order:
            kids = children[node]
            if not kids:
                continue
            gone = [c for c in kids if c in hidden]
            if node in hidden:
                left = [c for c in kids if tree.size[c] > 0]
                if not gone and left:
                    hidden.add(smallest(left))
                    changed = True
                continue
            if not gone:
                continue
            before = len(hidden)
            while not covered(node, gone):
                left = [c for c in kids if c not in hidden and tree.size[c] > 0]
                if not left:
                    if node == root:  # the total cannot protect its own children
                        return Suppressed(primary, everything - primary, lb)
                    hidden.add(node)
                    break
                pick = smallest(left)
                hidden.add(pick)
                gone.append(pick)
            changed = changed or len(hidden) != before
    return Suppressed(primary, frozenset(hidden) - primary, lb)
