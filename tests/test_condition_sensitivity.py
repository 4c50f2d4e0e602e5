"""scripts/condition_sensitivity.py: what the restorer's conditioning reads, and how far it is off a reference."""
import copy

import pytest
import torch


@pytest.fixture(scope="module")
def cs(load_script):
    return load_script("condition_sensitivity")


def test_measure_against_itself_and_a_moved_lqa(cs, tiny_factory):
    torch.manual_seed(0)
    model = tiny_factory(seed=0)
    x = torch.rand(2, 3, 32, 32)
    x_hq = (x + 0.1 * torch.randn(2, 3, 32, 32)).clamp(0, 1)
    labels = ["Noise", "Haze"]
    out = cs.measure(model, copy.deepcopy(model), x, x_hq, labels)
    for k in ("answer shift, true label", "answer shift, wrong label"):
        assert out[k] >= 0 and out[k] == out[k]  # finite, not NaN
    assert len(out["1 round, own answer"]) == 2 and len(out["input"]) == 2
    # against itself: no shift, and the reference's restorer fed this LQA is this model
    assert out["conditioning shift against the reference (this A_Q)"] == pytest.approx(0.0, abs=1e-6)
    assert out["conditioning shift against the reference (its A_Q)"] == pytest.approx(0.0, abs=1e-6)
    assert out["1 round, this LQA -> reference's A_Q and restorer"] == pytest.approx(out["1 round, own answer"], abs=1e-4)
    assert out["1 round, the reference"] == pytest.approx(out["1 round, own answer"], abs=1e-4)

    moved = copy.deepcopy(model)
    moved.lqa.load_state_dict(tiny_factory(seed=1).lqa.state_dict())
    out = cs.measure(moved, model, x, x_hq, labels)
    assert out["conditioning shift against the reference (this A_Q)"] > 1e-3
    assert "conditioning shift against the reference (this A_Q)" not in cs.measure(model, None, x, x_hq, labels)
