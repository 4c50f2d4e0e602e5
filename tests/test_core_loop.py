"""Semantics of RAR.run (loop.py) with the LQA's answers scripted.

RAR.assess and RAR.verify are monkeypatched with deterministic stubs; most tests also script
RAR.restore as "add 1" so the latent of an item tells its id and how many rounds it has accepted
(item i starts at 100 * i). One test keeps the real restorer to check the rollback bit-exactly.
"""

from __future__ import annotations

import json

import pytest
import torch

from rar_core import loop, prompts
from rar_core.model import RAR, Assessment, LatentError

H = W = 8  # latent size: a multiple of the tiny model's patch (2)


def item_ids(z: torch.Tensor) -> list[int]:
    return [int(torch.div(x.mean(), 100, rounding_mode="floor").item()) for x in z]


def accepted_so_far(z: torch.Tensor) -> list[int]:
    return [int(round(x.mean().item() % 100)) for x in z]


class Script:
    """Scripted LQA. verdicts[item] = list of accept (True) / reject (False) per verify call."""

    def __init__(self, verdicts: dict[int, list[bool]] | None = None, hidden_dim: int = 32,
                 clean: dict[int, int] | None = None):
        self.verdicts = verdicts or {}
        self.clean = clean or {}  # item -> after how many accepted rounds the LQA calls it clean
        self.hidden_dim = hidden_dim
        self.assess_calls: list[list[int]] = []  # item ids per call
        self.assess_rounds: list[list[int]] = []  # accepted-so-far per item per call
        self.verify_calls: list[list[int]] = []
        self.restore_calls: list[list[int]] = []
        self.verify_pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.asked: dict[int, int] = {}
        self.questions: list[tuple[str, str | None]] = []  # (kind, question) per assess / verify call

    def install(self, monkeypatch, restore: bool = True):
        script = self

        def assess(model, z, question=None, free=False):
            ids = item_ids(z) if restore else list(range(z.shape[0]))
            script.assess_calls.append(ids)
            script.questions.append(("identify", question))
            if restore:
                script.assess_rounds.append(accepted_so_far(z))
            n = len(script.assess_calls)
            done = accepted_so_far(z) if restore else [0] * len(ids)
            answers = ["Clean" if script.clean.get(i) == k else f"label-{i}-call-{n}" for i, k in zip(ids, done)]
            g = torch.Generator().manual_seed(n)
            hidden = [torch.randn(10 + i, script.hidden_dim, generator=g) for i in range(len(ids))]
            return Assessment(answers, hidden)

        def verify(model, z_new, z_prev, question=None):
            ids = item_ids(z_prev) if restore else list(range(z_prev.shape[0]))
            script.verify_calls.append(ids)
            script.questions.append(("compare", question))
            script.verify_pairs.append((z_new.clone(), z_prev.clone()))
            improved = []
            for i in ids:
                k = script.asked.get(i, 0)
                script.asked[i] = k + 1
                plan = script.verdicts.get(i, [])
                improved.append(plan[k] if k < len(plan) else True)
            text = ["Image A" if ok else "Image B" for ok in improved]
            return torch.tensor(improved), text

        def fake_restore(model, z, assessment, steps=None, on_tile=None):
            script.restore_calls.append(item_ids(z))
            assert len(assessment.answer) == z.shape[0] == len(assessment.hidden)
            return z + 1.0

        monkeypatch.setattr(RAR, "assess", assess)
        monkeypatch.setattr(RAR, "verify", verify)
        if restore:
            monkeypatch.setattr(RAR, "restore", fake_restore)
        return self


def start(batch: int) -> torch.Tensor:
    return torch.stack([torch.full((16, H, W), 100.0 * i) for i in range(batch)])


# ----- adaptive ----------------------------------------------------------------------------


def test_rollback_on_rejection_with_the_real_restorer(tiny_model, monkeypatch):
    script = Script({0: [True, True, False]}).install(monkeypatch, restore=False)
    z0 = torch.randn(1, 16, H, W, generator=torch.Generator().manual_seed(0))
    before = z0.clone()
    res = tiny_model.run(z0, max_rounds=6, steps=2)
    assert torch.equal(z0, before)  # the input latent is never modified
    assert res.rounds == [2]
    assert len(script.verify_calls) == 3  # stopped at the first rejection
    (new1, prev1), (new2, prev2), (new3, prev3) = script.verify_pairs
    assert torch.equal(prev1, z0)
    assert torch.equal(prev2, new1) and torch.equal(prev3, new2)  # accepted latents carry on
    assert not torch.equal(new3, new2)  # the rejected candidate was a real change...
    assert torch.equal(res.latent, new2)  # ...rolled back: the previous accepted latent is kept
    assert [t["accepted"] for t in res.trace[0]] == [True, True, False]
    assert [t["verdict"] for t in res.trace[0]] == ["Image A", "Image A", "Image B"]


def test_rejection_in_round_one_keeps_the_input(tiny_model, monkeypatch):
    Script({0: [False]}).install(monkeypatch)
    z0 = start(1)
    res = tiny_model.run(z0, max_rounds=4)
    assert res.rounds == [0]
    assert torch.equal(res.latent, z0)
    assert len(res.trace[0]) == 1 and res.trace[0][0]["accepted"] is False


@pytest.mark.parametrize("max_rounds", [1, 2, 5])
def test_stops_at_max_rounds(tiny_model, monkeypatch, max_rounds):
    script = Script().install(monkeypatch)  # always accepts
    res = tiny_model.run(start(2), max_rounds=max_rounds)
    assert res.rounds == [max_rounds, max_rounds]
    assert len(script.verify_calls) == len(script.assess_calls) == len(script.restore_calls) == max_rounds
    assert torch.equal(res.latent, start(2) + max_rounds)
    assert all(len(t) == max_rounds for t in res.trace)


def test_adaptive_reassesses_every_round(tiny_model, monkeypatch):
    script = Script().install(monkeypatch)
    res = tiny_model.run(start(1), max_rounds=3)
    assert script.assess_calls == [[0], [0], [0]]
    assert script.assess_rounds == [[0], [1], [2]]  # each assessment sees the latest latent
    assert [t["answer"] for t in res.trace[0]] == ["label-0-call-1", "label-0-call-2", "label-0-call-3"]


def test_batch_items_stop_at_different_rounds(tiny_model, monkeypatch):
    script = Script({0: [False], 1: [True, True, False], 2: [True] * 9}).install(monkeypatch)
    z0 = start(3)
    res = tiny_model.run(z0, max_rounds=4)
    assert res.rounds == [0, 2, 4]
    # finished items leave the batch: the stages only see the active ones
    assert script.assess_calls == [[0, 1, 2], [1, 2], [1, 2], [2]]
    assert script.verify_calls == script.restore_calls == script.assess_calls
    for i, n in enumerate([0, 2, 4]):
        assert torch.equal(res.latent[i], z0[i] + n)
    assert [len(t) for t in res.trace] == [1, 3, 4]
    assert [t["accepted"] for t in res.trace[1]] == [True, True, False]
    assert [t["round"] for t in res.trace[2]] == [1, 2, 3, 4]


# ----- once / fixed ------------------------------------------------------------------------


def test_assess_once(tiny_model, monkeypatch):
    script = Script({0: [True, False], 1: [True] * 9}).install(monkeypatch)
    res = tiny_model.run(start(2), max_rounds=4, mode="once")
    assert len(script.assess_calls) == 1  # assessed exactly once
    assert script.assess_calls[0] == [0, 1]
    assert res.rounds == [1, 4]
    assert script.verify_calls == [[0, 1], [0, 1], [1], [1]]  # still verified every round
    # the one assessment follows its item when others drop out
    assert {t["answer"] for t in res.trace[1]} == {"label-1-call-1"}
    assert {t["answer"] for t in res.trace[0]} == {"label-0-call-1"}
    assert res.trace[0][-1]["accepted"] is False


def test_assess_once_first_item_drops_out(tiny_model, monkeypatch):
    """The remaining item must keep its own hidden states after an earlier item drops out."""
    script = Script({0: [False], 1: [True, True]}).install(monkeypatch)
    seen = []

    def restore(model, z, assessment, steps=None, on_tile=None):
        seen.append((item_ids(z), list(assessment.answer), [h.shape[0] for h in assessment.hidden]))
        return z + 1.0

    monkeypatch.setattr(RAR, "restore", restore)
    res = tiny_model.run(start(2), max_rounds=3, mode="once")
    assert len(script.assess_calls) == 1
    assert res.rounds == [0, 3]
    assert seen[0] == ([0, 1], ["label-0-call-1", "label-1-call-1"], [10, 11])
    assert seen[1] == ([1], ["label-1-call-1"], [11]) == seen[2]


@pytest.mark.parametrize("n", [1, 3])
def test_fixed_n_rounds_never_verifies(tiny_model, monkeypatch, n):
    script = Script({0: [False] * 9}).install(monkeypatch)  # would reject if asked

    def no_verify(*a, **k):
        raise AssertionError("fixed mode must not verify")

    monkeypatch.setattr(RAR, "verify", no_verify)
    res = tiny_model.run(start(2), max_rounds=n, mode="fixed")
    assert res.rounds == [n, n]
    assert len(script.assess_calls) == len(script.restore_calls) == n
    assert torch.equal(res.latent, start(2) + n)
    for t in res.trace:
        assert [r["verdict"] for r in t] == ["not verified"] * n
        assert all(r["accepted"] for r in t)


# ----- trace, callback, errors -------------------------------------------------------------


def test_trace_contents(tiny_model, monkeypatch):
    Script({0: [True, False]}).install(monkeypatch)
    res = tiny_model.run(start(1), max_rounds=5)
    trace = res.trace[0]
    assert len(trace) == 2
    for n, entry in enumerate(trace, 1):
        assert set(entry) == {"round", "answer", "verdict", "accepted", "seconds"}
        assert entry["round"] == n
        assert isinstance(entry["answer"], str) and entry["answer"]
        assert entry["verdict"] in prompts.COMPARE_ANSWERS
        assert isinstance(entry["accepted"], bool)
        assert set(entry["seconds"]) == {"assess", "restore", "verify"}
        assert all(isinstance(v, float) and v >= 0 for v in entry["seconds"].values())
    assert [e["accepted"] for e in trace] == [True, False]
    assert res.rounds[0] == sum(e["accepted"] for e in trace)


def test_callback_called_once_per_round(tiny_model, monkeypatch):
    Script({0: [True, False], 1: [True, True, False]}).install(monkeypatch)
    calls = []
    res = tiny_model.run(start(2), max_rounds=6, callback=lambda n, z: calls.append((n, z.clone())))
    assert [n for n, _ in calls] == [1, 2, 3]  # the loop ends once every item has stopped
    assert all(z.shape == (2, 16, H, W) for _, z in calls)  # the whole batch, every time
    assert torch.equal(calls[0][1], start(2) + 1)
    assert torch.equal(calls[-1][1], res.latent)
    assert res.rounds == [1, 2]


def test_callback_fixed_mode(tiny_model, monkeypatch):
    Script().install(monkeypatch)
    calls = []
    tiny_model.run(start(1), max_rounds=3, mode="fixed", callback=lambda n, z: calls.append(n))
    assert calls == [1, 2, 3]


def test_callback_can_interrupt(tiny_model, monkeypatch):
    Script().install(monkeypatch)

    def stop(n, z):
        if n == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_model.run(start(1), max_rounds=5, callback=stop)


@pytest.mark.parametrize("mode", ["adaptive ", "Fixed", "twice", ""])
def test_invalid_mode(tiny_model, mode):
    with pytest.raises(ValueError, match="mode must be one of"):
        tiny_model.run(start(1), mode=mode)


@pytest.mark.parametrize("max_rounds", [0, -1])
def test_invalid_max_rounds(tiny_model, max_rounds):
    with pytest.raises(ValueError, match="max_rounds must be at least 1"):
        tiny_model.run(start(1), max_rounds=max_rounds)


def test_bad_latents_raise_latent_error(tiny_model):
    with pytest.raises(LatentError, match=r"needs \[batch, 16, h, w\]"):
        tiny_model.run(torch.zeros(1, 4, H, W))
    with pytest.raises(LatentError, match="needs"):
        tiny_model.run(torch.zeros(16, H, W))
    with pytest.raises(LatentError, match="multiple of 2"):
        tiny_model.run(torch.zeros(1, 16, 7, 8))
    z = torch.zeros(1, 16, H, W)
    z[0, 3, 2, 2] = float("nan")
    with pytest.raises(LatentError, match="NaN"):
        tiny_model.run(z)
    z[0, 3, 2, 2] = float("inf")
    with pytest.raises(LatentError, match="infinite"):
        tiny_model.assess(z)


def test_unstubbed_loop_is_consistent_and_deterministic(tiny_model):
    """The real LQA and restorer: the trace and the round counts agree, reruns are identical."""
    z0 = torch.randn(2, 16, H, W, generator=torch.Generator().manual_seed(3))
    a = tiny_model.run(z0, max_rounds=3, steps=1)
    b = tiny_model.run(z0, max_rounds=3, steps=1)
    assert torch.equal(a.latent, b.latent) and a.rounds == b.rounds
    for i in range(2):
        t = a.trace[i]
        assert a.rounds[i] == sum(r["accepted"] for r in t)
        assert all(r["answer"] in tiny_model.config.labels for r in t)
        assert all(r["verdict"] in prompts.COMPARE_ANSWERS for r in t)
        assert all(r["accepted"] == (r["verdict"] == "Image A") for r in t)
        # adaptive: only the last round of a stopped item may be rejected
        assert all(r["accepted"] for r in t[:-1])
        if a.rounds[i] == 0:
            assert torch.equal(a.latent[i], z0[i])


def test_verify_both_orders_is_symmetric_and_sums_log_odds(tiny_model, sharpen, monkeypatch):
    """verify_orders=2: swapping candidate and previous flips every decision; the decision is the
    sign of the log-odds summed over the two framings of one batched comparison."""
    sharpen(tiny_model)  # margins far above rounding, so the decisions are the same on every CPU
    monkeypatch.setattr(tiny_model.config, "verify_orders", 2)
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(3, 16, H, W, generator=g), torch.randn(3, 16, H, W, generator=g)
    ok_ab, verdict = tiny_model.verify(a, b)
    ok_ba, _ = tiny_model.verify(b, a)
    assert torch.equal(ok_ab, ~ok_ba)
    assert [v.startswith("Image A") for v in verdict] == ok_ab.tolist()
    with torch.no_grad():
        lp_ab = tiny_model.lqa.compare(a, b).logprob
        lp_ba = tiny_model.lqa.compare(b, a).logprob
    margin = (lp_ab[:, 0] - lp_ab[:, 1]) + (lp_ba[:, 1] - lp_ba[:, 0])
    assert ok_ab.tolist() == (margin > 0).tolist()
    # a margin the log-odds must exceed: above every margin seen, every candidate is rejected
    monkeypatch.setattr(tiny_model.config, "verify_margin", float(margin.abs().max()) + 1.0)
    assert not tiny_model.verify(a, b)[0].any() and not tiny_model.verify(b, a)[0].any()
    # one batched pass (2B rows) against two passes of B: other GEMM shapes round log-probs near
    # -19 differently (measured spread 2e-6; 1e-4 is 50 ulps), while the margins are 3e-2 to 5e-2
    torch.testing.assert_close(tiny_model.verify_log_odds(a, b), margin, rtol=0, atol=1e-4)
    # the setting travels with the model file's config; files written before it read as 1
    from rar_core.config import RARConfig

    back = RARConfig.from_json(tiny_model.config.to_json())
    assert back.verify_orders == 2 and back.verify_margin == tiny_model.config.verify_margin
    raw = json.loads(tiny_model.config.to_json())
    del raw["verify_orders"], raw["verify_margin"], raw["clean_margin"]
    old = RARConfig.from_json(json.dumps(raw))
    assert old.verify_orders == 1 and old.verify_margin == 0.0 and old.clean_margin is None


def test_lqa_view_assesses_and_verifies_the_central_window(tiny_model, sharpen, monkeypatch):
    """lqa_view = v: assess and verify see only the central v x v window of the latent (what a
    small LQA was trained on); outside it nothing changes their answers, inside it does."""
    from rar_core.config import RARConfig

    sharpen(tiny_model)  # log-odds of 6e-3 and 1.3e-2 below, not rounding-sized ones
    g = torch.Generator().manual_seed(3)
    z, z2 = torch.randn(2, 16, 12, 16, generator=g), torch.randn(2, 16, 12, 16, generator=g)
    monkeypatch.setattr(tiny_model.config, "lqa_view", 6)
    assert torch.equal(tiny_model.lqa_view(z), z[..., 3:9, 5:11])
    with torch.no_grad():
        direct = tiny_model.lqa.identify(z[..., 3:9, 5:11], tiny_model.config.labels)
    a = tiny_model.assess(z)
    assert a.answer == direct.text
    assert all(torch.equal(h, d) for h, d in zip(a.hidden, direct.hidden))
    outside = z.clone()
    outside[..., :3, :] += 5.0
    outside[..., :, 11:] -= 5.0
    assert all(torch.equal(h, d) for h, d in zip(tiny_model.assess(outside).hidden, a.hidden))
    inside = z.clone()
    inside[..., 4, 6] += 5.0
    assert not torch.equal(tiny_model.assess(inside).hidden[0], a.hidden[0])
    # verification: both latents through the same window, in both orders and in one
    monkeypatch.setattr(tiny_model.config, "verify_orders", 2)
    with torch.no_grad():
        lp_ab = tiny_model.lqa.compare(z[..., 3:9, 5:11], z2[..., 3:9, 5:11]).logprob
        lp_ba = tiny_model.lqa.compare(z2[..., 3:9, 5:11], z[..., 3:9, 5:11]).logprob
    margin = (lp_ab[:, 0] - lp_ab[:, 1]) + (lp_ba[:, 1] - lp_ba[:, 0])
    # batched 2B against two passes of B: rounding differs as above (spread 2e-6, log-odds >= 6e-3)
    torch.testing.assert_close(tiny_model.verify_log_odds(z, z2), margin, rtol=0, atol=1e-4)
    monkeypatch.setattr(tiny_model.config, "verify_orders", 1)
    with torch.no_grad():
        single = tiny_model.lqa.compare(z[..., 3:9, 5:11], z2[..., 3:9, 5:11]).text
    assert tiny_model.verify(z, z2)[1] == single
    # a side at or below the window, or view 0, passes through whole
    assert torch.equal(tiny_model.lqa_view(z[..., :6, :]), z[..., :6, 5:11])
    monkeypatch.setattr(tiny_model.config, "lqa_view", 0)
    assert tiny_model.lqa_view(z) is z
    # the setting travels with the model file; files written before it look at the whole latent
    # both presets: 16 x 16 A_I patches, the 256 px crops the LQAs were trained on
    assert RARConfig.preset("compact").lqa_view == 64 and RARConfig.preset("sd35m").lqa_view == 32
    cfg = RARConfig.preset("compact")
    assert RARConfig.from_json(cfg.to_json()).lqa_view == 64
    raw = json.loads(cfg.to_json())
    del raw["lqa_view"]
    assert RARConfig.from_json(json.dumps(raw)).lqa_view == 0


# ----- clean answers -----------------------------------------------------------------------


def test_a_clean_answer_stops_the_item_and_restores_nothing(tiny_model, monkeypatch):
    """stop_when_clean: an item the LQA calls clean keeps its latent and leaves the loop in that
    round, without a restoration or a verification; the others go on."""
    monkeypatch.setattr(tiny_model.config, "stop_when_clean", True)
    script = Script(clean={1: 1, 2: 0}).install(monkeypatch)
    res = tiny_model.run(start(3), max_rounds=4)
    assert res.rounds == [4, 1, 0]
    assert accepted_so_far(res.latent) == [4, 1, 0] and item_ids(res.latent) == [0, 1, 2]
    assert script.restore_calls == [[0, 1], [0], [0], [0]]
    assert script.verify_calls == [[0, 1], [0], [0], [0]]
    for i, n in ((1, 2), (2, 1)):
        last = res.trace[i][-1]
        assert len(res.trace[i]) == n and last["answer"] == "Clean" and not last["accepted"]
        assert last["verdict"] == loop.CLEAN_TEXT


def test_an_image_nothing_was_restored_in_comes_back_as_is_without_a_decode(tiny_model, monkeypatch):
    """A clean stop returns the input's pixels, and the decoder, which would only give them back
    approximately, does not run; in a batch where another item was restored, it does."""
    monkeypatch.setattr(tiny_model.config, "stop_when_clean", True)
    x = torch.rand(2, 3, 30, 34, generator=torch.Generator().manual_seed(0))
    decoded = []
    real = RAR.decode
    monkeypatch.setattr(RAR, "decode", lambda model, z, **k: decoded.append(len(z)) or real(model, z, **k))

    Script(clean={0: 0, 1: 0}).install(monkeypatch, restore=False)  # both are called clean at once
    res = loop.restore_image(tiny_model, x, max_rounds=3)
    assert res.rounds == [0, 0] and decoded == [] and torch.equal(res.image, x)

    # the scripted LQA calls the first active item clean: item 0 in round 1, item 1 in round 2
    Script(clean={0: 0}).install(monkeypatch, restore=False)
    res = loop.restore_image(tiny_model, x, max_rounds=3)
    assert res.rounds == [0, 1] and decoded == [2]
    assert torch.equal(res.image[0], x[0]) and not torch.equal(res.image[1], x[1])


@pytest.mark.parametrize("mode,stop", [("adaptive", False), ("fixed", True)])
def test_clean_answers_are_restored_without_the_setting_or_in_fixed_mode(tiny_model, monkeypatch, mode, stop):
    """The paper's loop (stop_when_clean off, the official preset's) restores whatever it is
    given; fixed mode restores exactly max_rounds times whatever the answer."""
    monkeypatch.setattr(tiny_model.config, "stop_when_clean", stop)
    Script(clean={0: 0}).install(monkeypatch)
    res = tiny_model.run(start(1), max_rounds=2, mode=mode)
    assert res.rounds == [2] and res.trace[0][0]["answer"] == "Clean"


def test_judge_is_the_one_rule():
    V = loop.Verdict
    assert loop.judge("adaptive", ["Noise", "Clean", "Blur"], [True, True, False], True) == [V.ACCEPTED, V.CLEAN, V.REJECTED]
    assert loop.judge("once", ["clean"], [True], False) == [V.ACCEPTED]
    assert loop.judge("fixed", ["Clean", "Noise"], None, True) == [V.UNVERIFIED, V.UNVERIFIED]
    assert [v.kept for v in V] == [True, False, True, False]


def test_folding_a_copy_leaves_the_state_as_it_was():
    """RAR Iterate folds each round into a copy: a graph expansion's cached input must not change."""
    state = loop.LoopState.start(start(2))
    before = state.z.clone()
    r = loop.Round(["a", "b"], [loop.Verdict.ACCEPTED, loop.Verdict.REJECTED], ["Image A", "Image B"], start(2) + 1)
    new = state.copy()
    new.fold(r)
    assert torch.equal(state.z, before) and state.active == [0, 1] and state.trace == [[], []] and state.n == 0
    assert new.active == [0] and new.rounds == [1, 0] and accepted_so_far(new.z) == [1, 0] and new.n == 1


# ----- protocols ---------------------------------------------------------------------------


def test_demo_protocol_asks_the_default_questions(tiny_model, monkeypatch):
    script = Script().install(monkeypatch)
    res = tiny_model.run(start(1), max_rounds=3)
    assert res.rounds == [3] and {q for _, q in script.questions} == {None}


def test_paper_eval_keeps_one_round_less_and_draws_its_questions(tiny_model, monkeypatch):
    """The evaluation script discards its last round (at most max_rounds - 1 kept), asks one
    identification question per image and draws the comparison question every round, by seed."""
    script = Script().install(monkeypatch)
    res = tiny_model.run(start(2), max_rounds=4, protocol="paper-eval", seed=3)
    assert res.rounds == [3, 3] and accepted_so_far(res.latent) == [3, 3]
    ident = [q for k, q in script.questions if k == "identify"]
    comp = [q for k, q in script.questions if k == "compare"]
    assert len(ident) == len(comp) == 3 and len(set(ident)) == 1 and ident[0] in prompts.IDENTIFY
    assert all(q in prompts.COMPARE for q in comp)
    again = Script().install(monkeypatch)
    tiny_model.run(start(2), max_rounds=4, protocol="paper-eval", seed=3)
    assert again.questions == script.questions
    seeds = set()
    for seed in range(6):
        other = Script().install(monkeypatch)
        tiny_model.run(start(1), max_rounds=4, protocol="paper-eval", seed=seed)
        seeds.add(tuple(other.questions))
    assert len(seeds) > 1


def test_paper_eval_with_one_round_returns_the_input(tiny_model, monkeypatch):
    script = Script().install(monkeypatch)
    z = start(1)
    res = tiny_model.run(z, max_rounds=1, protocol="paper-eval")
    assert res.rounds == [0] and res.trace == [[]] and torch.equal(res.latent, z)
    assert script.assess_calls == [] and script.restore_calls == []


def test_unknown_protocol_is_refused(tiny_model):
    with pytest.raises(ValueError, match="protocol must be one of"):
        tiny_model.run(start(1), max_rounds=2, protocol="paper")


def test_clean_margin_decides_the_assessment_and_travels_with_the_config(tiny_model, monkeypatch):
    """config.clean_margin reaches the LQA's answer through `assess` (and so the loop's stop on
    "Clean"), and is stored in the model file's config."""
    from rar_core.config import RARConfig

    labels = tiny_model.config.labels
    assert prompts.is_clean(labels[0])
    z = torch.randn(3, 16, H, W, generator=torch.Generator().manual_seed(5))
    monkeypatch.setattr(tiny_model.config, "clean_margin", -1e9)  # any log-odds pass
    assert tiny_model.assess(z).answer == [labels[0]] * 3
    monkeypatch.setattr(tiny_model.config, "clean_margin", 1e9)  # none does
    answers = tiny_model.assess(z).answer
    with torch.no_grad():
        assert answers == tiny_model.lqa.identify(z, list(labels[1:])).text
    monkeypatch.setattr(tiny_model.config, "clean_margin", 1.25)
    assert RARConfig.from_json(tiny_model.config.to_json()).clean_margin == 1.25
