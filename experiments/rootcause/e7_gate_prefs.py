"""E7: what the gate prefers, with no restorer involved. Candidate = a global transform of a clean
image, previous = the clean image itself (so every candidate is worse); log-odds > verify_margin
means the loop would accept it."""
import sys, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import *
from scipy import ndimage
model = load(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None)
tag = sys.argv[2] if len(sys.argv) > 2 else "shipped"
rng = np.random.default_rng(3)
bright = [synth(700 + i, k) for i, k in enumerate(KINDS)] + example_crops()[:2] + [brighten(a, rng) for _, a in pool_crops(3, seed=77)]
mid = [midtone(synth(700 + i, k)) for i, k in enumerate(KINDS)] + [a for _, a in pool_crops(4, seed=78)]
def darker_sat(a, d=0.12, s=1.5):
    g = a.mean(-1, keepdims=True)
    return np.clip(g + (a - g) * s - d, 0, 1).astype(np.float32)
def lighter_desat(a):
    g = a.mean(-1, keepdims=True)
    return np.clip(g + (a - g) * 0.6 + 0.08, 0, 1).astype(np.float32)
def blur(a):
    return ndimage.gaussian_filter(a, (1.5, 1.5, 0)).astype(np.float32)
def grid(a):  # a 16 px diamond-like periodic pattern of amplitude 0.03, like the restorer's update
    y, x = np.mgrid[0:a.shape[0], 0:a.shape[1]]
    p = 0.03 * np.sin(2 * np.pi * (x + y) / 16) * np.sin(2 * np.pi * (x - y) / 16)
    return np.clip(a + p[..., None] * np.array([1, -0.5, 0.5]), 0, 1).astype(np.float32)
T = {"darker+saturated": darker_sat, "lighter+desaturated": lighter_desat, "blur1.5": blur, "grid16": grid}
res = {}
with torch.no_grad():
    for setname, S in (("bright", bright), ("mid", mid)):
        x = torch.from_numpy(np.stack(S)).permute(0, 3, 1, 2).contiguous()
        zx = model.encode(x)
        for tn, f in T.items():
            c = torch.from_numpy(np.stack([f(a) for a in S])).permute(0, 3, 1, 2).contiguous()
            lo = model.verify_log_odds(model.encode(c), zx).numpy()
            dp = [psnr(f(a), a) for a in S]
            res[f"{setname}/{tn}"] = {"accept": float((lo > model.config.verify_margin).mean()), "median_logodds": float(np.median(lo)),
                                      "max": float(lo.max()), "psnr_of_candidate": float(np.mean(dp)), "n": len(S)}
            print(setname, tn, json.dumps(res[f"{setname}/{tn}"]), flush=True)
(OUT / f"e7_{tag}.json").write_text(json.dumps(res, indent=1))
