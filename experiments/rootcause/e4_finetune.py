"""E4: short fine-tune of A_Q + restorer (LQA frozen, as the connector stage) from the shipped
weights, with clean->clean pairs and bright content added to the training crops.
argv: out.safetensors steps batch crop clean_p bright_p"""
import sys, time, math
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import *
from rar_core import degrade as D
from rar_core.train import PhotoPool, StageConfig, trainable, step_connector, primary, to_tensor, train_step
from rar_core.checkpoint import save_rar

out, steps, batch, crop, clean_p, bright_p = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
torch.manual_seed(0)
init = sys.argv[8] if len(sys.argv) > 8 else None
model = load(init)
model.train()
pool = PhotoPool(DATA)
params = trainable(model, "connector")
cfg = StageConfig(steps=steps, batch=batch, crop=crop, lr=float(sys.argv[7]) if len(sys.argv) > 7 else 1e-4)
opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))

def flat_content(rng, size):
    """Flat/bright synthetic content: the kinds of common.synth at seeds >= 10000 (held-out evals use < 1000)."""
    k = KINDS[int(rng.integers(len(KINDS)))]
    return synth(10000 + int(rng.integers(1 << 30)), k, size)

def make(rng):
    hq, deg, answers = [], [], []
    for _ in range(batch):
        u = rng.random()
        c = pool.crop(rng, crop)
        if u < bright_p * 0.5:
            c = brighten(c, rng)
        elif u < bright_p:
            c = flat_content(rng, crop)
        if rng.random() < clean_p:
            d, labels = c, []
        else:
            s = D.random_composite(c, rng) if rng.random() < 0.5 else D.random_single(c, rng)
            d, labels = s.image, s.labels
        hq.append(c); deg.append(d); answers.append(primary(labels))
    return {"hq": to_tensor(hq), "deg": to_tensor(deg), "answers": answers}

t0, ema = time.time(), None
for step in range(steps):
    rng = np.random.default_rng([42, step + (1000 if init else 0)])
    b = make(rng)
    gen = torch.Generator().manual_seed(step)
    for g in opt.param_groups:
        g["lr"] = cfg.lr * min(1.0, (step + 1) / 10)
    loss, _ = train_step(model, step_connector, b, gen, cfg, opt, params)
    ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
    if step % 10 == 0 or step == steps - 1:
        print(f"step {step} loss {loss.item():.4f} ema {ema:.4f} ({time.time()-t0:.0f}s)", flush=True)
model.eval()
save_rar(model, out, {"stage": "rootcause-finetune"})
print("saved", out, f"{time.time()-t0:.0f}s")
