"""A tiny end-to-end run of every training stage, resumption, and the recipe's pieces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rar_core import train as T
from rar_core.checkpoint import build_model, load_rar, save_rar


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Three smooth synthetic photos in the fetch_data manifest layout (+1 eval never used)."""
    root = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    images = []
    for i, split in enumerate(["train", "train", "train", "eval"]):
        yy, xx = np.mgrid[0:80, 0:96] / 80.0
        img = np.stack([np.sin(3 * xx + i), np.cos(2 * yy - i), xx * yy], -1) * 0.4 + 0.5
        img = np.clip(img + rng.normal(0, 0.02, img.shape), 0, 1)
        f = f"{split}/img{i}.png"
        (root / split).mkdir(exist_ok=True)
        Image.fromarray((img * 255).astype(np.uint8)).save(root / f)
        images.append({"file": f, "split": split})
    (root / "manifest.json").write_text(json.dumps({"images": images}))
    return root


def test_photo_pool_reads_train_split_only(data_dir):
    pool = T.PhotoPool(data_dir)
    assert len(pool.images) == 3
    crop = pool.crop(np.random.default_rng(1), 32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.float32 and 0 <= crop.min() and crop.max() <= 1


def test_primary_label_is_the_outermost_degradation():
    assert T.primary([]) == T.CLEAN
    assert T.primary(["haze", "noise", "jpeg"]) == "JPEG compression"


def test_every_stage_trains_and_resumes(tmp_path, data_dir, tiny_config):
    torch.manual_seed(0)
    init = save_rar(build_model(tiny_config, seed=0), tmp_path / "init.safetensors")
    out = tmp_path / "runs"
    cfg = T.StageConfig(steps=2, batch=2, crop=32, lr=1e-3, log_every=1, save_every=1)
    before = load_rar(init).state_dict()
    T.train_stage("codec", out, data_dir, cfg, seed=0, init=init, quiet=True)
    for stage in T.STAGES[1:]:
        T.train_stage(stage, out, data_dir, cfg, seed=0, quiet=True)
    for stage in T.STAGES:
        assert T.stage_path(out, stage).is_file()
        log = [json.loads(line) for line in (out / f"log-{stage}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
    final = load_rar(T.stage_path(out, "e2e"))
    after = final.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"codec", "lqa", "connector", "uir"} <= changed
    # codec stage calibrates the latent normalisation (zero mean, unit std)
    assert final.config.codec.scale != 1.0

    # resume: a longer run of a finished stage continues from its saved step
    cfg3 = T.StageConfig(steps=3, batch=2, crop=32, lr=1e-3, log_every=1, save_every=1)
    T.train_stage("uir", out, data_dir, cfg3, seed=0, quiet=True)
    steps = [json.loads(line)["step"] for line in (out / "log-uir.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_state_roundtrip_restores_model_and_optimizer(tmp_path, tiny_factory):
    model = tiny_factory(seed=0)
    params = T.trainable(model, "connector")
    opt = torch.optim.AdamW(params, lr=1e-3)
    loss = sum(p.float().pow(2).sum() for p in params)
    loss.backward()
    opt.step()
    T.save_state(tmp_path / "s.safetensors", model, opt, 7)
    other = tiny_factory(seed=1)
    opt2 = torch.optim.AdamW(T.trainable(other, "connector"), lr=1e-3)
    assert T.load_state(tmp_path / "s.safetensors", other, opt2) == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)


def test_missing_previous_stage_is_a_clear_error(tmp_path, data_dir):
    with pytest.raises(SystemExit, match="run `rar train --stage lqa` first"):
        T.train_stage("connector", tmp_path, data_dir, T.StageConfig(1, 1, 32, 1e-3), quiet=True)


def test_missing_data_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"images": []}))
    with pytest.raises(SystemExit, match="fetch_data.py"):
        T.PhotoPool(tmp_path)


def test_mixed_crops_draw_sides_and_scale_the_batch():
    cfg = T.StageConfig(steps=1, batch=16, crop=64, lr=1e-3, crops=(64, 128, 256))
    draws = {cfg.draw(np.random.default_rng(i)) for i in range(60)}
    assert draws == {(64, 16), (128, 8), (256, 4)}
    assert T.StageConfig(steps=1, batch=5, crop=96, lr=1e-3).draw(np.random.default_rng(0)) == (96, 5)


def test_cli_crop_list_sets_mixed_sides():
    import argparse

    args = argparse.Namespace(steps=None, batch=None, lr=None, crop="96,64,256")
    cfg = T.stage_config("e2e", args)
    assert cfg.crop == 96 and cfg.crops == (96, 64, 256)
    args.crop = "160"
    assert T.stage_config("uir", args).crops == () and T.stage_config("uir", args).crop == 160


@pytest.mark.parametrize("stage", ["codec", "decoder"])
def test_codec_learns_degraded_photos_as_well_as_clean(data_dir, stage):
    """The codec learns to reconstruct degraded photos too, the inputs it meets in the loop."""
    pool = T.PhotoPool(data_dir)
    cfg = T.StageConfig(steps=4, batch=12, crop=32, lr=1e-3)
    labels = [l for i in range(4) for l in T.StageBatches(stage, pool, cfg, seed=0)[i]["labels"]]
    clean = sum(not l for l in labels)
    assert 0 < clean < len(labels) and any(len(l) > 1 for l in labels)


def test_local_energy_measures_texture_not_its_phase():
    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 32, 32), 0.5)
    noise = 0.05 * torch.randn(1, 3, 32, 32, generator=g)
    e_flat, e_a = T.local_energy(flat), T.local_energy(flat + noise)
    e_b = T.local_energy(flat + noise.roll(5, dims=-1))  # the same grain, elsewhere
    assert e_flat.abs().max() < 1e-6 and e_a.mean() > 0.02
    assert torch.allclose(e_a.mean(), e_b.mean(), rtol=0.05)
    assert T.local_energy(flat + 2 * noise).mean() > 1.8 * e_a.mean()


def test_texture_term_charges_a_codec_that_drops_grain():
    """With the texture term, wiping out noise costs more than the pixel error alone; noise of the
    right energy in the wrong place costs (almost) nothing extra."""
    g = torch.Generator().manual_seed(1)
    clean = torch.linspace(0.3, 0.7, 64).expand(2, 3, 64, 64)  # smooth: all texture is the grain
    noisy = clean + 0.05 * torch.randn(2, 3, 64, 64, generator=g)
    plain, textured = T.reconstruction_loss(clean, noisy, 0.0), T.reconstruction_loss(clean, noisy, 2.0)
    assert textured > plain + 0.02
    other = clean + 0.05 * torch.randn(2, 3, 64, 64, generator=g)  # other grain, same energy
    extra = T.reconstruction_loss(other, noisy, 2.0) - T.reconstruction_loss(other, noisy, 0.0)
    assert extra < 0.2 * (textured - plain)


def test_cli_texture_weight_reaches_the_stage_config():
    import argparse

    args = argparse.Namespace(steps=None, batch=None, lr=None, crop=None, texture=2.0, compare=None, identify=None)
    assert T.stage_config("codec", args).texture == 2.0
    args.texture = None
    assert T.stage_config("codec", args).texture == T.DEFAULTS["codec"].texture == 0.0
    args.compare = 0.3
    assert T.stage_config("e2e", args).compare == 0.3
    args.compare = None
    assert T.stage_config("e2e", args).compare == T.DEFAULTS["e2e"].compare == 0.1


def test_lqa_identify_share_sets_the_batch_kinds(data_dir):
    """--identify P: the share of identification batches in the lqa stage; 0.5 keeps the old draws."""
    import argparse
    from dataclasses import replace

    pool = T.PhotoPool(data_dir)
    cfg = replace(T.DEFAULTS["lqa"], batch=2, crop=16, crops=(), steps=40)
    kinds = lambda c: [T.StageBatches("lqa", pool, c, seed=0)[i]["kind"] for i in range(c.steps)]  # noqa: E731
    half = kinds(cfg)
    assert 5 < half.count("identify") < 35
    assert set(kinds(replace(cfg, identify=1.0))) == {"identify"}
    assert set(kinds(replace(cfg, identify=0.0))) == {"compare"}
    mostly = kinds(replace(cfg, identify=0.8))
    assert mostly.count("identify") > half.count("identify")
    # the default draws what batch_lqa drew before the knob existed
    rng = np.random.default_rng([0, T.STAGE_SEED["lqa"], 3])
    side, n = cfg.draw(rng)
    assert T.batch_lqa(pool, rng, n, side)["kind"] == half[3]
    args = argparse.Namespace(steps=None, batch=None, lr=None, crop=None, texture=None, compare=None, identify=0.8)
    assert T.stage_config("lqa", args).identify == 0.8


def test_e2e_compare_weight_scales_the_verification_loss(data_dir, tiny_factory):
    """The e2e loss is flow + 0.1 LM + `compare` x verification: the same batch at two weights
    differs by exactly the verification term the step reports."""
    from dataclasses import replace

    model = tiny_factory(seed=0)
    cfg = replace(T.DEFAULTS["e2e"], batch=2, crop=16, crops=())
    b = T.StageBatches("e2e", T.PhotoPool(data_dir), cfg, seed=0)[0]
    losses = []
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        loss, info = T.STEP["e2e"](model, b, torch.Generator().manual_seed(0), replace(cfg, compare=w))
        losses.append(float(loss.detach()))
    assert info["cmp"] > 0
    assert losses[1] - losses[0] == pytest.approx(info["cmp"], rel=1e-4, abs=1e-6)


def _e2e_step_inputs(data_dir, tiny_factory):
    """(model, cfg, batch) for one small e2e step."""
    from dataclasses import replace

    cfg = replace(T.DEFAULTS["e2e"], batch=2, crop=16, crops=())
    return tiny_factory(seed=0), cfg, T.StageBatches("e2e", T.PhotoPool(data_dir), cfg, seed=0)[0]


def _train_args(**flags):
    """`rar train` arguments with nothing set but `flags`."""
    import argparse

    return argparse.Namespace(steps=None, batch=None, lr=None, crop=None, texture=None, compare=None, identify=None, **flags)


def test_e2e_identify_input_only(data_dir, tiny_factory):
    """With `identify_input_only` the identification LM loss is the input round's (its true label)
    alone; by default it is the mean over the 4 rounds, as in the shipped recipe."""
    from dataclasses import replace

    model, cfg, b = _e2e_step_inputs(data_dir, tiny_factory)
    assert cfg.identify_input_only is False
    infos = {}
    for only in (False, True):
        torch.manual_seed(0)
        infos[only] = T.STEP["e2e"](model, b, torch.Generator().manual_seed(0), replace(cfg, identify_input_only=only))[1]
    with torch.no_grad():
        z_deg = T.encode(model, b["deg"])
        expected = float(T.condition_teacher(model, z_deg, b["answers"], b["qs"][0])[2])
    assert infos[True]["id"] == pytest.approx(expected, rel=1e-5)
    assert abs(infos[False]["id"] - expected) > 1e-4  # the later rounds' latents give other losses
    assert infos[True]["flow"] == pytest.approx(infos[False]["flow"], rel=1e-5)  # the restoration is the same
    assert T.stage_config("e2e", _train_args(identify_input_only=True)).identify_input_only is True


def test_e2e_verify_pixels_labels_by_decoded_pixels(data_dir, tiny_factory):
    """With `verify_pixels` the better of two rounds is the one whose image (input pixels at
    round 0, decoded rounds after) is closer to the clean photo; by default the decoder plays no
    part and latent distance decides."""
    from dataclasses import replace

    model, cfg, b = _e2e_step_inputs(data_dir, tiny_factory)
    assert cfg.verify_pixels is False
    b["pair"] = torch.zeros_like(b["pair"])  # round 1 against the input pixels
    perfect, wrong = (lambda z: b["hq"].clone()), (lambda z: 1 - b["hq"])  # decoded rounds: exact or far off
    infos = {}
    for flag in (False, True):
        for name, dec in (("perfect", perfect), ("wrong", wrong)):
            model.decode = dec
            torch.manual_seed(0)
            infos[flag, name] = T.STEP["e2e"](model, b, torch.Generator().manual_seed(0), replace(cfg, verify_pixels=flag))[1]
    # default: the decoder is not consulted, so the labels (and the loss) are the same
    assert infos[False, "perfect"]["cmp"] == pytest.approx(infos[False, "wrong"]["cmp"], rel=1e-6)
    # pixels: a perfect round beats the degraded input, a wrong one loses to it; every label flips
    assert abs(infos[True, "perfect"]["cmp"] - infos[True, "wrong"]["cmp"]) > 1e-4
    assert infos[True, "perfect"]["flow"] == pytest.approx(infos[False, "perfect"]["flow"], rel=1e-5)
    assert T.stage_config("e2e", _train_args(verify_pixels=True)).verify_pixels is True


def test_pool_crops_keep_the_pixels_at_scale_one(data_dir):
    """A crop the side of the image's short edge is a plain window of it (no resampling)."""
    pool = T.PhotoPool(data_dir)
    i = min(range(len(pool.images)), key=lambda k: min(pool.images[k].shape[:2]))
    pool.images, pool._pil = [pool.images[i]], [pool._pil[i]]
    side = min(pool.images[0].shape[:2])
    crop = pool.crop(np.random.default_rng(0), side)
    img = pool.images[0]
    windows = [img[y : y + side, x : x + side] for y in range(img.shape[0] - side + 1) for x in range(img.shape[1] - side + 1)]
    assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1]) for w in windows)
    small = pool.crop(np.random.default_rng(1), side // 2)
    assert small.shape == (side // 2, side // 2, 3) and 0 <= small.min() and small.max() <= 1


@pytest.mark.parametrize("stage", ["lqa", "e2e"])
def test_batches_depend_on_seed_and_step_only(data_dir, stage):
    """A loader worker, a resumed run and an unbroken run all build the same batch for a step."""
    pool = T.PhotoPool(data_dir)
    cfg = T.StageConfig(steps=4, batch=2, crop=32, lr=1e-3, crops=(32, 48))
    a, b = T.StageBatches(stage, pool, cfg, seed=3), T.StageBatches(stage, pool, cfg, seed=3)
    for step in (2, 0, 3):
        x, y = a[step], b[step]
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k]

    def fingerprint(ds):
        return [round(float(sum(v.double().sum() for v in ds[i].values() if torch.is_tensor(v) and v.is_floating_point())), 6)
                for i in range(4)]

    assert fingerprint(a) != fingerprint(T.StageBatches(stage, pool, cfg, seed=4))


def test_loader_workers_give_the_same_training(tmp_path, data_dir, tiny_config):
    init = save_rar(build_model(tiny_config, seed=0), tmp_path / "init.safetensors")
    cfg = T.StageConfig(steps=3, batch=2, crop=32, lr=1e-3, log_every=1, save_every=10)
    p0 = T.train_stage("uir", tmp_path / "w0", data_dir, cfg, init=init, quiet=True, workers=0)
    p2 = T.train_stage("uir", tmp_path / "w2", data_dir, cfg, init=init, quiet=True, workers=2)
    s0, s2 = load_rar(p0).state_dict(), load_rar(p2).state_dict()
    assert all(torch.equal(s0[k], s2[k]) for k in s0)


def test_budget_caps_steps_and_records_them(tmp_path, data_dir, tiny_config, monkeypatch):
    """A budgeted run times steps CALIB[0]..CALIB[1], keeps the count that fits, and says so."""
    from rar_core.checkpoint import read_metadata

    monkeypatch.setattr(T, "CALIB", (1, 3))
    clock = iter(range(0, 10_000, 1))  # every call of time.time() advances one second
    monkeypatch.setattr(T.time, "time", lambda: float(next(clock)))
    init = save_rar(build_model(tiny_config, seed=0), tmp_path / "init.safetensors")
    cfg = T.StageConfig(steps=50, batch=1, crop=32, lr=1e-3, log_every=1, save_every=100)
    path = T.train_stage("uir", tmp_path / "b", data_dir, cfg, init=init, quiet=True, budget_s=20)
    used = json.loads(read_metadata(path)["train"])["steps"]
    assert 3 < used < 50
    log = [json.loads(line)["step"] for line in (tmp_path / "b" / "log-uir.jsonl").read_text().splitlines()]
    assert log[-1] == used


def test_verify_pairs_rank_successive_rounds_and_skip_near_ties():
    """Indices into [clean, z_0..z_4]: the better of each non-tied successive pair comes first,
    and the clean photo is paired with the input or the round `pick` names."""
    ps = [20.0, 23.0, 23.1, 22.0, 22.05]  # z_0 .. z_4
    assert T.verify_pairs(ps, 0.0, tie_db=0.25) == [(2, 1), (3, 4), (0, 1)]
    assert T.verify_pairs(ps, 0.999, tie_db=0.25)[-1] == (0, 5)
    assert T.verify_pairs(ps, 0.5, tie_db=5.0) == [(0, 3)]  # every round a near-tie: the clean pair only
    assert T.verify_pairs(ps, 0.0, tie_db=0.0)[:4] == [(2, 1), (3, 2), (3, 4), (5, 4)]


def test_verify_stage_trains_the_lqa_only_and_holds_its_identification_states(tmp_path, data_dir, tiny_factory):
    """The verify stage changes nothing but the LQA (with `freeze_head`, not its output head), and
    its `keep` term is zero for the frozen starting LQA and grows when the identification hidden
    states move."""
    import copy
    from dataclasses import replace

    model = tiny_factory(seed=0)
    init = save_rar(model, tmp_path / "init.safetensors")
    cfg = replace(T.DEFAULTS["verify"], steps=2, batch=2, crop=32, crops=(), log_every=1, save_every=1, freeze_head=True)
    path = T.train_stage("verify", tmp_path / "v", data_dir, cfg, init=init, quiet=True)
    before, after = load_rar(init).state_dict(), load_rar(path).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"lqa"}
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("lqa.lm.lm_head."))
    log = [json.loads(line) for line in (tmp_path / "v" / "log-verify.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["pairs"] >= 1 for r in log)
    args = __import__("argparse").Namespace(crop=None, tie_db=0.5, keep=3.0, freeze_head=None)
    assert (T.stage_config("verify", args).tie_db, T.stage_config("verify", args).keep) == (0.5, 3.0)
    assert T.stage_config("verify", args).freeze_head is False
    head = {id(p) for p in model.lqa.lm.lm_head.parameters()}
    assert head <= {id(p) for p in T.trainable(model, "verify")}
    assert not head & {id(p) for p in T.trainable(model, "verify", freeze_head=True)}

    b = T.StageBatches("verify", T.PhotoPool(data_dir), cfg, seed=0)[0]
    reference = copy.deepcopy(model.lqa).requires_grad_(False)
    _, info = T.step_verify(model, b, torch.Generator().manual_seed(0), cfg, reference)
    assert info["keep"] == pytest.approx(0.0, abs=1e-10) and info["cmp"] > 0
    with torch.no_grad():
        for p in model.lqa.lm.model.layers[-1].parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    _, moved = T.step_verify(model, b, torch.Generator().manual_seed(0), cfg, reference)
    assert moved["keep"] > 1e-4


def test_round_psnr_scores_round_zero_on_the_input_pixels(tiny_factory):
    """The loop returns the input's pixels when its first round is rejected, so the verify
    stage ranks round 1 against those, not against their codec round trip."""
    model = tiny_factory(seed=0)
    g = torch.Generator().manual_seed(0)
    x_hq = torch.rand(2, 3, 32, 32, generator=g)
    x_deg = (x_hq + 0.1 * torch.randn(2, 3, 32, 32, generator=g)).clamp(0, 1)
    zs = [model.encode(x_deg), model.encode(x_hq)]
    ps = T.round_psnr(model, zs, x_deg, x_hq)
    assert ps.shape == (2, 2)
    expected0 = -10 * torch.log10((x_deg - x_hq).pow(2).mean((1, 2, 3)))
    expected1 = -10 * torch.log10((model.decode(zs[1]).clamp(0, 1) - x_hq).pow(2).mean((1, 2, 3)))
    assert torch.allclose(ps[:, 0], expected0, atol=1e-4) and torch.allclose(ps[:, 1], expected1, atol=1e-4)


def test_connector_distillation_trains_a_q_alone_to_the_reference_conditioning(tmp_path, data_dir, tiny_factory):
    """The connector stage with a reference distils: A_Q alone learns to turn this model's LQA
    states into the conditioning the reference's LQA and A_Q give, on degraded and clean latents,
    so the restorer (frozen) needs no catch-up after an LQA is retrained."""
    import copy
    from dataclasses import replace

    reference = tiny_factory(seed=0).requires_grad_(False)
    cfg = replace(T.DEFAULTS["connector"], steps=4, batch=2, crop=32, crops=(), log_every=1, save_every=2, lr=1e-2)
    b = T.StageBatches("connector", T.PhotoPool(data_dir), cfg, seed=0)[0]
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    same, info = T.step_connector(copy.deepcopy(reference), b, gen(), cfg, reference)
    assert float(same) == pytest.approx(0.0, abs=1e-10)
    assert info["shift"] == pytest.approx(0.0, abs=1e-10)

    model = tiny_factory(seed=0)
    model.lqa.load_state_dict(tiny_factory(seed=1).lqa.state_dict())  # a retrained LQA
    params = T.trainable(model, "connector", freeze=("uir",))  # what train_stage freezes with a reference
    assert {id(p) for p in params} == {id(p) for p in model.connector.parameters()}
    opt = torch.optim.Adam(params, lr=1e-4)
    shifts = []
    for _ in range(10):
        loss, info = T.step_connector(model, b, gen(), cfg, reference)
        assert float(loss.detach()) == pytest.approx(info["shift"], rel=1e-6) and info["shift"] > 0
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in model.lqa.parameters()) and all(p.grad is None for p in model.uir.parameters())
        opt.step()
        shifts.append(float(loss.detach()))
    assert shifts[0] > 1e-3 and shifts[-1] < 0.5 * shifts[0]

    init = save_rar(model, tmp_path / "init.safetensors")
    ref_path = save_rar(reference, tmp_path / "ref.safetensors")
    path = T.train_stage("connector", tmp_path / "d", data_dir, cfg, init=init, quiet=True, reference=ref_path)
    before, after = load_rar(init).state_dict(), load_rar(path).state_dict()
    assert {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])} == {"connector"}
    log = [json.loads(line) for line in (tmp_path / "d" / "log-connector.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4] and all(r["shift"] > 0 for r in log)
    with pytest.raises(SystemExit, match="connector stage"):
        T.train_stage("lqa", tmp_path / "x", data_dir, cfg, init=init, quiet=True, reference=ref_path)
    other = tiny_factory(seed=0)
    other.uir.load_state_dict(tiny_factory(seed=2).uir.state_dict())  # another restorer: nothing to hold
    with pytest.raises(SystemExit, match="restorer differs"):
        T.train_stage("connector", tmp_path / "y", data_dir, cfg, init=init, quiet=True,
                      reference=save_rar(other, tmp_path / "other.safetensors"))
    with pytest.raises(SystemExit, match="codec differs"):
        T.train_stage("connector", tmp_path / "z", data_dir, cfg, init=init, quiet=True,
                      reference=save_rar(tiny_factory(seed=2), tmp_path / "far.safetensors"))


def test_freeze_leaves_the_named_parts_as_they_are(tiny_factory):
    """`--freeze lqa,uir` makes the e2e stage adapt A_Q alone; unknown names, or freezing all a
    stage trains, are clear errors."""
    model = tiny_factory(seed=0)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(T.trainable(model, "e2e", freeze=("lqa", "uir"))) == ids(model.connector.parameters())
    assert all(not p.requires_grad for p in model.lqa.parameters()) and all(not p.requires_grad for p in model.uir.parameters())
    assert ids(T.trainable(model, "e2e")) == ids([*model.connector.parameters(), *model.uir.parameters(), *model.lqa.parameters()])
    with pytest.raises(SystemExit, match="unknown parts"):
        T.trainable(model, "e2e", freeze=("restorer",))
    with pytest.raises(SystemExit, match="nothing to train"):
        T.trainable(model, "lqa", freeze=("lqa",))
    assert T.stage_config("e2e", _train_args(freeze="lqa, uir")).freeze == ("lqa", "uir")
    assert T.stage_config("e2e", _train_args()).freeze == ()


def test_bf16_precision_trains_every_stage_with_fp32_weights(tmp_path, data_dir, tiny_config):
    """bf16 autocasts the forward only: every stage runs, weights stay fp32, the file says bf16,
    and the arithmetic really changed (same batches, different weights than fp32, but close)."""
    from dataclasses import replace

    from rar_core.checkpoint import read_metadata

    init = save_rar(build_model(tiny_config, seed=0), tmp_path / "init.safetensors")
    cfg = T.StageConfig(steps=2, batch=2, crop=32, lr=1e-3, log_every=1, save_every=10, precision="bf16")
    out = tmp_path / "bf16"
    T.train_stage("codec", out, data_dir, cfg, init=init, quiet=True)
    for stage in T.STAGES[1:]:
        path = T.train_stage(stage, out, data_dir, cfg, quiet=True)
        log = [json.loads(line) for line in (out / f"log-{stage}.jsonl").read_text().splitlines()]
        assert all(np.isfinite(r["loss"]) for r in log), stage
        assert json.loads(read_metadata(path)["train"])["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in load_rar(path).state_dict().values() if v.is_floating_point())

    fp32 = replace(cfg, precision="fp32")
    p32 = T.train_stage("uir", tmp_path / "fp32", data_dir, fp32, init=init, quiet=True)
    p16 = T.train_stage("uir", tmp_path / "bf16-uir", data_dir, cfg, init=init, quiet=True)
    a, b = load_rar(p32).uir.state_dict(), load_rar(p16).uir.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
    assert all(torch.allclose(a[k], b[k], atol=5e-3) for k in a)


def test_unknown_precision_is_a_clear_error(tmp_path, data_dir):
    with pytest.raises(SystemExit, match="precision 'fp8'"):
        T.train_stage("codec", tmp_path, data_dir, T.StageConfig(1, 1, 32, 1e-3, precision="fp8"), quiet=True)


def test_cli_precision_reaches_the_stage_config():
    import argparse

    args = argparse.Namespace(steps=None, batch=None, lr=None, crop=None, precision="fp32")
    assert T.stage_config("lqa", args).precision == "fp32"
    args.precision = None
    assert T.stage_config("lqa", args).precision == T.DEFAULTS["lqa"].precision


def test_time_train_steps_times_both_precisions_on_the_same_batches(tmp_path, data_dir, tiny_config, load_script, monkeypatch, capsys):
    S = load_script("time_train_steps")
    monkeypatch.setitem(T.DEFAULTS, "uir", T.StageConfig(steps=3, batch=2, crop=32, lr=1e-3))
    init = save_rar(build_model(tiny_config, seed=0), tmp_path / "init.safetensors")
    batches, data_s = S.make_batches(T.PhotoPool(data_dir), "uir", steps=2)
    assert len(batches) == 3 and data_s > 0
    (t32, l32), (t16, l16) = (S.time_stage(init, batches, "uir", p) for p in ("fp32", "bf16"))
    assert t32 > 0 and t16 > 0 and len(l32) == len(l16) == 3
    assert l32[0] != l16[0] and abs(l32[0] - l16[0]) < 0.05 * abs(l32[0])  # same batch, other arithmetic
    assert S.main(["--model", str(init), "--data", str(data_dir), "--stages", "uir", "--steps", "1"]) == 0
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| uir |")]
    assert len(row) == 1 and row[0].count("|") == 8
