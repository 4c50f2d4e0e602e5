"""The size policy (tiling.py, loop.py): at any image size one decision per image, a bounded LQA
view, the restorer and the codec on feathered overlapping tiles, and exactly the untiled code for
inputs that fit in one tile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rar_core import tiling
from rar_core.config import RARConfig
from rar_core.model import RAR, Assessment
from rar_core.loop import restore_image
from rar_core.uir import FlowEuler

# ----- the tiler ---------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(300, 410), (129, 257), (64, 1000), (50, 60)])
def test_grid_covers_the_plane_with_equal_aligned_windows(h, w):
    g = tiling.Grid.over(h, w, 128, 32, 16)
    cover = torch.zeros(h, w)
    for y, x in g.windows:
        assert y % 16 == 0 and x % 16 == 0 or (y == h - g.th or x == w - g.tw)
        assert y + g.th <= h and x + g.tw <= w
        cover[y : y + g.th, x : x + g.tw] += 1
    assert cover.min() >= 1
    assert (g.th, g.tw) == (min(128, h), min(128, w))
    for a, b in zip(g.ys, g.ys[1:]):
        assert b - a <= 128 - 32  # neighbours overlap by at least `overlap`
    with pytest.raises(ValueError, match="overlap 64 must be less than half the tile size 128"):
        tiling.Grid.over(h, w, 128, 64)


def test_blend_of_identity_and_pointwise_fns_is_exact():
    x = torch.rand(2, 3, 300, 410, generator=torch.Generator().manual_seed(0))
    shapes = []

    def fn(t, items):
        shapes.append(tuple(t.shape))
        return t * 0.5 + 0.25

    y = tiling.blend(x, fn, 128, 16, multiple=8, batch=6)
    assert len(shapes) > 2 and all(s[0] <= 6 and s[0] % 2 == 0 and s[-2:] == (128, 128) for s in shapes)
    torch.testing.assert_close(y, x * 0.5 + 0.25, rtol=0, atol=1e-6)  # weights sum to 1 up to rounding


@pytest.mark.parametrize("scale", [4, 0.25])
def test_blend_with_a_scale_maps_windows_between_resolutions(scale):
    """Codec tiles: pixel windows -> latent windows (0.25) and back (4)."""
    x = torch.rand(1, 3, 96, 160, generator=torch.Generator().manual_seed(1))
    if scale == 4:
        fn = lambda t, _: F.interpolate(t, scale_factor=4, mode="nearest")  # noqa: E731
        ref = F.interpolate(x, scale_factor=4, mode="nearest")
    else:
        fn = lambda t, _: F.avg_pool2d(t, 4)  # noqa: E731
        ref = F.avg_pool2d(x, 4)
    y = tiling.blend(x, fn, 64, 16, multiple=4, scale=scale)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-6)


def test_blend_fits_in_one_window_runs_fn_on_the_input_itself():
    x = torch.rand(1, 3, 50, 60)
    calls, ticks = [], []
    y = tiling.blend(x, lambda t, i: calls.append((t, i)) or t, 64, 8, on_tile=lambda d, n: ticks.append((d, n)))
    assert len(calls) == 1 and calls[0][0] is x and calls[0][1] == slice(None) and y is x
    assert ticks == [(1, 1)]


def test_blend_feathers_differences_between_windows():
    """Windows that disagree (a per-window offset) meet in a ramp, never a step."""
    x = torch.full((1, 3, 256, 256), 0.5)
    offsets = iter(torch.linspace(-0.2, 0.2, 64).tolist())
    y = tiling.blend(x, lambda t, _: t + next(offsets), 96, 24, multiple=8)
    dy = (y[..., 1:, :] - y[..., :-1, :]).abs().max().item()
    dx = (y[..., :, 1:] - y[..., :, :-1]).abs().max().item()
    assert max(dx, dy) < 0.4 / 24 * 2.5  # a hard seam would jump by up to 0.4
    assert y.min() >= 0.3 - 1e-6 and y.max() <= 0.7 + 1e-6


def test_blend_passes_each_window_its_items():
    """Per-item conditioning follows its windows: fn learns which batch item each tile is."""
    x = torch.zeros(3, 1, 40, 40)
    y = tiling.blend(x, lambda t, items: t + items.view(-1, 1, 1, 1).float(), 16, 4, batch=7)
    torch.testing.assert_close(y, torch.arange(3.0).view(3, 1, 1, 1).expand_as(x), rtol=0, atol=1e-6)


def test_on_tile_counts_in_order_and_can_stop_the_work():
    x = torch.rand(1, 3, 200, 200)
    seen, calls = [], []
    tiling.blend(x, lambda t, _: calls.append(1) or t, 64, 8, batch=2, on_tile=lambda d, n: seen.append((d, n)))
    n = len(tiling.Grid.over(200, 200, 64, 8))
    assert [d for d, _ in seen] == list(range(2, n, 2)) + [n] and {t for _, t in seen} == {n}

    class Stop(Exception):
        pass

    def stop(done, total):
        if done >= 4:
            raise Stop

    calls.clear()
    with pytest.raises(Stop):
        tiling.blend(x, lambda t, _: calls.append(1) or t, 64, 8, batch=2, on_tile=stop)
    assert len(calls) == 2  # nothing runs after the hook raised


# ----- the loop on large latents -------------------------------------------------------------


def old_restore(model, z, assessment, steps=None, on_tile=None):
    """RAR.restore before tiling: the restorer on the whole latent."""
    context, pooled = model.connector.condition(assessment.hidden)
    flow = FlowEuler(steps or model.config.uir.steps, model.config.uir.flow_shift)
    return flow.sample(lambda x, s: model.uir(x, s, context, pooled), z.float())


@pytest.mark.parametrize("mode", ["adaptive", "fixed"])
def test_one_tile_inputs_give_exactly_the_untiled_result(tiny_factory, monkeypatch, mode):
    """Same kernels on the same data: an image that fits one restorer window and one codec tile
    (the bench's 256 px images with the compact model) comes out bit-identical to the untiled path."""
    model = tiny_factory(seed=1)
    x = torch.rand(2, 3, 60, 52, generator=torch.Generator().manual_seed(2))
    p = model.config.uir.patch_size
    assert len(model.restore_grid(32, 32)) == 1 and model.config.uir.tile * p == 32
    new = restore_image(model, x, max_rounds=3, steps=2, mode=mode)
    monkeypatch.setattr(RAR, "restore", old_restore)
    monkeypatch.setattr(RAR, "encode", lambda self, im, g=None, on_tile=None, tile=None: self.codec.encode(im, g))
    monkeypatch.setattr(RAR, "decode", lambda self, z, on_tile=None, tile=None: self.codec.decode(z))
    old = restore_image(model, x, max_rounds=3, steps=2, mode=mode)
    assert new.tiles == 1 and new.rounds == old.rounds
    assert torch.equal(new.image, old.image)


def test_large_latent_one_decision_for_the_whole_image(tiny_model, monkeypatch):
    """Every window of an item takes the same round: the gate accepts or rolls back the latent as
    a whole, the trace has one record per round, and the LQA never sees more than its view."""
    tiny_model.config.lqa_view = 16
    seen = []
    real_identify = tiny_model.lqa.identify

    def identify(z, *a, **k):
        seen.append(tuple(z.shape[-2:]))
        return real_identify(z, *a, **k)

    monkeypatch.setattr(tiny_model.lqa, "identify", identify)
    verdicts = iter([True, False])
    monkeypatch.setattr(RAR, "verify", lambda self, a, b, q=None: (torch.tensor([next(verdicts)]), ["x"]))
    z0 = torch.randn(1, 16, 72, 100, generator=torch.Generator().manual_seed(0))
    rounds = []
    res = tiny_model.run(z0, max_rounds=4, steps=1, callback=lambda n, z: rounds.append(z.clone()))
    assert seen == [(16, 16), (16, 16)]
    assert res.rounds == [1] and [t["accepted"] for t in res.trace[0]] == [True, False]
    assert res.tiles == len(tiny_model.restore_grid(72, 100)) > 1
    assert torch.equal(res.latent, rounds[0])  # round 2 rolled back everywhere, round 1 kept everywhere
    assert not torch.equal(rounds[0], z0)


def smooth_gradient(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    return torch.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.7 - 0.4 * (xx + yy) / 2])[None]


@pytest.fixture(scope="module")
def shipped():
    from rar_core.checkpoint import builtin_available, default_model_path, load_rar

    if not builtin_available():
        pytest.skip("the shipped compact model is not in this checkout")
    torch.set_num_threads(1)
    return load_rar(default_model_path())


def border_steps(image: torch.Tensor, dim: int, lines: list[int]) -> torch.Tensor:
    """Mean |step| across each line (a seam is a level or colour change along the whole line;
    the mean over the line keeps it and averages out the restorer's texture)."""
    d = image.diff(dim=dim).abs()
    return torch.stack([(d[..., i - 1, :] if dim == -2 else d[..., i - 1]).mean() for i in lines])


def seam_excess(model, x: torch.Tensor, codec_tile: int) -> float:
    """Largest step at or inside any tile overlap of the restorer's windows, beyond the untiled
    result's at the same line, in 1/255."""
    f = model.config.codec.downsample
    tiled = restore_image(model, x, max_rounds=2, mode="fixed", tile=codec_tile)
    grid = model.restore_grid(x.shape[-2] // f, x.shape[-1] // f)
    saved, model.config.uir.tile = model.config.uir.tile, 0
    try:
        whole = restore_image(model, x, max_rounds=2, mode="fixed", tile=4096)
    finally:
        model.config.uir.tile = saved
    assert tiled.tiles == len(grid) > 1 and whole.tiles == 1
    worst = 0.0
    for dim, starts, size in ((-2, grid.ys, grid.th), (-1, grid.xs, grid.tw)):
        # every line from where a window starts to where its predecessor ends (the overlap)
        lines = sorted({i for a, b in zip(starts, starts[1:]) for i in range(b * f, (a + size) * f + 1)})
        worst = max(worst, (border_steps(tiled.image, dim, lines) - border_steps(whole.image, dim, lines)).max().item())
    return worst * 255


def test_tiled_gradient_has_no_steps_at_tile_borders(shipped, monkeypatch):
    """A smooth gradient restored in tiles by the shipped model (4 restorer windows, and codec
    tiles): no step at the tile borders or inside their overlaps beyond the untiled result's by
    more than 1/255 (measured: at most about 0.9/255 in any overlap). Cutting the windows hard in
    the middle of each overlap instead of feathering fails this test. The windows are 256 px here
    (the shipped 512 px ones would need a 4x larger image for 4 windows; the blending is the same)."""
    monkeypatch.setattr(shipped.config.uir, "tile", 16)
    x = smooth_gradient(384, 448)
    assert seam_excess(shipped, x, 4096) <= 1.0
    assert seam_excess(shipped, x, 256) <= 1.0

    def hard(n, overlap, first, last, like):
        r = torch.ones(n, dtype=like.dtype, device=like.device)
        if not first:
            r[: overlap // 2] = 1e-6
        if not last:
            r[n - overlap // 2 :] = 1e-6
        return r

    monkeypatch.setattr(tiling, "ramp", hard)
    assert seam_excess(shipped, x, 4096) > 1.0


def test_2048x1536_input_bounded_view_and_tiles_cover_the_latent(tiny_factory):
    """The sd35m preset's view (16 x 16 A_I patches) on a 2048 x 1536 photo's SD3 latent: the LQA
    gets 256 image tokens and A_Q's window keeps the whole prompt; the windows cover the latent."""
    cfg = tiny_factory.config()
    cfg.codec = RARConfig.preset("sd35m").codec  # SD3 latent, 8x: 2048 x 1536 -> 256 x 192
    cfg.lqa_view = RARConfig.preset("sd35m").lqa_view * cfg.adapter.patch // 2
    model = tiny_factory(seed=0, config=cfg)
    z = torch.randn(1, 16, 1536 // 8, 2048 // 8, generator=torch.Generator().manual_seed(0))
    tokens = []
    real = model.lqa.A_I.forward
    model.lqa.A_I.forward = lambda v: tokens.append(real(v).shape[1]) or real(v)
    a = model.assess(z)
    assert tokens == [256]
    assert a.hidden[0].shape[0] <= cfg.connector.num_input_tokens  # nothing of the prompt is cut
    grid = model.restore_grid(*z.shape[-2:])
    cover = torch.zeros(z.shape[-2:])
    for y, x in grid.windows:
        cover[y : y + grid.th, x : x + grid.tw] += 1
    assert cover.min() >= 1 and grid.th == cfg.uir.tile * cfg.uir.patch_size
    ticks = []
    out = model.restore(z, a, steps=1, on_tile=lambda d, n: ticks.append((d, n)))
    assert out.shape == z.shape and torch.isfinite(out).all()
    assert ticks[-1] == (len(grid), len(grid)) and [d for d, _ in ticks] == sorted(d for d, _ in ticks)


def test_sd35m_preset_sees_at_most_256_image_tokens_on_meta_device():
    """The official sizes, built without memory: a 2048 x 1536 photo gives at most 256 LQA tokens
    (Vicuna's 4096 positions and A_Q's 400-token window hold the prompt)."""
    cfg = RARConfig.preset("sd35m")
    with torch.device("meta"):
        model = RAR(cfg, with_codec=False)
        z = torch.empty(1, cfg.codec.latent_channels, 1536 // 8, 2048 // 8)
        tokens = model.lqa.A_I(model.lqa_view(z)).shape[1]
    assert tokens <= 256, tokens
    grid = model.restore_grid(*z.shape[-2:])
    assert grid.th == grid.tw == 32  # 256 px: the size the official restorer is trained at
    assert len(grid) > 1


def test_on_tile_stops_the_loop_promptly(tiny_model):
    z = torch.randn(1, 16, 64, 96, generator=torch.Generator().manual_seed(0))
    forwards = []
    real = tiny_model.uir.forward
    tiny_model.uir.forward = lambda *a: forwards.append(1) or real(*a)
    tiny_model.tile_batch = 2
    seen = []

    def hook(done, total):
        seen.append((done, total))
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tiny_model.run(z, max_rounds=4, steps=2, on_tile=hook)
    n = len(tiny_model.restore_grid(64, 96))
    assert seen == [(2, 2 * n), (4, 2 * n), (6, 2 * n)] and len(forwards) == 3


def test_assessment_conditions_every_window_of_its_item(tiny_model):
    """Batch items keep their own conditioning in every window: restoring a batch of two equals
    restoring each alone."""
    z = torch.randn(2, 16, 48, 80, generator=torch.Generator().manual_seed(4))
    g = torch.Generator().manual_seed(5)
    a = Assessment(["x", "y"], [torch.randn(12, 32, generator=g), torch.randn(9, 32, generator=g)])
    both = tiny_model.restore(z, a, steps=1)
    for i in range(2):
        alone = tiny_model.restore(z[i : i + 1], a.select([i]), steps=1)
        torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-4, atol=1e-5)  # batched kernels may sum in another order
