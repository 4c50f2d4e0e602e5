"""E5: what the restorer was taught about brightness: mean level and saturation change of each
degradation on training crops (the restorer learns the reverse), split by crop brightness."""
import sys; sys.path.insert(0, "runs/rootcause")
from common import *
from rar_core import degrade as D
from rar_core.train import PhotoPool
pool = PhotoPool(DATA); rng = np.random.default_rng(5)
stats = {}
for i in range(400):
    c = pool.crop(rng, 64)
    s = D.random_single(c, rng)
    stats.setdefault(s.labels[-1], []).append((float(s.image.mean() - c.mean()), sat(s.image) - sat(c), float(c.mean())))
allb = []
for k, v in sorted(stats.items()):
    v = np.array(v); allb.append(v)
    print(f"{k:16s} n={len(v):3d} dlevel(deg-clean) {v[:,0].mean():+.3f}  dsat {v[:,1].mean():+.3f}")
v = np.concatenate(allb)
for lo, hi in ((0, .4), (.4, .6), (.6, 1.01)):
    m = (v[:, 2] >= lo) & (v[:, 2] < hi)
    print(f"clean crops with level in [{lo},{hi}): n={m.sum()}, restorer target = clean - deg: dlevel {-v[m,0].mean():+.3f} dsat {-v[m,1].mean():+.3f}")
# the degraded inputs that are bright (mean > 0.7): what made them bright, and what the restorer must do
deg_bright = [(k, d) for k, vv in stats.items() for d in vv if d[2] + d[0] > 0.7]
from collections import Counter
print("degraded inputs with level > 0.7:", len(deg_bright), "of", len(v), Counter(k for k, _ in deg_bright).most_common(),
      "mean target dlevel %+.3f dsat %+.3f" % (-np.mean([d[0] for _, d in deg_bright]), -np.mean([d[1] for _, d in deg_bright])))
