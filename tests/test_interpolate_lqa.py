"""scripts/interpolate_lqa.py: the LQA on the line between a model and a fine-tuned copy."""
import copy

import pytest
import torch

from rar_core.checkpoint import load_rar


@pytest.fixture(scope="module")
def il(load_script):
    return load_script("interpolate_lqa")


def test_interpolates_the_lqa_alone(il, tiny_factory):
    base, tuned = tiny_factory(seed=0), tiny_factory(seed=1)
    before = copy.deepcopy(base)
    il.interpolate_lqa(base, tuned, 0.25)
    for k, v in base.lqa.state_dict().items():
        a, b = before.lqa.state_dict()[k], tuned.lqa.state_dict()[k]
        torch.testing.assert_close(v, a + 0.25 * (b - a))
    assert any(not torch.equal(v, before.lqa.state_dict()[k]) for k, v in base.lqa.state_dict().items())
    for part in ("connector", "uir", "codec"):  # the restorer's side stays the base model's
        for k, v in getattr(base, part).state_dict().items():
            assert torch.equal(v, getattr(before, part).state_dict()[k]), (part, k)


def test_ends_of_the_line_and_bad_input(il, tiny_factory, tiny_config):
    base, tuned = tiny_factory(seed=0), tiny_factory(seed=1)
    il.interpolate_lqa(base, tuned, 1.0)
    for k, v in base.lqa.state_dict().items():
        torch.testing.assert_close(v, tuned.lqa.state_dict()[k])
    with pytest.raises(ValueError, match="alpha"):
        il.interpolate_lqa(base, tuned, 1.5)
    from dataclasses import replace
    wider = tiny_factory(seed=2, config=replace(tiny_config, adapter=replace(tiny_config.adapter, width=tiny_config.adapter.width * 2)))
    with pytest.raises(ValueError, match="architecture"):
        il.interpolate_lqa(base, wider, 0.5)


def test_cli_writes_a_loadable_model(il, tiny_model_path, tmp_path, monkeypatch):
    from rar_core.checkpoint import save_rar
    tuned = load_rar(tiny_model_path)
    with torch.no_grad():
        for p in tuned.lqa.parameters():
            p.add_(0.5)
    save_rar(tuned, tmp_path / "tuned.safetensors")
    out = tmp_path / "soup.safetensors"
    monkeypatch.setattr("sys.argv", ["x", "--base", str(tiny_model_path), "--tuned", str(tmp_path / "tuned.safetensors"),
                                     "--alpha", "0.5", "--out", str(out)])
    il.main()
    soup, base = load_rar(out), load_rar(tiny_model_path)
    k, v = next(iter(soup.lqa.state_dict().items()))
    torch.testing.assert_close(v.float(), base.lqa.state_dict()[k].float() + 0.25, atol=2e-3, rtol=2e-3)
