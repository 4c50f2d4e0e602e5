"""E8: latent statistics of bright/flat images against training-pool crops (what calibrate_latents
normalised), and the codec round trip per group."""
import sys, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import *
from rar_core.train import PhotoPool
model = load()
pool = PhotoPool(DATA); rng = np.random.default_rng([0, 999_999])
groups = {"pool(train crops)": [pool.crop(rng, 128) for _ in range(48)],
          "synthetic bright/flat": [synth(800 + i, k, 128) for i in range(4) for k in KINDS],
          "brightened pool": [brighten(pool.crop(rng, 128), rng) for _ in range(16)],
          "mid-tone synthetic": [midtone(synth(800 + i, k, 128)) for i in range(4) for k in KINDS]}
ex = example_crops(128)
if ex: groups["example.png"] = ex
with torch.no_grad():
    Z = {g: model.encode(torch.from_numpy(np.stack(v)).permute(0, 3, 1, 2).contiguous()) for g, v in groups.items()}
    ref = Z["pool(train crops)"].permute(1, 0, 2, 3).reshape(16, -1)
    lo, hi = ref.quantile(0.005, dim=1), ref.quantile(0.995, dim=1)
    mu, sd = ref.mean(1), ref.std(1)
    for g, z in Z.items():
        flat = z.permute(1, 0, 2, 3).reshape(16, -1)
        out = ((flat < lo[:, None]) | (flat > hi[:, None])).float().mean()
        zc = ((flat.mean(1) - mu) / sd).abs()
        x = torch.from_numpy(np.stack(groups[g])).permute(0, 3, 1, 2)
        rec = model.decode(z)
        ps = [psnr(rec[i].numpy(), x[i].numpy()) for i in range(len(x))]
        dl = float((rec.mean((1, 2, 3)) - x.mean((1, 2, 3))).mean())
        print(f"{g:24s} level {float(x.mean()):.2f} | z mean {float(z.mean()):+.2f} std {float(z.std()):.2f} |z|max {float(z.abs().max()):.1f} | "
              f"outside pool's 0.5-99.5% range: {100*float(out):.1f}% | max |channel-mean shift| {float(zc.max()):.2f} sd | "
              f"codec {np.mean(ps):.1f} dB, level shift {dl:+.4f}", flush=True)
