"""runtime.module_mode: modes applied for a block and every submodule's own flag restored."""

from __future__ import annotations

import pytest
from torch import nn

from reprlab.runtime import module_mode


def _mixed() -> nn.Sequential:
    """A model in train mode whose BatchNorm the caller froze in eval mode."""
    net = nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3), nn.Dropout(0.5)).train()
    net[1].eval()
    return net


@pytest.mark.parametrize(
    ("mode", "inside"),
    [("eval", [False, False, False, False]), ("train", [True, True, True, True])],
)
def test_mode_is_applied_and_the_mixed_state_comes_back(mode, inside):
    a, b = _mixed(), _mixed()
    before = [m.training for m in a.modules()]
    with module_mode(a, b, mode=mode):
        assert [m.training for m in a.modules()] == inside
        assert [m.training for m in b.modules()] == inside
    assert [m.training for m in a.modules()] == before == [m.training for m in b.modules()]


def test_keep_changes_nothing_but_restores_changes_made_inside():
    net = _mixed()
    before = [m.training for m in net.modules()]
    with module_mode(net, mode="keep"):
        assert [m.training for m in net.modules()] == before
        net.eval()
    assert [m.training for m in net.modules()] == before


def test_modes_come_back_after_an_exception_and_shared_submodules_once():
    shared = nn.BatchNorm1d(3).eval()
    a, b = nn.Sequential(shared, nn.ReLU()).train(), nn.Sequential(shared).train()
    shared.eval()
    with pytest.raises(RuntimeError), module_mode(a, b, mode="train"):
        assert shared.training
        raise RuntimeError("boom")
    assert not shared.training and a.training and b.training


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown module mode"), module_mode(nn.ReLU(), mode="x"):
        pass
