"""The stage hook lets a host load only the part a stage needs (ComfyUI: one ModelPatcher each)."""

from __future__ import annotations

import torch

from rar_core import prompts


def test_stage_hook_names_the_part_of_every_stage(tiny_model):
    calls = []
    tiny_model.stage_hook = calls.append
    x = torch.rand(1, 3, 32, 32)
    z = tiny_model.encode(x)
    res = tiny_model.run(z, max_rounds=2, mode="fixed")
    tiny_model.decode(res.latent)
    assert calls == ["codec", "lqa", "restorer", "lqa", "restorer", "codec"]
    calls.clear()
    tiny_model.run(z, max_rounds=1, mode="adaptive")
    assert calls == ["lqa", "restorer", "lqa"]


def test_parts_on_different_devices_meet_on_the_restorer(tiny_model, monkeypatch):
    """Hidden states from the LQA move to the restorer's device (offloaded parts on CPU here)."""
    seen = {}
    real = tiny_model.connector.condition

    def spy(hidden):
        seen["device"] = {h.device for h in hidden}
        return real(hidden)

    monkeypatch.setattr(tiny_model.connector, "condition", spy)
    z = tiny_model.encode(torch.rand(1, 3, 32, 32))
    out = tiny_model.restore(z, tiny_model.assess(z))
    assert seen["device"] == {next(tiny_model.uir.parameters()).device} and out.shape == z.shape


def test_is_improvement_is_the_official_stop_rule():
    assert prompts.is_improvement("Image A") and not prompts.is_improvement("Image B")
    assert not prompts.is_improvement("I think Image B is better")


def test_rejected_first_round_returns_the_input_pixels(tiny_model, monkeypatch):
    """Rolling back to the input keeps the input itself, not its codec reconstruction."""
    from rar_core.loop import restore_image

    x = torch.rand(2, 3, 32, 32)
    verdicts = iter([torch.tensor([False, True]), torch.tensor([False])])
    monkeypatch.setattr(type(tiny_model), "verify", lambda self, a, b, q=None: (next(verdicts), ["x"] * a.shape[0]))
    res = restore_image(tiny_model, x, max_rounds=2)
    assert res.rounds == [0, 1]
    assert torch.equal(res.image[0], x[0]) and not torch.equal(res.image[1], x[1])
