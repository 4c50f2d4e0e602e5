"""The verify-margin calibration: the loop it simulates and the margin it picks."""
import numpy as np
import pytest


@pytest.fixture(scope="module")
def cv(load_script):
    return load_script("calibrate_verify")


def test_simulate_stops_at_first_round_not_above_margin(cv):
    # psnr[:, 0] is the input; log-odds[:, k] judges round k+1 against round k
    ps = np.array([[20.0, 23.0, 24.0, 23.5, 23.0], [18.0, 17.0, 19.0, 20.0, 21.0]])
    lo = np.array([[2.0, 1.0, 0.2, 3.0], [0.1, 5.0, 5.0, 5.0]])
    # margin 0.5: sample 0 keeps round 2 (round 3's 0.2 fails), sample 1 keeps the input
    assert cv.simulate(ps, lo, 0.5) == (np.mean([24.0, 18.0]), 1.0)
    # margin below every log-odds: all 4 rounds
    assert cv.simulate(ps, lo, -1.0) == (np.mean([23.0, 21.0]), 4.0)


def test_pick_margin_respects_rounds_budget(cv):
    scores = {0.0: (23.32, 4.0), 0.3: (23.47, 3.03), 0.5: (23.45, 1.70), 1.0: (23.24, 0.8)}
    assert cv.pick_margin(scores, max_rounds=4.0) == 0.3
    assert cv.pick_margin(scores, max_rounds=2.5) == 0.5
    # nothing within budget: the fewest rounds
    assert cv.pick_margin(scores, max_rounds=0.5) == 1.0
    # ties to 0.001 dB go to the smallest |margin|
    assert cv.pick_margin({-0.5: (23.0, 2.0), 0.2: (23.0004, 2.0), 1.0: (22.0, 1.0)}, 2.5) == 0.2
