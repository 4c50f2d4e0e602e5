"""Node behaviour that a server run cannot provoke: OOM fallback, memory calls, folder registration,
lazy gate, the official tier with a stand-in VAE, no leaked model references.

ComfyUI's modules are imported into this process (with --cpu set first, as on a GPU-less CI box),
so run it with an interpreter that has ComfyUI's requirements, e.g.
    COMFYUI_PATH=/path/to/ComfyUI /path/to/comfy-venv/bin/python -m pytest tests/comfy_integration
"""
import gc
import importlib.util
import json
import os
import sys
import weakref

import pytest
import torch

from comfy_client import REPO
import workflow_tools as wt

COMFYUI_PATH = os.environ.get("COMFYUI_PATH")


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    """The pack imported the way ComfyUI imports it (a package from a file path), plus a tiny model."""
    if not COMFYUI_PATH:
        pytest.skip("COMFYUI_PATH is not set to a ComfyUI checkout")
    sys.path.insert(0, COMFYUI_PATH)
    try:
        import comfy.cli_args
        comfy.cli_args.args.cpu = True  # before comfy.model_management probes for CUDA
        import comfy.model_management  # noqa: F401
        import folder_paths
    except ImportError as e:
        pytest.skip(f"this interpreter lacks ComfyUI's requirements ({e}); use COMFYUI_PYTHON's")
    # importing the pack copies the template image into the input folder: a temp one, not the checkout's
    folder_paths.set_input_directory(str(tmp_path_factory.mktemp("input")))
    spec = importlib.util.spec_from_file_location("comfyui_rar_inprocess", os.path.join(REPO, "__init__.py"),
                                                  submodule_search_locations=[REPO])
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    from tiny_model import write_tiny_model
    folder = tmp_path_factory.mktemp("rar_models")
    write_tiny_model(str(folder / "tiny.safetensors"))
    write_tiny_model(str(folder / "tiny_official.safetensors"), official=True)
    folder_paths.folder_names_and_paths["rar"][0].append(str(folder))
    return module


def node(pack, name):
    return getattr(pack.nodes, name)


def load(pack, name="tiny.safetensors", dtype="auto"):
    return node(pack, "RARModelLoader").execute(name, dtype)[0]


def test_entrypoint_lists_every_node(pack):
    import asyncio
    ext = asyncio.run(pack.comfy_entrypoint())
    ids = [n.GET_SCHEMA().node_id for n in asyncio.run(ext.get_node_list())]
    assert len(ids) == 9 and all(i.startswith("RAR") for i in ids)


def test_register_folder_keeps_yaml_paths_and_filter(pack):
    import folder_paths
    saved = folder_paths.folder_names_and_paths["rar"]
    try:
        folder_paths.folder_names_and_paths["rar"] = (["/from/extra_model_paths"], set())
        pack.nodes.register_folder()
        paths, exts = folder_paths.folder_names_and_paths["rar"]
        assert paths[0] == "/from/extra_model_paths" and paths[1].endswith(os.path.join("models", "rar"))
        assert exts == set(folder_paths.supported_pt_extensions)
    finally:
        folder_paths.folder_names_and_paths["rar"] = saved


def test_prepare_asks_comfy_for_memory(pack, monkeypatch):
    import comfy.model_management as mm
    calls = []
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kw: calls.append((models, kw)))
    handle = load(pack)
    latent = node(pack, "RARLatentEncode").execute(handle, torch.rand(1, 64, 64, 3))[0]
    node(pack, "RARAssess").execute(handle, latent)
    # each stage loads only its own part: the codec to encode, the LQA to assess
    assert [m for m, _ in calls] == [[handle.patchers["codec"]], [handle.patchers["lqa"]]]
    # partial loads allowed: the layers are comfy.ops (test_partial_load_... below)
    assert all(kw["memory_required"] > 0 and not kw.get("force_full_load") for _, kw in calls)
    assert latent["samples"].device == mm.intermediate_device()


def test_loop_loads_one_part_per_stage(pack, monkeypatch):
    """RAR Loop loads the LQA for assess/verify and A_Q + restorer for restore, never all at once,
    so the official tier's 7 B LQA and 2.5 B restorer need not be resident together."""
    import comfy.model_management as mm
    calls = []
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kw: calls.append(models))
    handle = load(pack)
    latent = node(pack, "RARLatentEncode").execute(handle, torch.rand(1, 64, 64, 3))[0]
    calls.clear()
    node(pack, "RARLoop").execute(handle, latent, 2, 2, "fixed")
    names = {id(p): n for n, p in handle.patchers.items()}
    loaded = [[names[id(p)] for p in m] for m in calls]
    assert all(len(m) == 1 for m in loaded)
    # per round: assess (LQA), restore (A_Q + restorer), then the progress preview's decode (codec)
    assert [m[0] for m in loaded] == ["restorer"] + ["lqa", "restorer", "codec"] * 2
    assert handle.model.stage_hook is None  # the hook never outlives the node


def _oom_with_batched_tiles(model, monkeypatch):
    """Make RAR.run raise a CUDA-style OOM unless the restorer takes one tile per forward."""
    real = model.run

    def run(z, **kw):
        if model.tile_batch > 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(z, **kw)
    monkeypatch.setattr(model, "run", run)


def test_loop_retries_one_tile_per_forward_on_oom(pack, monkeypatch):
    handle = load(pack)
    image = torch.rand(1, 640, 576, 3)
    latent = node(pack, "RARLatentEncode").execute(handle, image)[0]
    _oom_with_batched_tiles(handle.model, monkeypatch)
    batch = handle.model.tile_batch
    out = node(pack, "RARLoop").execute(handle, latent, 2, 2, "fixed")
    assert out[0]["samples"].shape == latent["samples"].shape
    assert json.loads(out[2])[0]["tiles"] > 1 and handle.model.tile_batch == batch


def test_restore_image_retries_one_tile_per_forward_on_oom(pack, monkeypatch):
    handle = load(pack)
    _oom_with_batched_tiles(handle.model, monkeypatch)
    image, trace = node(pack, "RARRestoreImage").execute(handle, torch.rand(2, 300, 280, 3), 1, 2, "fixed")[:2]
    assert image.shape == (2, 300, 280, 3)
    assert json.loads(trace)[0]["tiles"] > 1


def test_other_errors_are_not_mistaken_for_oom(pack, monkeypatch):
    handle = load(pack)
    latent = node(pack, "RARLatentEncode").execute(handle, torch.rand(1, 64, 64, 3))[0]

    def broken(z, **kw):
        raise ValueError("something else")
    monkeypatch.setattr(handle.model, "run", broken)
    with pytest.raises(ValueError, match="something else"):
        node(pack, "RARLoop").execute(handle, latent, 2, 2, "fixed")


def test_gate_skips_the_candidate_when_all_clean(pack, monkeypatch):
    """With a model that stops on clean images (rar_core.loop.judge) the gate never asks for the
    candidate of an all-clean batch; with one that does not, it always does."""
    Assessment = pack.rar_core.model.Assessment
    gate = node(pack, "RARVerifyGate")
    handle = load(pack)
    monkeypatch.setattr(handle.config, "stop_when_clean", True)
    clean, dirty = Assessment(["Clean", "Clean"], []), Assessment(["Clean", "Noise"], [])
    assert gate.check_lazy_status(handle, None, None, clean) == ["previous"]
    assert gate.check_lazy_status(handle, {"samples": 0}, None, clean) == []
    assert gate.check_lazy_status(handle, None, None, dirty) == ["previous", "candidate"]
    assert gate.check_lazy_status(handle, None, None, None) == ["previous", "candidate"]
    monkeypatch.setattr(handle.config, "stop_when_clean", False)
    assert gate.check_lazy_status(handle, None, None, clean) == ["previous", "candidate"]


def test_loader_keeps_no_reference(pack):
    """No module-level cache: dropping the loader output frees the model."""
    handle = load(pack)
    ref = weakref.ref(handle.model)
    del handle
    gc.collect()
    assert ref() is None


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_dtype_option(pack, dtype):
    handle = load(pack, dtype=dtype)
    assert handle.dtype == pack.nodes.model.DTYPES[dtype]
    latent = node(pack, "RARLatentEncode").execute(handle, torch.rand(1, 48, 48, 3))[0]
    out = node(pack, "RARLoop").execute(handle, latent, 1, 1, "fixed")
    assert torch.isfinite(out[0]["samples"]).all()


class StandInSD3VAE:
    """What the official tier needs from a ComfyUI VAE: 16 latent channels, 8x, encode/decode IMAGE."""
    latent_channels = 16

    def encode(self, pixels):
        x = pixels.movedim(-1, 1)
        x = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([x] * 5 + [x[:, :1]], 1)

    def decode(self, samples):
        return torch.nn.functional.interpolate(samples[:, :3], scale_factor=8).clamp(0, 1).movedim(1, -1)


def test_official_tier_with_the_users_vae(pack):
    handle = load(pack, "tiny_official.safetensors")
    assert handle.official
    vae = StandInSD3VAE()
    image = torch.rand(1, 70, 90, 3)
    restored, trace = node(pack, "RARRestoreImage").execute(handle, image, 2, 2, "fixed", vae)[:2]
    assert restored.shape == image.shape and json.loads(trace)[0]["rounds"] == 2
    latent = node(pack, "RARLatentEncode").execute(handle, image, vae)[0]
    assert latent["rar_latent_format"] == "sd3"
    out = node(pack, "RARLoop").execute(handle, latent, 1, 1, "fixed")[0]
    assert out["samples"].shape == latent["samples"].shape
    # a core VAE Encode latent (no tag) of an 8-px multiple size is accepted and padded internally
    core = {"samples": vae.encode(torch.rand(1, 72, 88, 3))}
    assert node(pack, "RARLoop").execute(handle, core, 1, 1, "fixed")[0]["samples"].shape == core["samples"].shape
    with pytest.raises(ValueError, match="VAE Decode"):
        node(pack, "RARLatentDecode").execute(handle, latent)


def test_preview_is_a_small_jpeg(pack):
    for name in ("tiny.safetensors", "tiny_official.safetensors"):
        handle = load(pack, name)
        kind, img, size = pack.nodes.loop.preview(handle, torch.randn(1, 16, 128, 96))
        assert kind == "JPEG" and max(img.size) <= 32 * handle.config.codec.downsample


def test_builtin_model_is_offered_and_loads(pack, monkeypatch, tmp_path):
    """Once rar_core ships its compact weights, the loader lists and loads them first."""
    from tiny_model import write_tiny_model
    fake = write_tiny_model(str(tmp_path / "rar-compact.safetensors"))
    monkeypatch.setattr(pack.rar_core.checkpoint, "BUILTIN", __import__("pathlib").Path(fake))
    choices = pack.nodes.model.model_choices()
    assert choices[0] == pack.nodes.model.BUILTIN
    assert node(pack, "RARModelLoader").validate_inputs(choices[0], "auto") is True
    assert load(pack, choices[0]).name == choices[0]


def test_images_beyond_the_restorer_grid_are_tiled_or_refused(pack):
    handle = load(pack)
    wide = torch.rand(1, 64, handle.max_side + 80, 3)
    image, trace = node(pack, "RARRestoreImage").execute(handle, wide, 1, 1, "fixed")[:2]
    assert image.shape == wide.shape and json.loads(trace)[0]["tiles"] > 1
    latent = node(pack, "RARLatentEncode").execute(handle, wide)[0]
    assert node(pack, "RARLoop").execute(handle, latent, 1, 1, "fixed")[0]["samples"].shape == latent["samples"].shape
    with pytest.raises(ValueError, match="RAR Loop or RAR Restore Image"):
        node(pack, "RARAssess").execute(handle, latent)


def test_example_image_is_installed_but_never_overwrites(pack, tmp_path):
    """The templates' image is copied into the input folder on import, unless a file of that name exists."""
    import folder_paths
    before = folder_paths.get_input_directory()
    try:
        folder_paths.set_input_directory(str(tmp_path))
        dest = tmp_path / pack.EXAMPLE_IMAGE
        dest.write_bytes(b"the user's own file")
        pack.install_example_image()
        assert dest.read_bytes() == b"the user's own file"
        dest.unlink()
        pack.install_example_image()
        with open(pack.EXAMPLE_SOURCE, "rb") as f:
            assert dest.read_bytes() == f.read()
        assert os.listdir(tmp_path) == [pack.EXAMPLE_IMAGE]  # no temp file left behind
        assert pack.EXAMPLE_IMAGE == wt.EXAMPLE_IMAGE  # the name the templates use
        blocker = tmp_path / "not_a_folder"
        blocker.write_bytes(b"")
        folder_paths.set_input_directory(str(blocker / "input"))
        pack.install_example_image()  # cannot write there: logs, never raises
    finally:
        folder_paths.set_input_directory(before)


def test_one_progress_bar_over_rounds_and_tiles_and_cancel_between_tiles(pack, monkeypatch):
    """RAR Restore Image on a multi-tile image: one bar counting rounds x tiles x steps, never
    restarting; an interrupt raised between tiles stops the node before the next tile."""
    import comfy.model_management as mm
    import comfy.utils
    handle = load(pack)
    bars = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: bars.append((value, total)))
    _, trace = node(pack, "RARRestoreImage").execute(handle, torch.rand(1, 300, 280, 3), 2, 2, "fixed")[:2]
    tiles = json.loads(trace)[0]["tiles"]
    assert tiles > 1
    assert {t for _, t in bars} == {2 * 2 * tiles}  # max_rounds x steps x tiles, one total
    values = [v for v, _ in bars]
    assert values == sorted(values) and values[-1] == 2 * 2 * tiles and len(set(values)) > 2  # finer than rounds

    checks = []

    def interrupt():
        checks.append(1)
        if len(checks) == 5:
            raise mm.InterruptProcessingException()
    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", interrupt)
    forwards = []
    real = handle.model.uir.forward
    monkeypatch.setattr(handle.model.uir, "forward", lambda *a: forwards.append(1) or real(*a))
    with pytest.raises(mm.InterruptProcessingException):
        node(pack, "RARRestoreImage").execute(handle, torch.rand(1, 300, 280, 3), 2, 2, "fixed")
    assert len(forwards) < 2 * 2 * tiles  # stopped inside the first rounds, between tiles


def test_iterate_reports_its_rounds_on_one_progress_bar(pack, monkeypatch):
    """RAR Iterate reports rounds done / max_rounds with a preview each time it expands or ends."""
    import comfy.utils
    handle = load(pack)
    bars = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK",
                        lambda value, total, preview, node_id=None: bars.append((value, total, preview is not None)))
    latent = node(pack, "RARLatentEncode").execute(handle, torch.rand(1, 64, 64, 3))[0]
    out = node(pack, "RARIterate").execute(handle, latent, 3, 2, "adaptive")
    assert out.expand is not None  # the first call expands round 1
    assert bars == [(0, 3, True)]


def test_loop_nodes_default_to_the_loops_settings(pack):
    """RAR Loop, RAR Iterate and RAR Restore Image take their widget defaults from rar_core.config."""
    from rar_core import config
    for name in ("RARLoop", "RARIterate", "RARRestoreImage"):
        inputs = {i.id: i for i in node(pack, name).define_schema().inputs}
        assert inputs["max_rounds"].default == config.DEFAULT_ROUNDS
        assert inputs["steps"].default == config.DEFAULT_STEPS
    assert {i.id: i for i in node(pack, "RARLoop").define_schema().inputs}["max_rounds"].max == config.ROUNDS_LIMIT


def test_loop_nodes_offer_the_paper_eval_protocol(pack):
    """protocol paper-eval keeps one restoration less than max_rounds: with 1, the input comes back."""
    handle = load(pack)
    x = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(0))
    latent = node(pack, "RARLatentEncode").execute(handle, x)[0]
    out = node(pack, "RARLoop").execute(handle, latent, 3, 1, "fixed", protocol="paper-eval")
    assert out[1] == 2
    out = node(pack, "RARLoop").execute(handle, latent, 1, 1, "adaptive", protocol="paper-eval")
    assert out[1] == 0 and torch.allclose(out[0]["samples"], latent["samples"], atol=1e-5)  # z and back
    image = node(pack, "RARRestoreImage").execute(handle, x, 1, 1, "adaptive", protocol="paper-eval")[0]
    assert torch.equal(image, x)


def test_partial_load_casts_weights_on_the_fly_and_matches_a_full_load(pack):
    """The loader builds with comfy.ops, so under a small memory budget ComfyUI loads a part in
    part (lowered weights counted) and casts the rest on the fly; the restoration then matches
    the fully loaded one within bf16 tolerance."""
    import comfy.ops
    handle = load(pack, "tiny_official.safetensors", dtype="bf16")
    model, patcher = handle.model, handle.patchers["restorer"]
    linears = [m for m in model.uir.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, comfy.ops.disable_weight_init.Linear) for m in linears)
    z = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    a = model.assess(z)
    device = handle.prepare(1, 128, 128, ("restorer",))
    full = model.restore(z, a, steps=2)
    patcher.unpatch_model(device_to=patcher.offload_device)
    budget = patcher.model_size() // 4
    patcher.patch_model(device_to=device, lowvram_model_memory=budget)
    try:
        lowered = [m for m in patcher.model.modules() if getattr(m, "comfy_cast_weights", False)]
        assert patcher.model.model_lowvram and len(lowered) > 0 and patcher.loaded_size() <= budget
        part = model.restore(z, a, steps=2)
    finally:
        patcher.unpatch_model(device_to=patcher.offload_device)
    assert torch.allclose(part, full, rtol=2e-2, atol=2e-2)  # bf16: 8 mantissa bits


def test_fp8_model_file_keeps_its_linear_weights_in_fp8(pack, tmp_path):
    """A `rar convert --dtype fp8_e4m3fn` file stays in fp8 in ComfyUI (manual_cast layers compute
    in the loader's dtype) and restores close to the bf16 file."""
    from safetensors.torch import load_file, save_file
    from rar_core.checkpoint import read_metadata
    from rar_core.model import RAR
    from rar_core.operations import fp8_keys
    import folder_paths
    src = folder_paths.get_full_path("rar", "tiny_official.safetensors")
    state, meta = load_file(src), read_metadata(src)
    handle = load(pack, "tiny_official.safetensors", dtype="bf16")
    with torch.device("meta"):
        linear = fp8_keys(RAR(handle.config, with_codec=False))
    state = {k: v.to(torch.float8_e4m3fn) if k in linear else v.to(torch.bfloat16) for k, v in state.items()}
    folder = folder_paths.get_folder_paths("rar")[-1]
    save_file(state, os.path.join(folder, "tiny_fp8.safetensors"), metadata=meta)
    fp8 = load(pack, "tiny_fp8.safetensors", dtype="bf16")
    dtypes = {n: p.dtype for n, p in fp8.model.named_parameters()}
    assert {dtypes[k] for k in linear} == {torch.float8_e4m3fn}
    assert {d for k, d in dtypes.items() if k not in linear} == {torch.bfloat16}
    assert fp8.dtype == torch.bfloat16  # the compute dtype, which the memory estimate uses
    z = torch.randn(1, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    outs = []
    for h in (handle, fp8):
        h.prepare(1, 128, 128)
        a = h.model.assess(z)
        outs.append(h.model.restore(z, a, steps=2))
    err = (outs[1] - outs[0]).abs().mean() / (outs[0] - z).abs().mean()
    assert torch.isfinite(outs[1]).all() and err < 0.5  # e4m3 keeps 3 mantissa bits of each weight


def test_pin_uncastable_moves_what_no_layer_casts(pack):
    """After a partial load, weights held by no casting layer go to the load device; the lowered
    layers' stay where they are (cast on the fly)."""
    import types
    lowered, plain = torch.nn.Linear(2, 2), torch.nn.LayerNorm(2)
    lowered.comfy_cast_weights = True
    box = torch.nn.Module()
    box.a, box.b = lowered, plain
    box.register_buffer("table", torch.zeros(3))
    moved = pack.nodes.model.pin_uncastable(types.SimpleNamespace(load_device=torch.device("meta"), model=box))
    assert moved == 3  # LayerNorm weight and bias, the buffer
    assert plain.weight.is_meta and box.table.is_meta and not lowered.weight.is_meta
