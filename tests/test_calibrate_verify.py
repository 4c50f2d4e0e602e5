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


def test_a_clean_answer_stops_the_simulated_loop(cv):
    """With stop_when_clean the loop keeps the first round the LQA calls clean, whatever the
    verifier would say about the next; without it the answer is ignored."""
    ps = np.array([[60.0, 40.0, 35.0], [20.0, 23.0, 25.0]])
    lo = np.array([[3.0, 3.0], [3.0, 3.0]])
    called = np.array([[True, False], [False, True]])
    assert cv.stops(lo, 0.0, called, stop_when_clean=True) == [0, 1]
    assert cv.simulate(ps, lo, 0.0, called, True) == (np.mean([60.0, 23.0]), 0.5)
    assert cv.stops(lo, 0.0, called, stop_when_clean=False) == [2, 2]


def test_gate_rates_count_the_rounds_the_loop_asks_about(cv):
    ps = np.array([[20.0, 19.0, 22.0], [20.0, 21.0, 20.9], [30.0, 29.0, 35.0]])
    lo = np.array([[-1.0, 5.0], [2.0, 1.0], [2.0, -3.0]])
    # margin 0: sample 0 rejects round 1 (1 dB worse: right) and is never asked about round 2;
    # sample 1 accepts round 1 (1 dB better: right) and round 2 (0.1 dB: a near-tie, not counted);
    # sample 2 accepts round 1 (1 dB worse: wrong), then rejects round 2 (6 dB better: wrong)
    worse, better = cv.gate_rates(ps, lo, 0.0)
    assert worse == 0.5 and better == 0.5


def test_pick_margin_meets_the_gate_targets_or_balances_them(cv):
    scores = {0.0: (23.5, 2.0), 1.0: (23.3, 1.5), 2.0: (23.0, 1.0), 3.0: (23.6, 0.5)}
    assert cv.pick_margin(scores, 2.5) == 3.0  # no rates: the mean PSNR alone
    # only 1.0 rejects 95 % of the worse rounds and accepts 80 % of the better ones
    meets = {0.0: (0.8, 0.9), 1.0: (0.96, 0.85), 2.0: (0.99, 0.5), 3.0: (1.0, 0.1)}
    assert cv.pick_margin(scores, 2.5, meets) == 1.0
    # 0.0 and 1.0 both meet them: the higher mean PSNR
    assert cv.pick_margin(scores, 2.5, meets | {0.0: (0.95, 0.8)}) == 0.0
    # none meets both: right most often on the two kinds (0.775 at 1.0), not the highest PSNR
    # (3.0, a gate that restores almost nothing)
    none = {0.0: (0.5, 0.95), 1.0: (0.85, 0.7), 2.0: (0.95, 0.4), 3.0: (1.0, 0.1)}
    assert cv.pick_margin(scores, 2.5, none) == 1.0
    # equally right: the higher mean PSNR
    assert cv.pick_margin(scores, 2.5, none | {0.0: (0.75, 0.8)}) == 0.0
    # the rounds budget still comes first
    assert cv.pick_margin(scores, 1.2, none) == 2.0


def test_recipe_pool_knows_the_experiments(cv):
    assert cv.T.RECIPES["compact"].pool.synthetic == 0
    assert cv.recipe_pool("compact").bright_p > 0  # its verify stage's own pool, not the recipe's
    assert cv.recipe_pool("compact").dark_p > 0
    assert cv.recipe_pool("compact-clean").bright_p > 0 and cv.recipe_pool("compact-clean").dark_p == 0
    assert cv.recipe_pool("compact-verify").dark_p == 0  # the model built in before, from experiments/
    with pytest.raises(SystemExit, match="unknown recipe"):
        cv.recipe_pool("nope")


def test_pick_clean_margin_keeps_the_recall_on_clean_crops(cv):
    cl = np.array([2.6, 2.4, 3.0, 1.6, 2.2, 0.3, 2.9, 2.7, 2.5, 2.8])
    m = cv.pick_clean_margin(cl, 0.9)  # 9 of 10 must stay above it: below 1.6, not below 0.3
    assert m == 1.5 and np.mean(cl > m) >= 0.9
    assert cv.pick_clean_margin(cl, 1.0) == 0.25
    assert cv.pick_clean_margin(cl, 0.5) == 2.5
    # a margin only holds "Clean" back: an LQA that rarely says it gets none
    assert cv.pick_clean_margin(np.array([-1.0, -2.0, 0.5]), 0.9) is None


def test_choose_gate_scores_the_degraded_crops_with_its_stop(cv):
    """Stopping on "Clean" at round 0 keeps a clean crop at its 60 dB but costs a degraded one
    its gain; the degraded crops' mean PSNR says what the stop costs."""
    ps = np.array([[60.0, 60.0, 60.0], [20.0, 24.0, 25.0], [22.0, 25.0, 26.0]])
    lo = np.array([[3.0, 3.0], [3.0, 3.0], [3.0, 3.0]])
    degraded = np.array([False, True, True])
    best, psnr, _, _ = cv.choose_gate(ps, lo, None, degraded, 4.0, 0.95, 0.8)
    assert best == 0.0 and psnr == 25.5  # every round accepted
    called = np.array([[True, False], [True, False], [False, False]])  # degraded crop 1 called clean
    best, psnr, _, _ = cv.choose_gate(ps, lo, called, degraded, 4.0, 0.95, 0.8)
    assert psnr == np.mean([20.0, 26.0])
