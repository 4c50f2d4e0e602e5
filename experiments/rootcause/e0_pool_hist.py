"""E0: brightness of the training pool (what the crops the stages draw look like)."""
import sys; sys.path.insert(0, "runs/rootcause")
from common import *
man = json.loads((DATA / "manifest.json").read_text())
rows = []
for i in man["images"]:
    im = Image.open(DATA / i["file"]).convert("RGB"); im.thumbnail((512, 512))
    a = np.asarray(im, np.float32) / 255
    rows.append((i["split"], i["file"], float(a.mean()), sat(a), float((a.mean(-1) > 0.8).mean())))
for split in ("train", "eval", "real"):
    r = [x for x in rows if x[0] == split]
    m = np.array([x[2] for x in r])
    print(split, len(r), "mean level: mean %.3f median %.3f max %.3f; >0.6: %d; >0.7: %d; share of pixels >0.8: %.3f" % (
        m.mean(), np.median(m), m.max(), (m > 0.6).sum(), (m > 0.7).sum(), np.mean([x[4] for x in r])))
    print("  hist (0.1 bins):", np.histogram(m, bins=10, range=(0, 1))[0].tolist())
# pixel-level histogram of random 128 px crops like the training sampler
from rar_core.train import PhotoPool
pool = PhotoPool(DATA)
rng = np.random.default_rng(0)
cm = np.array([pool.crop(rng, 128).mean() for _ in range(2000)])
print("2000 training crops (128 px): mean level hist (0.1 bins):", np.histogram(cm, bins=10, range=(0, 1))[0].tolist(),
      "share >0.6: %.3f, >0.7: %.3f, >0.8: %.3f" % ((cm > 0.6).mean(), (cm > 0.7).mean(), (cm > 0.8).mean()))
for x in sorted(rows, key=lambda x: -x[2])[:6]: print("  brightest:", x[:4])
