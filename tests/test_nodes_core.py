"""The rar_core contract the ComfyUI nodes rely on, checked without ComfyUI (runs in CI).

The nodes (nodes/*.py) only adapt these calls; if one of these tests fails, a node breaks.
"""
import importlib.util
import os

import pytest
import torch

from rar_core import checkpoint, image as rar_image, prompts
from rar_core.model import Assessment
from rar_core.loop import MODES, restore_image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_pack_entry_imports_without_comfyui():
    """The repo's __init__.py is ComfyUI's entry; outside ComfyUI it must define nothing and not fail."""
    if importlib.util.find_spec("comfy_api") is not None:
        pytest.skip("ComfyUI is importable here")
    spec = importlib.util.spec_from_file_location("rar_pack_entry", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not hasattr(module, "comfy_entrypoint")


def test_config_fields_used_by_nodes(tiny_model):
    cfg = tiny_model.config
    assert cfg.pixel_multiple % cfg.codec.downsample == 0
    assert isinstance(cfg.codec.latent_format, str) and cfg.codec.scale and cfg.codec.shift is not None
    assert tiny_model.codec is not None  # compact tier: own codec
    assert MODES == ("adaptive", "fixed", "once")


def test_assessment_is_per_item_and_batch_independent(tiny_model):
    """RAR Iterate assesses only the still-active items; that must equal assessing the full batch."""
    z = tiny_model.encode(torch.rand(3, 3, 32, 32))
    full = tiny_model.assess(z)
    part = tiny_model.assess(z[[0, 2]])
    assert len(full.answer) == len(full.hidden) == 3
    assert part.answer == [full.answer[0], full.answer[2]]
    sel = full.select([2])
    assert isinstance(sel, Assessment) and sel.answer == [full.answer[2]]
    torch.testing.assert_close(part.hidden[1], full.hidden[2], rtol=1e-4, atol=1e-4)


def test_restore_and_verify_shapes(tiny_model):
    z = tiny_model.encode(torch.rand(2, 3, 32, 32))
    a = tiny_model.assess(z)
    z_new = tiny_model.restore(z, a, 2)
    assert z_new.shape == z.shape
    improved, verdict = tiny_model.verify(z_new, z)
    assert improved.dtype == torch.bool and improved.shape == (2,) and len(verdict) == 2
    # RAR Iterate reads the verdict text with the same rule RAR.verify applies
    assert [prompts.REJECT not in v for v in verdict] == improved.tolist()


def test_run_reports_rounds_trace_and_calls_back(tiny_model):
    z = tiny_model.encode(torch.rand(2, 3, 32, 32))
    seen = []
    res = tiny_model.run(z, max_rounds=2, steps=1, mode="fixed", callback=lambda n, zz: seen.append((n, zz.shape)))
    assert res.latent.shape == z.shape and res.rounds == [2, 2]
    assert [len(t) for t in res.trace] == [2, 2] and {"round", "answer", "verdict", "accepted"} <= set(res.trace[0][0])
    assert seen == [(1, z.shape), (2, z.shape)]


def test_restore_image_keeps_size_and_tiles(tiny_model):
    x = torch.rand(1, 3, 45, 60)  # one restorer window (32 latent px a side for the tiny model)
    res = restore_image(tiny_model, x, max_rounds=1, steps=1, mode="fixed")
    assert res.image.shape == x.shape and res.tiles == 1 and res.rounds == [1]
    x = torch.rand(1, 3, 90, 140)
    res = restore_image(tiny_model, x, max_rounds=1, steps=1, mode="fixed", tile=32, overlap=8)
    assert res.image.shape == x.shape and res.tiles > 1 and len(res.trace[0]) == 1


def test_image_helpers_used_by_nodes():
    with pytest.raises(rar_image.ImageError, match="at least"):
        rar_image.check_size(8, 64)
    padded, size = rar_image.pad_to_multiple(torch.rand(1, 3, 45, 70), 16)
    assert padded.shape[-2:] == (48, 80) and size == (45, 70)
    assert rar_image.to_rgb(torch.rand(1, 1, 20, 20)).shape[1] == 3


def test_checkpoint_errors_the_loader_shows(tmp_path, tiny_model_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load_rar(bad)
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load_rar(tmp_path / "missing.safetensors")
    assert isinstance(checkpoint.builtin_available(), bool)
    if not checkpoint.builtin_available():
        with pytest.raises(FileNotFoundError):
            checkpoint.default_model_path()
    model = checkpoint.load_rar(tiny_model_path, dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
