"""A tiny end-to-end run of `rar train --stage all`, resumption, the shipped recipe, and its pieces."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
from dataclasses import FrozenInstanceError, replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from rar_core import degrade as D
from rar_core import train as T
from rar_core.checkpoint import build_model, load_rar, read_metadata, save_rar


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


def _tiny_recipe(steps: int = 2) -> T.Recipe:
    """Every stage, the optional verify stage included, and a pool with every kind of crop."""
    cfg = T.StageConfig(steps=steps, batch=2, crop=32, lr=1e-3, log_every=1, save_every=1, clean_p=0.5)
    return T.Recipe("tiny", "compact", **{stage: cfg for stage in T.STAGES}, verify=cfg,
                    pool=T.PoolConfig(synthetic=1, synthetic_p=0.3, bright_p=0.3))


def _rar_train(argv: list[str]) -> int:
    """`rar train ARGV` through the subcommand's own parser."""
    parser = argparse.ArgumentParser()
    T.add_train_subparser(parser.add_subparsers())
    args = parser.parse_args(["train", *argv])
    return args.func(args)


def test_stage_all_chains_every_stage_exports_and_resumes(tmp_path, data_dir, tiny_config, monkeypatch):
    """`rar train --stage all` runs the stages in order, each from the previous one's file, and
    exports a model that loads; a rerun with more steps resumes each stage where it stopped."""
    monkeypatch.setitem(T.RECIPES, "tiny", _tiny_recipe())
    monkeypatch.setattr(T, "build_model", lambda config, seed=None: build_model(tiny_config, seed=seed))
    out, export = tmp_path / "runs", tmp_path / "mine.safetensors"
    before = build_model(tiny_config, seed=0).state_dict()
    assert _rar_train(["--stage", "all", "--recipe", "tiny", "--data", str(data_dir), "--out", str(out),
                       "--device", "cpu", "-q", "--export", str(export)]) == 0
    for stage in (*T.STAGES, "verify"):
        assert T.stage_path(out, stage).is_file()
        log = [json.loads(line) for line in (out / f"log-{stage}.jsonl").read_text().splitlines()]
        assert [r["step"] for r in log] == [1, 2] and all(np.isfinite(r["loss"]) for r in log)
        meta = read_metadata(T.stage_path(out, stage))
        assert meta["stage"] == stage and json.loads(meta["train"])["steps"] == 2
    final = load_rar(export)
    assert read_metadata(export)["stage"] == "final"
    with safe_open(str(export), framework="pt") as f:  # exported in fp16, to ship half the bytes
        assert {f.get_tensor(k).dtype for k in f.keys() if f.get_tensor(k).is_floating_point()} == {torch.float16}
    after = load_rar(T.stage_path(out, "e2e")).state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert {"codec", "lqa", "connector", "uir"} <= changed
    # the codec stage calibrates the latent normalisation (zero mean, unit std), and it travels on
    assert final.config.codec.scale != 1.0
    verify = load_rar(T.stage_path(out, "verify")).state_dict()
    assert all(torch.allclose(final.state_dict()[k].float(), verify[k], atol=1e-2, rtol=1e-2) for k in verify)
    # the verify stage, last, trains the LQA alone
    decoder = load_rar(T.stage_path(out, "decoder")).state_dict()
    assert {k.split(".")[0] for k in decoder if not torch.equal(decoder[k], verify[k])} == {"lqa"}

    # resume: a longer run of a finished stage continues from its saved step
    assert _rar_train(["--stage", "uir", "--recipe", "tiny", "--steps", "3", "--data", str(data_dir),
                       "--out", str(out), "-q"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "log-uir.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]


def test_refine_stage_runs_after_the_decoder_and_verify_after_it(tmp_path, data_dir, tiny_config, monkeypatch):
    """A recipe with the refine stage: it starts from the decoder stage, trains what e2e trains
    on its own pool, and the verify stage then starts from it, not from the decoder."""
    own = T.PoolConfig(synthetic=1, synthetic_p=0.5, dark_p=0.5)
    recipe = _tiny_recipe()
    recipe = replace(recipe, refine=replace(recipe.e2e, pool=own))
    assert recipe.stages == (*T.STAGES, "refine", "verify")
    assert recipe.previous("refine") == "decoder" and recipe.previous("verify") == "refine"
    monkeypatch.setitem(T.RECIPES, "tiny", recipe)
    out = tmp_path / "runs"
    save_rar(build_model(tiny_config, seed=0), T.stage_path(out, "decoder"), {"stage": "decoder"})
    pools = []
    real_pool = T.PhotoPool
    monkeypatch.setattr(T, "PhotoPool", lambda data, cfg: pools.append(cfg) or real_pool(data, cfg=cfg))
    for stage in ("refine", "verify"):
        assert _rar_train(["--stage", stage, "--recipe", "tiny", "--data", str(data_dir), "--out", str(out),
                           "--device", "cpu", "-q"]) == 0
    assert pools == [own, recipe.verify.pool or recipe.pool]
    decoder, refine, verify = (load_rar(T.stage_path(out, s)).state_dict() for s in ("decoder", "refine", "verify"))
    assert {k.split(".")[0] for k in decoder if not torch.equal(decoder[k], refine[k])} == {"connector", "uir", "lqa"}
    assert {k.split(".")[0] for k in refine if not torch.equal(refine[k], verify[k])} == {"lqa"}


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
    """No manifest, an empty one, or missing photos: one line saying what to do, before any
    stage starts (the run's --out folder is never created)."""
    out = tmp_path / "runs"
    args = ["--stage", "all", "--data", str(tmp_path), "--out", str(out), "-q"]
    with pytest.raises(SystemExit, match="manifest.json not found; run `python scripts/fetch_data.py"):
        _rar_train(args)
    (tmp_path / "manifest.json").write_text(json.dumps({"images": []}))
    with pytest.raises(SystemExit, match="no training images"):
        _rar_train(args)
    (tmp_path / "manifest.json").write_text(json.dumps({"images": [{"file": "train/a.png", "split": "train"}]}))
    with pytest.raises(SystemExit, match="1 training photo.* missing, e.g. .*a.png"):
        T.PhotoPool(tmp_path)
    with pytest.raises(SystemExit, match="must be positive"):
        _rar_train([*args, "--steps", "0"])
    assert not out.exists()


def test_mixed_crops_draw_sides_and_scale_the_batch():
    cfg = T.StageConfig(steps=1, batch=16, crop=64, lr=1e-3, crops=(64, 128, 256))
    draws = {cfg.draw(np.random.default_rng(i)) for i in range(60)}
    assert draws == {(64, 16), (128, 8), (256, 4)}
    assert T.StageConfig(steps=1, batch=5, crop=96, lr=1e-3).draw(np.random.default_rng(0)) == (96, 5)


def test_compact_recipe_is_the_shipped_models():
    """The shipped model was made with exactly these stage sizes (docs/training.md); a recipe is
    frozen data, and --steps replaces the step count alone."""
    r = T.RECIPES["compact"]
    assert r.preset == "compact"
    sizes = {s: (c.steps, c.batch, c.crop, c.lr, c.crops, c.compare, c.identify) for s in T.STAGES for c in [r.stage(s)]}
    assert sizes == {
        "codec": (7000, 12, 64, 1e-3, (), 0.1, 0.5),
        "uir": (1100, 96, 128, 4e-4, (), 0.1, 0.5),
        "lqa": (1925, 128, 64, 5e-4, (64, 128, 192, 256), 0.1, 0.5),
        "connector": (200, 96, 128, 2e-4, (), 0.1, 0.5),
        "e2e": (2500, 6, 96, 1e-4, (96, 64, 128, 192, 256), 0.1, 0.5),
        "decoder": (1000, 8, 96, 5e-4, (), 0.1, 0.5),
    }
    assert r.refine == replace(r.e2e, steps=1000, pool=T.PoolConfig(synthetic=12, synthetic_p=0.12, bright_p=0.2))
    assert r.stages == (*T.STAGES, "refine", "verify")
    assert {(c.log_every, c.save_every) for c in map(r.stage, T.STAGES)} == {(25, 200)}
    with pytest.raises(FrozenInstanceError):
        r.uir.steps = 1
    assert T.stage_config(r, "e2e", 40) == replace(r.e2e, steps=40)
    assert T.stage_config(r, "e2e") is r.e2e


def test_train_cli_offers_the_recipe_not_its_experiments(monkeypatch):
    """`rar train` takes the stage, the recipe and the run's knobs; recipe sizes and the
    experiments' flags are not options."""
    parser = argparse.ArgumentParser()
    T.add_train_subparser(parser.add_subparsers())
    train = parser._subparsers._group_actions[0].choices["train"]
    flags = {s for a in train._actions for s in a.option_strings if s.startswith("--")}
    assert flags == {"--help", "--stage", "--recipe", "--data", "--out", "--export", "--device", "--steps",
                     "--budget-s", "--seed", "--quiet"}
    stage = next(a for a in train._actions if a.dest == "stage")
    assert tuple(stage.choices) == (*T.STAGES, "refine", "verify", "all")
    monkeypatch.setitem(T.RECIPES, "plain", replace(T.RECIPES["compact"], name="plain", verify=None))
    with pytest.raises(SystemExit, match="recipe 'plain' has no verify stage"):
        _rar_train(["--stage", "verify", "--recipe", "plain"])


def test_experiment_recipes_still_build():
    """experiments/recipes.py (outside the package) keeps tried recipes as data: each is a full
    Recipe of a known preset whose stages draw valid batches."""
    path = Path(__file__).resolve().parent.parent / "experiments" / "recipes.py"
    spec = importlib.util.spec_from_file_location("experiment_recipes", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.EXPERIMENTS and not set(mod.EXPERIMENTS) & set(T.RECIPES)
    from rar_core.config import RARConfig

    for name, recipe in mod.EXPERIMENTS.items():
        assert isinstance(recipe, T.Recipe) and recipe.name == name
        RARConfig.preset(recipe.preset)
        for stage in T.STAGES:
            cfg = recipe.stage(stage)
            assert isinstance(cfg, T.StageConfig) and cfg.steps > 0 and cfg.lr > 0
            side, batch = cfg.draw(np.random.default_rng(0))
            assert side % 8 == 0 and batch >= 1


@pytest.mark.parametrize("stage", ["codec", "decoder"])
def test_codec_learns_degraded_photos_as_well_as_clean(data_dir, stage):
    """The codec learns to reconstruct degraded photos too, the inputs it meets in the loop."""
    pool = T.PhotoPool(data_dir)
    cfg = T.StageConfig(steps=4, batch=12, crop=32, lr=1e-3)
    labels = [l for i in range(4) for l in T.StageBatches(stage, pool, cfg, seed=0)[i]["labels"]]
    clean = sum(not l for l in labels)
    assert 0 < clean < len(labels) and any(len(l) > 1 for l in labels)


def test_lqa_identify_share_sets_the_batch_kinds(data_dir):
    """`identify`: the share of identification batches in the lqa stage."""
    pool = T.PhotoPool(data_dir)
    cfg = replace(T.RECIPES["compact"].lqa, batch=2, crop=16, crops=(), steps=40)
    kinds = lambda c: [T.StageBatches("lqa", pool, c, seed=0)[i]["kind"] for i in range(c.steps)]  # noqa: E731
    half = kinds(cfg)
    assert 5 < half.count("identify") < 35
    assert set(kinds(replace(cfg, identify=1.0))) == {"identify"}
    assert set(kinds(replace(cfg, identify=0.0))) == {"compare"}
    mostly = kinds(replace(cfg, identify=0.8))
    assert mostly.count("identify") > half.count("identify")
    # identification batches hold clean photos at the recipe's share, answered "Clean"
    answers = [a for i in range(40) for b in [T.StageBatches("lqa", pool, replace(cfg, identify=1.0, batch=8), 0)[i]]
               for a in b["answers"]]
    assert 0.05 < answers.count(T.CLEAN) / len(answers) < 0.25  # the recipe's 0.12 of 320 answers


def test_e2e_compare_weight_scales_the_verification_loss(data_dir, tiny_factory):
    """The e2e loss is flow + 0.1 LM + `compare` x verification: the same batch at two weights
    differs by exactly the verification term the step reports."""
    model = tiny_factory(seed=0)
    cfg = replace(T.RECIPES["compact"].e2e, batch=2, crop=16, crops=())
    b = T.StageBatches("e2e", T.PhotoPool(data_dir), cfg, seed=0)[0]
    losses = []
    for w in (0.0, 1.0):
        torch.manual_seed(0)
        loss, info = T.STEP["e2e"](model, b, torch.Generator().manual_seed(0), replace(cfg, compare=w))
        losses.append(float(loss.detach()))
    assert info["cmp"] > 0
    assert losses[1] - losses[0] == pytest.approx(info["cmp"], rel=1e-4, abs=1e-6)


def test_pool_crops_keep_the_pixels_at_scale_one(data_dir):
    """A crop the side of the image's short edge is a plain window of it (no resampling)."""
    pool = T.PhotoPool(data_dir)
    i = min(range(len(pool.images)), key=lambda k: min(pool.images[k].shape[:2]))
    pool.images, pool._pil, pool.photos = [pool.images[i]], [pool._pil[i]], 1
    side = min(pool.images[0].shape[:2])
    crop = pool.crop(np.random.default_rng(0), side)
    img = pool.images[0]
    windows = [img[y : y + side, x : x + side] for y in range(img.shape[0] - side + 1) for x in range(img.shape[1] - side + 1)]
    assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1]) for w in windows)
    small = pool.crop(np.random.default_rng(1), side // 2)
    assert small.shape == (side // 2, side // 2, 3) and 0 <= small.min() and small.max() <= 1


@pytest.mark.parametrize("stage", ["lqa", "e2e", "verify"])
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


def test_round_psnr_scores_round_zero_on_the_input_pixels(tiny_factory):
    """The loop returns the input's pixels when its first round is rejected, so the margin
    calibration scores round 0 on those, not on their codec round trip."""
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




def test_pool_mixes_flat_graphics_and_bright_exposures(data_dir):
    """The recipe's pool: a share of crops from the rendered graphics, a share of photo crops
    lifted bright; with neither (the old recipes) the draws are the photos' alone."""
    plain, mixed = T.PhotoPool(data_dir), T.PhotoPool(data_dir, cfg=T.PoolConfig(synthetic=2, synthetic_p=0.5, bright_p=0.5))
    assert len(plain.images) == plain.photos == 3 and len(mixed.images) == 3 + 2 * 4
    levels = lambda pool: np.array([pool.crop(np.random.default_rng(i), 32).mean() for i in range(200)])  # noqa: E731
    assert (levels(mixed) > 0.75).mean() > (levels(plain) > 0.75).mean() + 0.15
    # without a mix the pool draws exactly what it drew before the mix existed
    rng = np.random.default_rng(5)
    assert np.array_equal(plain.crop(np.random.default_rng(5), 32), plain._crop(rng, 32, int(rng.integers(3))))


def test_pool_mixes_dark_exposures_that_keep_their_highlights(data_dir):
    """Dark exposures lower a photo crop's level but, unlike the low-light degradation, keep its
    brightest pixels near where they were, and a pool with both mixes draws each."""
    plain = T.PhotoPool(data_dir)
    dark = T.PhotoPool(data_dir, cfg=T.PoolConfig(dark_p=1.0))
    both = T.PhotoPool(data_dir, cfg=T.PoolConfig(bright_p=0.5, dark_p=0.5))
    for seed in range(20):
        src, out = plain.crop(np.random.default_rng(seed), 32), dark.crop(np.random.default_rng(seed), 32)
        assert out.shape == src.shape and out.dtype == np.float32
        assert out.mean() < 0.8 * src.mean()
        assert out.max() >= 0.75 * src.max() ** 2.8
    ratio = np.array([both.crop(np.random.default_rng(i), 32).mean() / plain.crop(np.random.default_rng(i), 32).mean()
                      for i in range(200)])
    assert 0.3 < (ratio > 1.05).mean() < 0.7 and 0.3 < (ratio < 0.95).mean() < 0.7


def test_pool_takes_the_extra_and_wide_images_only_when_asked(data_dir, tmp_path):
    """The manifest's extra and wide splits feed the pools with `extra` / `wide` set and no other; a
    recipe that asks for one on data fetched before it existed gets a one-line error that says to
    fetch again."""
    for cfg in (T.PoolConfig(extra=True), T.PoolConfig(wide=True)):
        with pytest.raises(SystemExit, match="fetch_data.py"):
            T.PhotoPool(data_dir, cfg=cfg)
    root = tmp_path / "data"
    shutil.copytree(data_dir, root)
    manifest = json.loads((root / "manifest.json").read_text())
    for split, level in (("extra", 200), ("wide", 30)):
        (root / split).mkdir()
        Image.fromarray(np.full((64, 64, 3), level, np.uint8)).save(root / split / "more.png")
        manifest["images"].append({"file": f"{split}/more.png", "split": split})
    (root / "manifest.json").write_text(json.dumps(manifest))
    asks = {(): T.PoolConfig(), ("extra",): T.PoolConfig(extra=True), ("wide",): T.PoolConfig(wide=True),
            ("extra", "wide"): T.PoolConfig(extra=True, wide=True)}
    for key, cfg in asks.items():
        pool = T.PhotoPool(root, cfg=cfg)
        assert pool.photos == 3 + len(key)
        for split, level in (("extra", 200), ("wide", 30)):
            assert any(np.allclose(im, level / 255) for im in pool.images) == (split in key)


def test_dark_exposures_not_dimmed_get_every_degradation_but_low_light(data_dir):
    """With `dark_not_dimmed`, a dark exposure is degraded by anything but low light (a dark photo
    is a target to keep, a dimmed one still one to lift); the other crops and, without the flag,
    the dark exposures too draw every degradation."""
    def labels(cfg):
        pool, out = T.PhotoPool(data_dir, cfg=cfg), []
        for i in range(300):
            rng = np.random.default_rng(i)
            exposure = pool.draw(np.random.default_rng(i), 32)[1]
            out.append((exposure, T.degraded_sample(pool, rng, 32, composite_p=0.5)[2]))
        return out

    kept = labels(T.PoolConfig(dark_p=0.5, dark_not_dimmed=True))
    dark = [ls for e, ls in kept if e == "dark"]
    assert len(dark) > 100 and not any("dark" in ls for ls in dark)
    assert {n for ls in dark for n in ls} == set(D.LABELS) - {"dark"}
    assert any("dark" in ls for e, ls in kept if e == "")
    assert any("dark" in ls for e, ls in labels(T.PoolConfig(dark_p=0.5)) if e == "dark")


def test_pool_recolours_photo_crops_grey_or_channel_permuted(data_dir):
    """grey_p turns a share of photo crops grey, permute_p reorders the channels of another share
    (same pixels, other hues), of the very crop the plain pool draws with the same seed."""
    plain = T.PhotoPool(data_dir)
    mixed = T.PhotoPool(data_dir, cfg=T.PoolConfig(grey_p=0.3, permute_p=0.4))
    grey = permuted = 0
    for seed in range(200):
        src, out = plain.crop(np.random.default_rng(seed), 32), mixed.crop(np.random.default_rng(seed), 32)
        assert out.shape == src.shape and out.dtype == np.float32
        if np.allclose(out[..., 0], out[..., 1], atol=1e-6) and np.allclose(out[..., 1], out[..., 2], atol=1e-6):
            grey += 1
            assert np.allclose(out[..., 0], src @ np.array([0.299, 0.587, 0.114]), atol=1e-5)
        elif not np.array_equal(out, src):
            permuted += 1
            assert np.array_equal(np.sort(out, axis=-1), np.sort(src, axis=-1))
    assert 40 < grey < 80 and 55 < permuted < 105


def test_a_stage_with_its_own_pool_draws_from_it(tmp_path, data_dir, monkeypatch):
    """`rar train --stage all` hands each stage the recipe's pool, and a stage that names its own
    (the gate's bright and flat content) that one."""
    own = T.PoolConfig(synthetic=1, synthetic_p=0.5, bright_p=0.5)
    recipe = _tiny_recipe()
    monkeypatch.setitem(T.RECIPES, "tiny", replace(recipe, verify=replace(recipe.verify, pool=own)))
    seen = {}

    def fake_stage(stage, out, data, cfg, *args, pool, **kwargs):
        seen[stage] = pool
        return T.stage_path(out, stage)

    monkeypatch.setattr(T, "train_stage", fake_stage)
    assert _rar_train(["--stage", "all", "--recipe", "tiny", "--data", str(data_dir), "--out", str(tmp_path), "-q"]) == 0
    assert seen == {**{stage: recipe.pool for stage in T.STAGES}, "verify": own}


def test_tint_darkens_and_saturates_or_lightens_and_pales():
    x = np.random.default_rng(0).uniform(0.2, 0.8, (16, 16, 3)).astype(np.float32)
    spread = lambda a: float((a - a.mean(-1, keepdims=True)).std())  # noqa: E731
    for seed in range(20):
        y = T.tint(x, np.random.default_rng(seed))
        darker = y.mean() < x.mean() - 0.01
        assert darker or y.mean() > x.mean() + 0.01
        assert (spread(y) > spread(x)) == darker


def test_e2e_identifies_the_input_round_only_when_asked(data_dir, tiny_factory):
    """identify_input_only: the LM loss is the input round's alone (restored rounds are not
    labelled with the input's degradation), so the reported id loss changes and the flow does not."""
    model = tiny_factory(seed=0)
    cfg = replace(T.RECIPES["compact"].e2e, batch=2, crop=16, crops=())
    b = T.StageBatches("e2e", T.PhotoPool(data_dir), cfg, seed=0)[0]
    infos = []
    for only in (False, True):
        _, info = T.STEP["e2e"](model, b, torch.Generator().manual_seed(0), replace(cfg, identify_input_only=only))
        infos.append(info)
    assert infos[0]["flow"] == pytest.approx(infos[1]["flow"], rel=1e-5)
    _, _, lm0 = T.condition_teacher(model, T.encode(model, b["deg"]), b["answers"], b["qs"][0])
    assert infos[1]["id"] == pytest.approx(float(lm0), rel=1e-5)
    assert abs(infos[0]["id"] - float(lm0)) > 1e-4  # the mean over rounds is another number


def test_verify_pairs_rank_rounds_and_skip_near_ties():
    pairs = T.verify_pairs([20.0, 22.0, 22.1, 21.0], tie_db=0.25)
    assert pairs == [(1, 0), (2, 3)]  # round 1 beats the input; 1 vs 2 is a near-tie; 2 beats 3
    every = T.verify_pairs([20.0, 22.0, 22.1, 21.0], tie_db=0.25, all_pairs=True)
    # rounds 1 and 2 beat the input and round 3, round 3 beats the input; only 1 vs 2 is a near-tie
    assert sorted(every) == [(1, 0), (1, 3), (2, 0), (2, 3), (3, 0)]


def test_verify_step_trains_the_lqa_alone_on_every_sample(data_dir, tiny_factory):
    """The verify stage: each sample gives its successive rounds' pairs plus one with the clean
    photo (its tinted copy for a clean input); the loss reaches the LQA and nothing else."""
    import copy

    model = tiny_factory(seed=0)
    cfg = replace(T.StageConfig(steps=1, batch=4, crop=32, lr=1e-3), clean_p=0.5)
    b = T.StageBatches("verify", T.PhotoPool(data_dir), cfg, seed=0)[0]
    assert 0 < int(b["clean"].sum()) < 4 and torch.equal(b["hq"][b["clean"]], b["deg"][b["clean"]])
    assert not torch.equal(b["tint"], b["hq"])
    params = T.trainable(model, "verify")
    loss, info = T.STEP["verify"](model, b, torch.Generator().manual_seed(0), cfg,
                                  reference=copy.deepcopy(model.lqa).requires_grad_(False))
    assert torch.isfinite(loss) and info["pairs"] >= 1 and info["keep"] == pytest.approx(0.0, abs=1e-6)
    loss.backward()
    assert all(p.grad is not None for p in params if p.requires_grad) and params
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("lqa."))


def test_verify_step_answers_clean_where_the_first_round_does_not_help(data_dir, tiny_factory, monkeypatch):
    """With `clean_answer`, the input round is taught "Clean" when round 1 does not beat the
    input's pixels by tie_db (a clean input always), its true label otherwise; the term adds
    `clean_answer` times its LM loss to the stage's loss."""
    import copy

    model = tiny_factory(seed=0)
    cfg = T.StageConfig(steps=1, batch=4, crop=32, lr=1e-3, clean_p=0.5)
    b = T.StageBatches("verify", T.PhotoPool(data_dir), cfg, seed=0)[0]
    clean = b["clean"].tolist()
    degraded = [i for i, c in enumerate(clean) if not c]
    assert any(clean) and len(degraded) >= 1
    worth = degraded[0]  # its round 1 gains 2 dB; every other input's round 1 loses or gains too little
    ps = torch.tensor([[100.0, 30.0, 29.0, 28.0, 27.0] if c else
                       ([20.0, 22.0, 22.5, 23.0, 23.5] if i == worth else [20.0, 20.1, 21.0, 22.0, 23.0])
                       for i, c in enumerate(clean)])
    monkeypatch.setattr(T, "round_psnr", lambda *args: ps)
    seen = []
    forced = type(model.lqa).teacher_forced
    monkeypatch.setattr(type(model.lqa), "teacher_forced",
                        lambda self, prefix, answers: seen.append(list(answers)) or forced(self, prefix, answers))
    step = lambda c: T.STEP["verify"](model, b, torch.Generator().manual_seed(0), c,  # noqa: E731
                                      reference=copy.deepcopy(model.lqa).requires_grad_(False))
    base, _ = step(cfg)
    passes = len(seen)
    seen.clear()
    loss, info = step(replace(cfg, clean_answer=0.5))
    assert len(seen) == passes + 1 and seen[-1] == [b["answers"][i] if i == worth else T.CLEAN for i in range(len(clean))]
    assert info["worth"] == pytest.approx(1 / len(clean))
    assert loss.item() == pytest.approx(base.item() + 0.5 * info["id"], rel=1e-5)
