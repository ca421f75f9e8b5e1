"""The findings study's pre-registered criteria: pure functions from measured numbers to verdicts.

Each function takes the numbers a study measured and returns a :class:`Verdict` -- ``holds``,
``does not hold`` or ``not measured`` -- with the figures the criterion compared, so that the
report can quote them. The criteria are the ones ``docs/findings.md`` pre-registers; thresholds
are arguments with the registered values as defaults, never tuned to a result.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

HOLDS = "holds"
FAILS = "does not hold"
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Verdict:
    """A claim's verdict, the numbers behind it (name -> value) and one line of explanation."""

    verdict: str
    numbers: dict[str, float | str] = field(default_factory=dict)
    why: str = ""


def _matrix(m: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
    a = np.asarray(m, dtype=float)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {a.shape}")
    return a


def far_pair_mean(matrix: Sequence[Sequence[float]] | np.ndarray, min_gap: int) -> float:
    """Mean of M[i, j] over tap pairs at least ``min_gap`` apart (|i - j| >= min_gap, both
    orders): how similar distant layers are (Cianfarani et al.'s "lack of specialisation")."""
    m = _matrix(matrix)
    i, j = np.indices(m.shape)
    mask = np.abs(i - j) >= min_gap
    if not mask.any():
        raise ValueError(f"no tap pair is {min_gap} apart in a {len(m)}-tap matrix")
    return float(m[mask].mean())


def block_score(matrix: Sequence[Sequence[float]] | np.ndarray, min_length: int = 3) -> float:
    """The strongest block of a within-model CKA matrix: the maximum over contiguous tap runs
    [a, b] of at least ``min_length`` taps (not the whole matrix) of (mean M[i, j], i != j in the
    run) - (mean M[i, k], i in the run, k outside it). 0 for a constant matrix; close to 1 for a
    run of identical layers unlike the rest."""
    m = _matrix(matrix)
    n = len(m)
    best = -math.inf
    for a in range(n):
        for b in range(a + min_length - 1, n):
            if b - a + 1 == n:
                continue
            inside = list(range(a, b + 1))
            outside = [k for k in range(n) if k < a or k > b]
            block = m[np.ix_(inside, inside)]
            within = (block.sum() - np.trace(block)) / (len(inside) * (len(inside) - 1))
            across = m[np.ix_(inside, outside)].mean()
            best = max(best, float(within - across))
    if best == -math.inf:
        raise ValueError(f"a {n}-tap matrix has no run of {min_length} taps besides the whole")
    return best


def specialisation(robust: Sequence[float], standard: Sequence[float]) -> Verdict:
    """(a) Holds iff every robust model's distant-pair mean CKA exceeds every standard one's."""
    if not robust or not standard:
        return Verdict(NOT_MEASURED, why="a within-model CKA matrix is missing")
    numbers = {"robust (min)": min(robust), "standard (max)": max(standard)}
    ok = min(robust) > max(standard)
    return Verdict(
        HOLDS if ok else FAILS,
        numbers,
        "robust layers far apart are more alike than standard ones"
        if ok
        else "a standard model's distant layers are as alike as a robust model's",
    )


def block_structure(
    robust: Sequence[float], standard: Sequence[float], threshold: float = 0.2
) -> Verdict:
    """(b) Holds iff every standard model's block score is >= ``threshold`` and no robust
    model's is."""
    if not robust or not standard:
        return Verdict(NOT_MEASURED, why="a within-model CKA matrix is missing")
    numbers = {"standard (min)": min(standard), "robust (max)": max(robust)}
    if min(standard) < threshold:
        return Verdict(FAILS, numbers, f"a standard model has no block (score < {threshold:g})")
    if max(robust) >= threshold:
        return Verdict(FAILS, numbers, f"a robust model keeps a block (score >= {threshold:g})")
    return Verdict(HOLDS, numbers, "blocks in every standard model, none in a robust one")


def same_layer_fall(
    curves: Sequence[Sequence[float]], count: int = 4, drop: float = 0.1
) -> Verdict:
    """(c) Holds iff for every std-robust pair, the mean same-tap CKA of the deepest ``count``
    taps is at least ``drop`` below that of the shallowest ``count``."""
    if not curves:
        return Verdict(NOT_MEASURED, why="no std-robust same-layer CKA")
    numbers: dict[str, float | str] = {}
    ok = True
    for k, curve in enumerate(curves):
        c = np.asarray(curve, dtype=float)
        if len(c) < 2 * count:
            raise ValueError(f"{len(c)} taps cannot give two disjoint groups of {count}")
        shallow, deep = float(c[:count].mean()), float(c[-count:].mean())
        numbers[f"pair {k}: shallow"] = shallow
        numbers[f"pair {k}: deep"] = deep
        ok = ok and deep <= shallow - drop
    return Verdict(
        HOLDS if ok else FAILS,
        numbers,
        f"deep same-layer CKA {'is' if ok else 'is not'} {drop:g} below shallow in every pair",
    )


def overfitting_peak(curve: Sequence[float]) -> int | None:
    """The 1-based epoch of the robust validation peak if it comes before the last, else None
    (no robust overfitting within the budget). Ties go to the later epoch."""
    c = list(curve)
    if len(c) < 2:
        return None
    top = max(c)
    peak = max(i for i, v in enumerate(c) if v == top) + 1
    return peak if peak < len(c) else None


def overfitting_depth(
    curves: Sequence[Sequence[float]], to_final: Sequence[Mapping[int, Sequence[float]]]
) -> Verdict:
    """(d) Per robust model: its validation robust-accuracy curve and, per earlier epoch, the
    per-tap CKA of that epoch's weights with the final ones (taps in depth order). Robust
    overfitting appears where the curve peaks before the last epoch; there the claim holds iff
    the deeper half's mean CKA(best, final) is below the shallower half's. Not measured when no
    model overfits."""
    if not curves:
        return Verdict(NOT_MEASURED, why="no validation curve")
    numbers: dict[str, float | str] = {}
    measured, ok = False, True
    for k, (curve, cka) in enumerate(zip(curves, to_final, strict=True)):
        numbers[f"model {k}: validation robust acc"] = " ".join(f"{v:.3f}" for v in curve)
        peak = overfitting_peak(curve)
        if peak is None:
            continue
        if peak not in cka:
            return Verdict(NOT_MEASURED, numbers, f"model {k} peaks at epoch {peak}, no snapshot")
        c = np.asarray(cka[peak], dtype=float)
        half = len(c) // 2
        shallow, deep = float(c[:half].mean()), float(c[half:].mean())
        numbers[f"model {k}: CKA(epoch {peak}, final) shallow"] = shallow
        numbers[f"model {k}: CKA(epoch {peak}, final) deep"] = deep
        measured = True
        ok = ok and deep < shallow
    if not measured:
        return Verdict(
            NOT_MEASURED, numbers, "no robust overfitting within the budget (no early peak)"
        )
    return Verdict(
        HOLDS if ok else FAILS,
        numbers,
        "deeper layers moved more after the peak" if ok else "deeper layers did not move more",
    )


def stitch_clean(relative: Mapping[str, Sequence[float]], floor: float = 0.9) -> Verdict:
    """(e) Holds iff the clean relative accuracy is >= ``floor`` at every stitch point of every
    pairing (pairing name -> relative accuracy per point)."""
    if not relative:
        return Verdict(NOT_MEASURED, why="no stitching run")
    numbers = {f"{name} (min)": float(min(values)) for name, values in relative.items()}
    ok = all(min(values) >= floor for values in relative.values())
    return Verdict(
        HOLDS if ok else FAILS,
        numbers,
        f"every stitch within {1 - floor:.0%} of its end model"
        if ok
        else f"some stitch falls below {floor:g} of its end model",
    )


def middle_third(count: int) -> range:
    """Indices of the middle third of ``count`` stitch points: [count // 3, 2 * count // 3)...
    rounded outward to whole points (11 points: 3..7)."""
    return range(count // 3, math.ceil(2 * count / 3))


def stitch_robust_shape(
    stitched: Sequence[float], reference: float, last_min: float = 0.7, middle_max: float = 0.5
) -> Verdict:
    """(f), (g) r(p) = stitched robust accuracy / ``reference`` (the front's robust accuracy).
    Holds iff r >= ``last_min`` at the last point and r <= ``middle_max`` at some point of the
    middle third: robust accuracy drops in the middle and recovers at the end."""
    if not stitched or reference is None or not math.isfinite(reference):
        return Verdict(NOT_MEASURED, why="no stitching run")
    if reference <= 0:
        return Verdict(NOT_MEASURED, {"front robust acc": reference}, "the front is not robust")
    r = [float(v) / reference for v in stitched]
    middle = [r[i] for i in middle_third(len(r))]
    numbers = {
        "front robust acc": float(reference),
        "r at last point": r[-1],
        "r min in middle third": min(middle),
        "r per point": " ".join(f"{v:.2f}" for v in r),
    }
    recovers, drops = r[-1] >= last_min, min(middle) <= middle_max
    if recovers and drops:
        return Verdict(HOLDS, numbers, "robust accuracy drops in the middle and recovers")
    why = []
    if not drops:
        why.append(f"no middle point at or below {middle_max:g}")
    if not recovers:
        why.append(f"the last point is below {last_min:g}")
    return Verdict(FAILS, numbers, "; ".join(why))


def stir_gap(
    robust: Sequence[float], standard: Sequence[float], standard_cka: float, margin: float = 0.1
) -> Verdict:
    """(h) ``robust``/``standard``: STIR of each pair in both directions. Holds iff every robust
    value exceeds every standard value by >= ``margin`` and every standard value is >= ``margin``
    below the standard pair's CKA."""
    if not robust or not standard or standard_cka is None:
        return Verdict(NOT_MEASURED, why="no STIR run")
    numbers = {
        "robust pair STIR (min)": float(min(robust)),
        "standard pair STIR (max)": float(max(standard)),
        "standard pair CKA": float(standard_cka),
    }
    above = min(robust) >= max(standard) + margin
    below_cka = max(standard) <= standard_cka - margin
    if above and below_cka:
        return Verdict(HOLDS, numbers, "robust pair shares more invariance; CKA overstates it")
    why = []
    if not above:
        why.append(f"robust pair not {margin:g} above the standard pair")
    if not below_cka:
        why.append(f"standard pair's STIR not {margin:g} below its CKA")
    return Verdict(FAILS, numbers, "; ".join(why))


def closer_inversions(
    robust_l2: float, standard_l2: float, robust_ssim: float, standard_ssim: float
) -> Verdict:
    """(i) Holds iff the robust model's median pixel L2 is below the standard one's and its
    median SSIM above."""
    values = (robust_l2, standard_l2, robust_ssim, standard_ssim)
    if any(v is None or not math.isfinite(v) for v in values):
        return Verdict(NOT_MEASURED, why="no inversion run")
    numbers = {
        "pixel L2 robust": robust_l2,
        "pixel L2 standard": standard_l2,
        "SSIM robust": robust_ssim,
        "SSIM standard": standard_ssim,
    }
    ok = robust_l2 < standard_l2 and robust_ssim > standard_ssim
    return Verdict(
        HOLDS if ok else FAILS,
        numbers,
        "robust inversions are closer in both" if ok else "not closer in both measures",
    )


def fig4_gap(
    eps: Sequence[float],
    standard: Sequence[float],
    robust: Sequence[float],
    standard_max: float = 0.2,
    robust_min: float = 0.5,
) -> Verdict:
    """(j) Holds iff at some ε the standard model's median normalised representation distance is
    < ``standard_max`` while the robust one's is > ``robust_min``."""
    if not eps:
        return Verdict(NOT_MEASURED, why="no Fig. 4 run")
    rows = list(zip(eps, standard, robust, strict=True))
    hits = [e for e, s, r in rows if s < standard_max and r > robust_min]
    numbers: dict[str, float | str] = {
        f"ε={e:g}": f"standard {s:.3f}, robust {r:.3f}" for e, s, r in rows
    }
    if hits:
        numbers["first such ε"] = float(hits[0])
        return Verdict(HOLDS, numbers, f"at ε={hits[0]:g} only the standard model is reached")
    return Verdict(FAILS, numbers, "no radius separates them by the registered margins")


def less_vulnerable(robust_rv: float, standard_rv: float) -> Verdict:
    """(k) Holds iff RV of the robust model is below the standard one's."""
    if any(v is None or not math.isfinite(v) for v in (robust_rv, standard_rv)):
        return Verdict(NOT_MEASURED, why="no vulnerability run")
    ok = robust_rv < standard_rv
    return Verdict(
        HOLDS if ok else FAILS,
        {"RV robust": robust_rv, "RV standard": standard_rv},
        "the robust logits are less vulnerable"
        if ok
        else "the robust logits are not less vulnerable",
    )


def bound_holds(bounds: Mapping[str, float], heads: Sequence[tuple[str, str, float]]) -> Verdict:
    """(l) ``bounds``: model -> Fano bound of its estimated worst-case MI; ``heads``: (model,
    head, adversarial accuracy). Holds iff no head beats its model's bound."""
    if not bounds or not heads:
        return Verdict(NOT_MEASURED, why="no vulnerability run")
    numbers: dict[str, float | str] = {f"bound {m}": float(b) for m, b in bounds.items()}
    beaten = []
    for model, head, acc in heads:
        numbers[f"{model} {head}"] = float(acc)
        if acc > bounds[model] + 1e-9:
            beaten.append(f"{model} {head}")
    if beaten:
        return Verdict(
            FAILS, numbers, "heads above the bound (unconverged estimate): " + ", ".join(beaten)
        )
    return Verdict(HOLDS, numbers, "every head within its model's bound")
