"""E9: short fine-tune of the LQA's comparison (the gate) from a model file: the LQA stage's own
clean-vs-degraded pairs, plus pairs made from the restorer's own rounds on clean inputs and from
global darker+saturated versions of clean crops (bright and flat content included); the
identification hidden states A_Q reads are held to a frozen copy's (as the verify stage does).
argv: init out steps batch crop"""
import sys, time, copy
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import *
from rar_core import degrade as D, prompts
from rar_core.model import Assessment
from rar_core.train import PhotoPool, StageConfig, trainable, to_tensor, primary, train_step, encode
from rar_core.checkpoint import save_rar

init, out, steps, batch, crop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
torch.manual_seed(0)
model = load(init)
ref = copy.deepcopy(model.lqa).requires_grad_(False).eval()
pool = PhotoPool(DATA)
params = trainable(model, "verify")
cfg = StageConfig(steps=steps, batch=batch, crop=crop, lr=1e-4)
opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))

def darker_sat(a, rng):
    g = a.mean(-1, keepdims=True)
    return np.clip(g + (a - g) * rng.uniform(1.15, 1.6) - rng.uniform(0.03, 0.15), 0, 1).astype(np.float32)

def make(rng):
    clean, deg, kind, answers = [], [], [], []
    for _ in range(batch):
        c = pool.crop(rng, crop)
        u = rng.random()
        if u < 0.25: c = brighten(c, rng)
        elif u < 0.5: c = synth(10000 + int(rng.integers(1 << 30)), KINDS[int(rng.integers(len(KINDS)))], crop)
        v = rng.random()
        if v < 0.4:
            s = D.random_composite(c, rng) if rng.random() < 0.5 else D.random_single(c, rng)
            d, k, lab = s.image, 0, primary(s.labels)
        elif v < 0.7:
            d, k, lab = c, 1, "Clean"  # worse = the restorer's round on the clean crop (made in the step)
        else:
            d, k, lab = darker_sat(c, rng), 2, "Clean"
        clean.append(c); deg.append(d); kind.append(k); answers.append(lab)
    return {"hq": to_tensor(clean), "deg": to_tensor(deg), "kind": kind, "answers": answers,
            "swap": torch.from_numpy(rng.random(batch) < 0.5), "cq": int(rng.integers(len(prompts.COMPARE))), "q": int(rng.integers(len(prompts.IDENTIFY)))}

def step(model, b, gen, cfg):
    z_hq, z_deg = encode(model, b["hq"]), encode(model, b["deg"])
    k1 = torch.tensor([k == 1 for k in b["kind"]])
    if k1.any():
        with torch.no_grad():
            zc = z_hq[k1]
            a = model.lqa.identify(model.lqa_view(zc), list(model.config.labels))
            z_deg = z_deg.clone(); z_deg[k1] = model.restore(zc, Assessment(a.text, a.hidden))
    sw = b["swap"][:, None, None, None]
    A, B = torch.where(sw, z_deg, z_hq), torch.where(sw, z_hq, z_deg)  # swap: B is the better (clean) one
    lqa = model.lqa
    prefix = lqa.prompt_embeds(prompts.compare_segments(prompts.COMPARE[b["cq"]]), [model.lqa_view(A), model.lqa_view(B)])
    _, cmp = lqa.teacher_forced(prefix, ["Image B" if s else "Image A" for s in b["swap"].tolist()])
    # identification: trained to say Clean on clean crops and the label on degraded ones; hidden states held
    zi = torch.cat((z_hq, z_deg[~k1])) if True else None
    labs = ["Clean"] * len(z_hq) + [b["answers"][i] for i in range(len(z_hq)) if not k1[i] and b["kind"][i] == 0] 
    zi = torch.cat((z_hq, z_deg[torch.tensor([k == 0 for k in b["kind"]])]))
    seg = prompts.identify_segments(prompts.IDENTIFY[b["q"]])
    hidden, idl = lqa.teacher_forced(lqa.prompt_embeds(seg, [model.lqa_view(zi)]), labs)
    with torch.no_grad():
        r, _ = ref.teacher_forced(ref.prompt_embeds(seg, [model.lqa_view(zi)]), labs)
    h, r = torch.cat(hidden), torch.cat(r)
    keep = (h - r).pow(2).mean() / r.pow(2).mean()
    return cmp + 0.3 * idl + 10 * keep, {"cmp": float(cmp), "id": float(idl), "keep": float(keep)}

model.train()
t0 = time.time()
for i in range(steps):
    rng = np.random.default_rng([43, i])
    b = make(rng)
    for g in opt.param_groups: g["lr"] = cfg.lr * min(1.0, (i + 1) / 10)
    loss, info = train_step(model, step, b, torch.Generator().manual_seed(i), cfg, opt, params)
    if i % 10 == 0 or i == steps - 1:
        print(f"step {i} loss {loss.item():.3f} {info} ({time.time()-t0:.0f}s)", flush=True)
model.eval()
save_rar(model, out, {"stage": "rootcause-gate-finetune"})
print("saved", out)
