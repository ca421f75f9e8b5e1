"""The findings study's criteria (reprlab.methods.findings): known matrices and curves in, the
pre-registered verdict out, on both sides of every threshold."""

from __future__ import annotations

import numpy as np
import pytest

from reprlab.methods import findings as f


def blocky(n: int, block: range, inside: float, outside: float) -> np.ndarray:
    """A CKA-like matrix: 1 on the diagonal, ``inside`` within ``block``, ``outside`` elsewhere."""
    m = np.full((n, n), outside)
    for i in block:
        for j in block:
            m[i, j] = inside
    np.fill_diagonal(m, 1.0)
    return m


def test_far_pair_mean_counts_only_distant_pairs() -> None:
    m = np.array([[1.0, 0.9, 0.2], [0.9, 1.0, 0.9], [0.2, 0.9, 1.0]])
    assert f.far_pair_mean(m, 2) == pytest.approx(0.2)
    assert f.far_pair_mean(m, 1) == pytest.approx((0.9 * 4 + 0.2 * 2) / 6)
    with pytest.raises(ValueError, match="apart"):
        f.far_pair_mean(m, 3)


def test_block_score_finds_a_block_and_not_in_a_uniform_matrix() -> None:
    block = blocky(12, range(6, 11), inside=0.9, outside=0.3)
    assert f.block_score(block) == pytest.approx(0.6)
    uniform = blocky(12, range(0), inside=0.0, outside=0.7)
    assert f.block_score(uniform) == pytest.approx(0.0)


def test_block_structure_verdicts() -> None:
    assert f.block_structure([0.05, 0.1], [0.3, 0.5]).verdict == f.HOLDS
    assert f.block_structure([0.05, 0.25], [0.3, 0.5]).verdict == f.FAILS  # a robust block
    assert f.block_structure([0.05], [0.1, 0.5]).verdict == f.FAILS  # a standard model lacks one
    assert f.block_structure([], [0.3]).verdict == f.NOT_MEASURED


def test_specialisation_needs_every_robust_above_every_standard() -> None:
    assert f.specialisation([0.6, 0.7], [0.4, 0.5]).verdict == f.HOLDS
    assert f.specialisation([0.45, 0.7], [0.4, 0.5]).verdict == f.FAILS


def test_same_layer_fall() -> None:
    falling = np.linspace(0.95, 0.3, 12)
    flat = np.full(12, 0.8)
    assert f.same_layer_fall([falling, falling]).verdict == f.HOLDS
    v = f.same_layer_fall([falling, flat])
    assert v.verdict == f.FAILS
    assert v.numbers["pair 1: deep"] == pytest.approx(0.8)


def test_overfitting_peak_and_depth() -> None:
    assert f.overfitting_peak([0.4, 0.5, 0.6]) is None
    assert f.overfitting_peak([0.4, 0.6, 0.6]) is None  # a tie at the end is no overfitting
    assert f.overfitting_peak([0.4, 0.6, 0.55]) == 2
    deep_moved = {1: np.ones(12) * 0.5, 2: np.r_[np.full(6, 0.95), np.full(6, 0.7)]}
    shallow_moved = {2: np.r_[np.full(6, 0.6), np.full(6, 0.9)]}
    assert f.overfitting_depth([[0.4, 0.6, 0.55]], [deep_moved]).verdict == f.HOLDS
    assert f.overfitting_depth([[0.4, 0.6, 0.55]], [shallow_moved]).verdict == f.FAILS
    none = f.overfitting_depth([[0.4, 0.5, 0.6]], [deep_moved])
    assert none.verdict == f.NOT_MEASURED
    assert "0.400 0.500 0.600" in str(none.numbers)


def test_middle_third_of_eleven_points() -> None:
    assert list(f.middle_third(11)) == [3, 4, 5, 6, 7]
    assert list(f.middle_third(9)) == [3, 4, 5]


def test_stitch_verdicts() -> None:
    assert f.stitch_clean({"a": [0.95, 0.99], "b": [0.91, 1.0]}).verdict == f.HOLDS
    assert f.stitch_clean({"a": [0.95, 0.89]}).verdict == f.FAILS
    drop_recover = [0.5, 0.45, 0.3, 0.1, 0.1, 0.15, 0.2, 0.3, 0.4, 0.45, 0.48]
    v = f.stitch_robust_shape(drop_recover, reference=0.6)
    assert v.verdict == f.HOLDS
    assert v.numbers["r at last point"] == pytest.approx(0.8)
    follows_front = [0.55] * 11
    assert f.stitch_robust_shape(follows_front, reference=0.6).verdict == f.FAILS
    no_recovery = [0.5, 0.4, 0.3, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
    assert "last point" in f.stitch_robust_shape(no_recovery, reference=0.6).why
    assert f.stitch_robust_shape(drop_recover, reference=0.0).verdict == f.NOT_MEASURED


def test_stir_gap() -> None:
    assert f.stir_gap([0.9, 0.92], [0.6, 0.7], standard_cka=0.95).verdict == f.HOLDS
    assert f.stir_gap([0.75, 0.92], [0.6, 0.7], standard_cka=0.95).verdict == f.FAILS
    v = f.stir_gap([0.9, 0.92], [0.6, 0.7], standard_cka=0.75)
    assert v.verdict == f.FAILS and "CKA" in v.why


def test_engstrom_and_zhu_verdicts() -> None:
    assert f.closer_inversions(2.0, 4.0, 0.6, 0.2).verdict == f.HOLDS
    assert f.closer_inversions(2.0, 4.0, 0.1, 0.2).verdict == f.FAILS
    eps = [0.5, 1.0, 2.0]
    assert f.fig4_gap(eps, [0.5, 0.15, 0.05], [0.9, 0.7, 0.4]).verdict == f.HOLDS
    assert f.fig4_gap(eps, [0.5, 0.25, 0.05], [0.9, 0.7, 0.4]).verdict == f.FAILS
    assert f.less_vulnerable(0.8, 1.5).verdict == f.HOLDS
    assert f.less_vulnerable(1.6, 1.5).verdict == f.FAILS
    bounds = {"std": 0.5, "rob": 0.9}
    heads = [("std", "linear/standard", 0.1), ("rob", "linear/adversarial", 0.85)]
    assert f.bound_holds(bounds, heads).verdict == f.HOLDS
    beaten = f.bound_holds(bounds, [*heads, ("rob", "linear/standard", 0.95)])
    assert beaten.verdict == f.FAILS and "rob linear/standard" in beaten.why
