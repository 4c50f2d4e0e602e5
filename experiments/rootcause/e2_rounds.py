"""E2: fixed 4 rounds per image with per-round metrics and the gate's log-odds against the true
PSNR change (round 1's predecessor is the input's pixels, as the loop returns them)."""
import sys, json, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import *
from rar_core.model import Assessment

model = load(sys.argv[1] if sys.argv[1] != "-" else None)
tag = sys.argv[2]
labels = list(model.config.labels)
rng = np.random.default_rng(7)
imgs = [("synth", f"{k}{s}", synth(100 + s, k)) for k in ("flat_drawing", "sky", "wallpaper", "snowfield") for s in (0,)]
imgs += [("synth", "flat_drawing1", synth(101, "flat_drawing"))]
imgs += [("mid", f"{k}0", midtone(synth(100, k))) for k in ("flat_drawing", "wallpaper", "snowfield")]
ex = example_crops()
imgs += [("example", f"ex{i}", ex[i]) for i in (0, 1)]
for name, a in pool_crops(4, seed=321):
    imgs.append(("pool", name[:18], a))
    imgs.append(("bright", name[:18], brighten(a, rng)))
only = sys.argv[3].split(",") if len(sys.argv) > 3 else None
rows = []
t0 = time.time()
with torch.no_grad():
    for group, name, a in imgs:
        if only and group not in only:
            continue
        x = to_t(a)
        z0 = model.encode(x)
        r = {"group": group, "name": name, "mean": float(a.mean()), "sat": sat(a), "z0_mean": float(z0.mean()),
             "z0_std": float(z0.std()), "z0_absmax": float(z0.abs().max()), "z0_ch": z0.mean((0, 2, 3)).tolist()}
        rec = to_a(model.decode(z0))
        r.update(codec_psnr=psnr(rec, a), codec_dlev=float(rec.mean() - a.mean()), codec_dsat=sat(rec) - sat(a),
                 codec_blk8=blockiness(rec), in_blk8=blockiness(a))
        z, prev = z0, a
        rounds = []
        for n in range(4):
            ans = model.lqa.identify(model.lqa_view(z), labels)
            lp = ans.logprob[0]
            z1 = model.restore(z, Assessment(ans.text, ans.hidden))
            lo = float(model.verify_log_odds(z1, z)[0])
            o = to_a(model.decode(z1))
            dz = (z1 - z)
            rr = {"answer": ans.text[0], "lp_clean": float(lp[0] - lp.max()), "gate": lo, "psnr": psnr(o, a),
                  "dpsnr": psnr(o, a) - psnr(prev, a), "dlev": float(o.mean() - a.mean()), "dsat": sat(o) - sat(a),
                  "blk4": blockiness(o, 4), "blk8": blockiness(o, 8), "blk16": blockiness(o, 16),
                  "dz_rel": float(dz.norm() / z.norm()), "dz_mean": float(dz.mean()), "dz_ch": dz.mean((0, 2, 3)).tolist(),
                  "dz_blk2": blockiness(dz[0].permute(1, 2, 0).numpy(), 2), "dz_blk4": blockiness(dz[0].permute(1, 2, 0).numpy(), 4)}
            rounds.append(rr)
            if n == 3:
                Image.fromarray((np.concatenate([a, o], 1) * 255).astype(np.uint8)).save(OUT / f"e2_{tag}_{group}_{name}.png")
            z, prev = z1, o
        r["rounds"] = rounds
        rows.append(r)
        print(f"{group:7s} {name:18s} m {r['mean']:.2f} codec {r['codec_psnr']:.1f}dB/{r['codec_dlev']:+.3f} | " + " | ".join(
            f"{q['answer'][:6]} g{q['gate']:+.1f} {q['psnr']:.1f}dB({q['dpsnr']:+.1f}) L{q['dlev']:+.3f} S{q['dsat']:+.3f} b8 {q['blk8']:.2f}" for q in rounds)
            + f" ({time.time()-t0:.0f}s)", flush=True)
        (OUT / f"e2_{tag}.json").write_text(json.dumps(rows, indent=1))
