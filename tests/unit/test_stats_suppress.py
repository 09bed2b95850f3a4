"""Small-group suppression: no published cell under k, and no suppressed cell recoverable.

The recoverability check is brute force and independent of the implementation: every tree gives
one equation per parent (parent = sum of children); a suppressed cell can be worked out from the
published cells iff its unit vector lies in the row space of those equations restricted to the
suppressed cells (rank test). Trees are random (hypothesis) and hand-made.
"""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compliance.stats.suppress import Tree, propagate_bounds, suppress


def recoverable(parent: list[int], hidden: set[int]) -> set[int]:
    """Suppressed cells whose value follows from the published cells and every total."""
    unknown = sorted(hidden)
    col = {node: i for i, node in enumerate(unknown)}
    rows = []
    for p in range(len(parent)):
        kids = [c for c, q in enumerate(parent) if q == p]
        if not kids:
            continue
        row = np.zeros(len(unknown))
        if p in col:
            row[col[p]] += 1
        for c in kids:
            if c in col:
                row[col[c]] -= 1
        if row.any():
            rows.append(row)
    if not rows:
        return set()
    a = np.array(rows)
    base = np.linalg.matrix_rank(a)
    out = set()
    for node, i in col.items():
        unit = np.zeros(len(unknown))
        unit[i] = 1
        if np.linalg.matrix_rank(np.vstack([a, unit])) == base:
            out.add(node)
    return out


def group_covers(tree: Tree, hidden: set[int], lb: list[int], k: int) -> list[int]:
    """Parents (published) whose suppressed children together may describe fewer than k."""
    bad = []
    for p in range(len(tree.parent)):
        if p in hidden:
            continue
        gone = [c for c, q in enumerate(tree.parent) if q == p and c in hidden]
        if not gone:
            continue
        cover = sum(lb[c] for c in gone) if tree.disjoint[p] else max(lb[c] for c in gone)
        if len(gone) < 2 or cover < k:
            bad.append(p)
    return bad


@st.composite
def trees(draw):
    n = draw(st.integers(min_value=1, max_value=40))
    parent = [-1] + [draw(st.integers(min_value=0, max_value=i - 1)) for i in range(1, n)]
    lb = draw(st.lists(st.integers(min_value=0, max_value=40), min_size=n, max_size=n))
    # consistent sizes, as in real tables: a leaf with no consumers is an empty cell, and a
    # parent's events are the sum of its children's
    size = [0.0] * n
    for i in reversed(range(n)):
        kids = [c for c in range(n) if parent[c] == i]
        size[i] = sum(size[c] for c in kids) if kids else float(lb[i] + 1 if lb[i] else 0)
        if size[i] == 0:
            lb[i] = 0
    disjoint = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return Tree(parent, lb, size, disjoint)


@settings(
    max_examples=400,
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
)
@given(tree=trees(), k=st.integers(min_value=5, max_value=15))
def test_random_trees_hold(tree: Tree, k: int):
    result = suppress(tree, k)
    hidden = set(result.cells)
    lb = propagate_bounds(tree)
    # no published cell under k (empty cells, describing nobody, are published as zeros)
    assert all(lb[i] >= k for i in range(len(tree.parent)) if i not in hidden and tree.size[i])
    # every primary cell is hidden; nothing published can be recomputed into a hidden one
    assert {i for i, v in enumerate(lb) if v < k and tree.size[i]} <= hidden
    assert recoverable(tree.parent, hidden) == set()
    # sums that subtraction reveals describe at least k consumers
    assert group_covers(tree, hidden, lb, k) == []


def test_lone_small_cell_gets_the_smallest_sibling_as_complement():
    # total(100) -> a(3), b(20), c(50), d(12)
    tree = Tree([-1, 0, 0, 0, 0], [100, 3, 20, 50, 12], [1, 3, 20, 50, 12], [True] * 5)
    result = suppress(tree, 10)
    assert result.primary == {1}
    assert result.complementary == {4}  # d is the smallest published sibling, and 3 + 12 >= 10


def test_complements_until_the_hidden_sum_reaches_k():
    # overlapping children: the union bound is the largest child, so one must reach k
    tree = Tree([-1, 0, 0, 0, 0], [60, 2, 4, 11, 40], [1, 2, 4, 11, 40], [False] * 5)
    result = suppress(tree, 10)
    assert result.primary == {1, 2}
    assert result.complementary == {3}


def test_suppressed_parent_needs_a_suppressed_child():
    # total -> A(5: a1 3, a2 2) and B(30: b1 15, b2 15): A is primary; B complements it at the
    # top, and B's children would reveal B unless one of them is hidden too.
    parent = [-1, 0, 0, 1, 1, 2, 2]
    lb = [35, 5, 30, 3, 2, 15, 15]
    tree = Tree(parent, lb, [float(x) for x in lb], [True] * 7)
    result = suppress(tree, 10)
    hidden = set(result.cells)
    assert {1, 2, 3, 4} <= hidden
    assert hidden & {5, 6}
    assert recoverable(parent, hidden) == set()


def test_no_sibling_left_hides_the_parent():
    # client(12) has two campaigns of 4 and 8 (overlapping): hiding both protects nothing
    # (largest is 8 < 10), so the client itself goes, and a sibling client complements it.
    parent = [-1, 0, 0, 1, 1]
    lb = [40, 12, 28, 4, 8]
    tree = Tree(parent, lb, [float(x) for x in lb], [True, False, False, False, False])
    result = suppress(tree, 10)
    hidden = set(result.cells)
    assert {1, 3, 4} <= hidden and 2 in hidden
    assert recoverable(parent, hidden) == set()


def test_small_total_hides_everything():
    tree = Tree([-1, 0, 0], [9, 5, 4], [9, 5, 4], [True] * 3)
    assert suppress(tree, 10).cells == {0, 1, 2}


def test_empty_cells_are_published_not_used_as_complements():
    # weeks with no events describe nobody: publishing their zeros is safe, hiding them is
    # no protection
    tree = Tree([-1, 0, 0, 0, 0], [30, 3, 0, 0, 25], [30, 3, 0, 0, 25], [False] * 5)
    result = suppress(tree, 10)
    assert result.cells == {1, 4}


def test_only_child_is_its_parent():
    # a client with one campaign: the campaign *is* the client's cell, whatever its own bound
    tree = Tree([-1, 0, 0, 1], [40, 20, 20, 6], [40, 20, 20, 6], [True, False, False, False])
    result = suppress(tree, 10)
    assert result.cells == frozenset()
    assert result.lb[3] == 20


def test_the_checker_catches_primary_only_suppression():
    # primary suppression alone leaks: the total minus the published cells is the hidden one,
    # and a hidden parent whose children are all published is their sum
    assert recoverable([-1, 0, 0, 0], {1}) == {1}
    assert recoverable([-1, 0, 0, 1, 1, 2], {1, 2}) == {1, 2}
    assert recoverable([-1, 0, 0, 1, 1], {1, 2, 3}) == set()
