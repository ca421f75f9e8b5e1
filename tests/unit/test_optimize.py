"""The input-space optimiser: constraints, step rules, keep-best, trace, transforms, side effects.

Objectives here are quadratics and linear functions whose optimisers over ball ∩ box are known in
closed form, so each test checks the optimiser against an independent answer.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from reprlab.core.optimize import (
    InputOptimizer,
    OptimizeConfigError,
    compose,
    jitter,
    rotation,
)
from reprlab.errors import ReprlabError

SHAPE = (2, 6, 6)


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _linf(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).abs().amax(dim=1)


def _l2(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1)


def _squared_distance(target: torch.Tensor):
    """Per-example ‖x - target‖² [n]: minimised over ball ∩ box by the projection of target."""
    return lambda x: (x - target).flatten(1).pow(2).sum(dim=1)


# --- the constraint ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    norm=st.sampled_from(["linf", "l2"]),
    eps=st.one_of(st.floats(0.0, 3.0), st.just(math.inf)),
    step=st.sampled_from(["sign", "l2", "grad", "adam"]),
    step_size=st.floats(1e-3, 5.0),
    maximize=st.booleans(),
)
def test_every_iterate_stays_in_ball_and_box(seed, norm, eps, step, step_size, maximize):
    # A random linear objective pushes every coordinate hard in a random direction, and the start
    # is arbitrary (far outside both sets): only the projection keeps the result feasible.
    generator = _seeded(seed)
    centre = torch.rand(3, *SHAPE, generator=generator)
    weights = torch.randn(3, *SHAPE, generator=generator)
    start = 4 * torch.randn(3, *SHAPE, generator=generator)
    iterates = []

    def objective(x: torch.Tensor) -> torch.Tensor:
        iterates.append(x.detach())
        return (x * weights).flatten(1).sum(dim=1)

    optimizer = InputOptimizer(
        steps=3, step_size=step_size, step=step, norm=norm, eps=eps, maximize=maximize
    )
    result = optimizer(objective, centre, start=start)
    distance = _linf if norm == "linf" else _l2
    for x in [*iterates, result.x]:
        assert x.min() >= 0 and x.max() <= 1
        if eps != math.inf:
            assert distance(x - centre).max() <= eps * (1 + 1e-5) + 1e-6


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_random_start_lies_in_ball_and_box_and_is_replayed(norm):
    centre = torch.rand(50, *SHAPE, generator=_seeded())
    optimizer = InputOptimizer(steps=0, step_size=0.1, norm=norm, eps=0.3, random_start=True)
    objective = _squared_distance(centre)
    first = optimizer(objective, centre, generator=_seeded(4)).x
    again = optimizer(objective, centre, generator=_seeded(4)).x
    distance = _linf if norm == "linf" else _l2
    assert torch.equal(first, again)
    assert distance(first - centre).max() <= 0.3 + 1e-6 and first.min() >= 0 and first.max() <= 1
    assert distance(first - centre).mean() > 0.1  # it did move away from the centre


# --- each step rule finds the known optimum ------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "step_size", "steps", "tolerance"),
    [("grad", 0.25, 60, 1e-5), ("adam", 0.02, 400, 3e-3), ("sign", 0.01, 100, 0.01)],
)
def test_step_rules_converge_to_the_minimiser_in_the_box(step, step_size, steps, tolerance):
    # Target partly outside [0, 1]: the constrained minimiser is clamp(target, 0, 1).
    generator = _seeded(1)
    target = 1.6 * torch.rand(4, *SHAPE, generator=generator) - 0.3
    start = torch.rand(4, *SHAPE, generator=generator)
    optimizer = InputOptimizer(steps=steps, step_size=step_size, step=step, maximize=False)
    result = optimizer(_squared_distance(target), start, start=start)
    assert (result.x - target.clamp(0, 1)).abs().max() <= tolerance
    assert (start - target.clamp(0, 1)).abs().max() > 0.5  # it had far to go


def test_l2_steps_reach_the_minimiser_within_one_step_and_keep_best_gets_closer():
    # Fixed-length steps oscillate around the minimiser at distance < step_size; the best
    # iterate under the objective is no farther than the last one.
    generator = _seeded(2)
    target = 0.2 + 0.6 * torch.rand(4, *SHAPE, generator=generator)
    start = torch.rand(4, *SHAPE, generator=generator)
    objective = _squared_distance(target)
    options = {"steps": 80, "step_size": 0.05, "step": "l2", "maximize": False}
    last = InputOptimizer(**options)(objective, start, start=start)
    best = InputOptimizer(**options, keep_best=True)(objective, start, start=start)
    assert _l2(last.x - target).max() <= 0.05 + 1e-6
    assert torch.all(_l2(best.x - target) <= _l2(last.x - target) + 1e-7)


@pytest.mark.parametrize("step", ["grad", "l2"])
def test_active_l2_ball_gives_the_projection_of_the_target(step):
    # ‖x - t‖² over the L2 ball around c (well inside the box), t far away: the minimiser is
    # c + ε (t - c) / ‖t - c‖, the ball's point nearest the target.
    generator = _seeded(3)
    centre = 0.4 + 0.2 * torch.rand(3, *SHAPE, generator=generator)
    direction = torch.randn(3, *SHAPE, generator=generator)
    target = centre + direction / _l2(direction).view(-1, 1, 1, 1)  # at distance 1
    eps = 0.1
    expected = centre + eps * (target - centre)  # ‖t - c‖ = 1
    step_size = {"grad": 0.2, "l2": 0.02}[step]
    optimizer = InputOptimizer(
        steps=150, step_size=step_size, step=step, norm="l2", eps=eps, maximize=False
    )
    result = optimizer(_squared_distance(target), centre)
    assert _l2(result.x - expected).max() <= 2e-3
    assert _l2(result.x - centre).max() <= eps + 1e-6


def test_sign_steps_reach_the_corner_of_an_active_linf_ball_when_maximising():
    # Maximising -‖x - t‖² = minimising ‖x - t‖², t beyond the cube in every coordinate: the
    # optimum is clamp(t, c - ε, c + ε), reached exactly by sign steps.
    generator = _seeded(5)
    centre = 0.3 + 0.4 * torch.rand(3, *SHAPE, generator=generator)
    signs = torch.randint(0, 2, centre.shape, generator=generator) * 2 - 1
    target = centre + 0.5 * signs
    eps = 0.05
    squared = _squared_distance(target)
    optimizer = InputOptimizer(steps=6, step_size=0.01, step="sign", norm="linf", eps=eps)
    result = optimizer(lambda x: -squared(x), centre)
    assert torch.allclose(result.x, centre + eps * signs, atol=1e-6)
    assert torch.allclose(result.value, -squared(result.x))


def test_l2_step_with_zero_gradient_does_not_move():
    start = torch.rand(2, *SHAPE, generator=_seeded())
    result = InputOptimizer(steps=3, step_size=0.5, step="l2")(
        lambda x: 0 * x.sum((1, 2, 3)), start
    )
    assert torch.equal(result.x, start)


def test_first_adam_step_moves_each_coordinate_by_the_learning_rate():
    # Bias-corrected Adam's first step is lr · g / (|g| + 1e-8) ≈ lr · sign(g) per coordinate.
    start = torch.full((2, *SHAPE), 0.5)
    weights = torch.randn(2, *SHAPE, generator=_seeded(6))
    optimizer = InputOptimizer(steps=1, step_size=0.01, step="adam")
    result = optimizer(lambda x: (x * weights).flatten(1).sum(1), start)
    assert torch.allclose(result.x - start, 0.01 * weights.sign(), atol=1e-6)


def test_given_start_is_projected_and_used():
    centre = torch.full((2, *SHAPE), 0.5)
    start = torch.rand(2, *SHAPE, generator=_seeded(7))
    optimizer = InputOptimizer(steps=0, step_size=0.1, norm="linf", eps=0.1)
    result = optimizer(_squared_distance(centre), centre, start=start)
    assert torch.equal(result.x, start.clamp(0.4, 0.6))


# --- keep-best, success, trace ---------------------------------------------------------------


def _bump_objective(peaks: list[int], successes: dict[int, int] | None = None):
    """Value at call t: sum(x) - 100 (t - peak)², peaking at call ``peaks[i]`` for example i.

    With start 0 and sign steps of 0.01 in the box, iterate t is 0.01·t everywhere, so the best
    iterate of example i is 0.01·peaks[i]. ``successes`` maps example -> the one call at which it
    reports success.
    """
    calls = []
    peak = torch.tensor(peaks, dtype=torch.float32)

    def objective(x: torch.Tensor):
        t = len(calls)
        calls.append(t)
        values = x.flatten(1).sum(dim=1) - 100 * (t - peak) ** 2
        if successes is None:
            return values
        success = torch.tensor([successes.get(i) == t for i in range(len(peaks))])
        return values, success

    return objective, calls


def test_keep_best_returns_the_best_iterate_of_each_example():
    start = torch.zeros(3, *SHAPE)
    optimizer = InputOptimizer(steps=8, step_size=0.01, step="sign", keep_best=True)
    objective, calls = _bump_objective([2, 5, 8])
    result = optimizer(objective, start)
    assert len(calls) == 9  # 8 steps + the final iterate
    for i, peak in enumerate([2, 5, 8]):
        assert torch.allclose(result.x[i], torch.full(SHAPE, 0.01 * peak))
    assert torch.allclose(result.value, 0.01 * torch.tensor([2.0, 5.0, 8.0]) * start[0].numel())
    last = InputOptimizer(steps=8, step_size=0.01, step="sign")(
        _bump_objective([2, 5, 8])[0], start
    )
    assert torch.allclose(last.x, torch.full_like(start, 0.08))


def test_success_ranks_above_the_value():
    start = torch.zeros(2, *SHAPE)
    optimizer = InputOptimizer(steps=6, step_size=0.01, step="sign", keep_best=True)
    objective, _ = _bump_objective([5, 5], successes={0: 1})
    result = optimizer(objective, start)
    assert torch.allclose(result.x[0], torch.full(SHAPE, 0.01))  # succeeded at call 1
    assert torch.allclose(result.x[1], torch.full(SHAPE, 0.05))  # never succeeded: best value
    assert result.success.tolist() == [True, False]


def _threshold_objective(thresholds: list[float]):
    """Value sum(x) per example; success once the mean pixel reaches ``thresholds[i]``."""
    calls = []
    limit = torch.tensor(thresholds)

    def objective(x: torch.Tensor):
        calls.append(len(calls))
        return x.flatten(1).sum(dim=1), x.flatten(1).mean(dim=1) >= limit - 1e-6

    return objective, calls


def test_stop_on_success_freezes_each_example_at_its_first_success():
    # sign steps of 0.01 from 0: iterate t is 0.01·t, so example i succeeds first at t = 100·thr.
    start = torch.zeros(3, *SHAPE)
    objective, _ = _threshold_objective([0.03, 0.05, 2.0])  # the last never succeeds
    optimizer = InputOptimizer(
        steps=10, step_size=0.01, step="sign", stop_on_success=True, trace=True
    )
    result = optimizer(objective, start)
    assert torch.allclose(result.x[0], torch.full(SHAPE, 0.03))
    assert torch.allclose(result.x[1], torch.full(SHAPE, 0.05))
    assert torch.allclose(result.x[2], torch.full(SHAPE, 0.10))  # ran the whole budget
    assert result.success.tolist() == [True, True, False]
    assert result.trace.shape == (11, 3)
    frozen_value = 0.03 * start[0].numel()
    assert torch.allclose(result.trace[3:, 0], torch.full((8,), frozen_value))
    # Without the stop the same run moves on past the first success.
    plain = InputOptimizer(steps=10, step_size=0.01, step="sign")(
        _threshold_objective([0.03, 0.05, 2.0])[0], start
    )
    assert torch.allclose(plain.x, torch.full_like(start, 0.10))


def test_stop_on_success_ends_the_loop_once_every_example_is_frozen():
    start = torch.zeros(2, *SHAPE)
    objective, calls = _threshold_objective([0.02, 0.04])
    optimizer = InputOptimizer(steps=50, step_size=0.01, step="sign", stop_on_success=True)
    result = optimizer(objective, start)
    assert len(calls) == 5 + 1  # iterates 0..4 (both succeeded by 4), then the final value
    assert result.success.all()
    with pytest.raises(ValueError, match="values, success"):
        optimizer(lambda x: x.flatten(1).sum(dim=1), start)


def test_trace_of_a_convex_objective_decreases_and_ends_at_the_value():
    generator = _seeded(8)
    target, start = torch.rand(4, *SHAPE, generator=generator), torch.rand(4, *SHAPE)
    objective = _squared_distance(target)
    optimizer = InputOptimizer(steps=20, step_size=0.05, step="grad", maximize=False, trace=True)
    result = optimizer(objective, start, start=start)
    assert result.trace.shape == (21, 4)
    assert torch.allclose(result.trace[0], objective(start))
    assert torch.equal(result.trace[-1], result.value)
    assert torch.all(result.trace[1:] <= result.trace[:-1] + 1e-6)
    assert torch.all(result.trace[-1] < 0.1 * result.trace[0])


def test_batch_objective_moves_every_example_and_traces_one_value():
    generator = _seeded(9)
    target, start = torch.rand(4, *SHAPE, generator=generator), torch.rand(4, *SHAPE)
    optimizer = InputOptimizer(
        steps=60, step_size=0.02, step="sign", norm="linf", eps=1.0, maximize=False,
        batch_objective=True, trace=True,
    )  # fmt: skip
    result = optimizer(lambda x: (x - target).pow(2).mean(), start, start=start)
    assert result.trace.shape == (61,) and result.value.shape == ()
    assert (result.x - target).abs().max() <= 0.02 + 1e-6


# --- transforms ----------------------------------------------------------------------------------


def _shift_of(shifted: torch.Tensor, x: torch.Tensor, pixels: int) -> tuple[int, int] | None:
    """The (dy, dx) with |dy|, |dx| <= pixels that circularly shifts x to ``shifted``, or None."""
    for dy in range(-pixels, pixels + 1):
        for dx in range(-pixels, pixels + 1):
            if torch.equal(shifted, torch.roll(x, (dy, dx), (-2, -1))):
                return dy, dx
    return None


def test_jitter_evaluates_shifted_inputs_but_returns_a_feasible_unshifted_iterate():
    centre = torch.rand(2, *SHAPE, generator=_seeded(10))
    pairs = []

    def recorded_jitter(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        shifted = jitter(2)(x, generator)
        pairs.append((x.detach(), shifted.detach()))
        return shifted

    def objective(x: torch.Tensor) -> torch.Tensor:
        return x[:, :, :2, :2].flatten(1).sum(1)  # rewards a corner: the gradient goes there

    optimizer = InputOptimizer(
        steps=12, step_size=0.05, step="sign", norm="linf", eps=0.1, transform=recorded_jitter
    )
    result = optimizer(objective, centre, generator=_seeded(0))
    assert (result.x - centre).abs().max() <= 0.1 + 1e-6
    assert result.x.min() >= 0 and result.x.max() <= 1
    assert len(pairs) == 13  # every evaluation went through the transform
    shifts = [_shift_of(shifted, x, 2) for x, shifted in pairs]
    assert None not in shifts and any(shift != (0, 0) for shift in shifts)
    # Through the shifts the gradient reaches more than the rewarded 2x2 corner.
    moved = (result.x - centre).abs().amax(dim=1).flatten(1) > 1e-6  # [n, h*w]
    assert moved.sum(dim=1).min() > 4
    again = optimizer(objective, centre, generator=_seeded(0)).x
    assert torch.equal(result.x, again)  # replayed by the generator


def test_jitter_is_a_circular_shift_within_its_range():
    x = torch.rand(3, *SHAPE, generator=_seeded(11))
    transform = jitter(2)
    generator = _seeded(12)
    found = set()
    for _ in range(40):
        shift = _shift_of(transform(x, generator), x, 2)
        assert shift is not None
        found.add(shift)
    assert len(found) > 10  # many of the 25 shifts occur


def test_rotation_keeps_the_range_and_rotates_a_symmetric_image_to_itself():
    x = torch.rand(4, *SHAPE, generator=_seeded(13))
    rotated = rotation(10)(x, _seeded(14))
    assert rotated.shape == x.shape and rotated.min() >= 0 and rotated.max() <= 1
    assert not torch.allclose(rotated, x, atol=1e-3)
    assert torch.allclose(rotation(0)(x, _seeded(14)), x, atol=1e-5)
    # A constant image is invariant under rotation with border padding.
    flat = torch.full((2, *SHAPE), 0.3)
    assert torch.allclose(rotation(30)(flat, _seeded(15)), flat, atol=1e-6)
    both = compose(jitter(1), rotation(5))(x, _seeded(16))
    assert both.shape == x.shape


# --- side effects and errors ---------------------------------------------------------------------


def test_no_parameter_gets_a_gradient_and_no_grad_and_bf16_autocast_are_fine():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(72, 5))
    x = torch.rand(3, *SHAPE, generator=_seeded(17))
    optimizer = InputOptimizer(steps=4, step_size=0.05, step="l2", norm="l2", eps=0.5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        result = optimizer(lambda v: net(v)[:, 0], x)
    assert all(p.grad is None for p in net.parameters())
    assert result.x.dtype == torch.float32 and not result.x.requires_grad
    assert result.value.dtype == torch.float32
    assert (net(result.x)[:, 0] > net(x)[:, 0]).all()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"batch_objective": True, "keep_best": True}, "batch-level"),
        ({"batch_objective": True, "restarts": 2, "random_start": True, "eps": 0.1}, "batch"),
        ({"random_start": True}, "finite eps"),
        ({"step": "newton"}, "step rule"),
        ({"norm": "l1", "eps": 0.1}, "norm"),
        ({"eps": -1.0}, "eps"),
        ({"restarts": 2}, "random_start"),
        ({"trace": True, "restarts": 2, "random_start": True, "eps": 0.1}, "trace"),
        ({"stop_on_success": True, "batch_objective": True}, "stop_on_success"),
    ],
)
def test_impossible_settings_are_refused(options, message):
    with pytest.raises(OptimizeConfigError, match=message) as error:
        InputOptimizer(**{"steps": 1, "step_size": 0.1, **options})
    assert isinstance(error.value, ReprlabError) and isinstance(error.value, ValueError)
    assert "\n" not in str(error.value)


def test_objective_shape_mismatch_is_refused():
    x = torch.rand(3, *SHAPE)
    with pytest.raises(ValueError, match="one value per example"):
        InputOptimizer(steps=1, step_size=0.1)(lambda v: v.sum(), x)
    with pytest.raises(ValueError, match="scalar"):
        InputOptimizer(steps=1, step_size=0.1, batch_objective=True)(lambda v: v.sum((1, 2, 3)), x)
    with pytest.raises(ReprlabError, match="not both"):
        InputOptimizer(steps=1, step_size=0.1, random_start=True, eps=0.1)(
            lambda v: v.sum((1, 2, 3)), x, start=x
        )
