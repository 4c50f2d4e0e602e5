"""E1: per image, codec round trip, latent stats, LQA answer, one restore round under several
conditionings, gate log-odds, and the full adaptive loop. Synthetic bright/flat images, their
mid-tone versions, example.png crops, and (if the data pool exists) pool crops + brightened pool crops."""
import sys, json, time
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import *
from rar_core import prompts
from rar_core.model import Assessment
from rar_core.loop import restore_image
from rar_core.train import null_condition
from rar_core.uir import FlowEuler

model = load(sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] != "-" else None)
tag = sys.argv[2] if len(sys.argv) > 2 else "shipped"
sets = sys.argv[3].split(",") if len(sys.argv) > 3 else ["synth", "mid", "example", "pool", "bright"]
labels = list(model.config.labels)

def items():
    if "synth" in sets:
        for k in KINDS:
            for s in range(3):
                yield "synth", f"{k}{s}", synth(100 + s, k)
    if "mid" in sets:
        for k in KINDS:
            for s in range(3):
                yield "mid", f"{k}{s}", midtone(synth(100 + s, k))
    if "example" in sets:
        for i, a in enumerate(example_crops()):
            yield "example", f"ex{i}", a
    if ("pool" in sets or "bright" in sets) and (DATA / "manifest.json").exists():
        rng = np.random.default_rng(7)
        for name, a in pool_crops(12, seed=321):
            if "pool" in sets:
                yield "pool", name[:20], a
            if "bright" in sets:
                yield "bright", name[:20], brighten(a, rng)

@torch.no_grad()
def restore_with(z, hidden):
    ctx, pooled = model.connector.condition(hidden)
    flow = FlowEuler(model.config.uir.steps, model.config.uir.flow_shift)
    return flow.sample(lambda x, s: model.uir(x, s, ctx, pooled), z)

@torch.no_grad()
def restore_null(z):
    ctx, pooled = null_condition(model, len(z))
    flow = FlowEuler(model.config.uir.steps, model.config.uir.flow_shift)
    return flow.sample(lambda x, s: model.uir(x, s, ctx, pooled), z)

def teacher_hidden(z, label):
    seg = prompts.identify_segments(prompts.IDENTIFY[-1])
    h, _ = model.lqa.teacher_forced(model.lqa.prompt_embeds(seg, [model.lqa_view(z)]), [label])
    return h

def img_metrics(out, x, pre):
    d = out - x
    return {f"{pre}psnr": psnr(out, x), f"{pre}dlev": float(out.mean() - x.mean()), f"{pre}dsat": sat(out) - sat(x),
            f"{pre}p8": period_share(d, 8), f"{pre}p16": period_share(d, 16), f"{pre}p4": period_share(d, 4),
            f"{pre}hf": hf_energy(out) - hf_energy(x)}

rows = []
t0 = time.time()
with torch.no_grad():
    for group, name, a in items():
        x = to_t(a)
        z = model.encode(x)
        rec = to_a(model.decode(z))
        r = {"group": group, "name": name, "mean": float(a.mean()), "sat": sat(a)}
        r.update(img_metrics(rec, a, "codec_"))
        r.update({"z_mean": float(z.mean()), "z_std": float(z.std()), "z_absmax": float(z.abs().max()),
                  "z_chmean": z.mean((0, 2, 3)).tolist()})
        ans = model.lqa.identify(model.lqa_view(z), labels)
        lp = ans.logprob[0]
        r["answer"] = ans.text[0]
        r["lp_clean"] = float(lp[labels.index("Clean")] - lp.max())
        r["lp_top"] = labels[int(lp.argmax())]
        # one round, own answer
        z1 = model.restore(z, Assessment(ans.text, ans.hidden))
        o1 = to_a(model.decode(z1))
        r.update(img_metrics(o1, a, "r1_"))
        r["r1_dz"] = float((z1 - z).norm() / z.norm())
        dz = (z1 - z)[0].mean(0).numpy()
        r["r1_dz_p2"] = period_share(dz, 2)  # latent period 2 = 8 px
        r["r1_dz_p4"] = period_share(dz, 4)
        r["r1_dz_mean"] = float((z1 - z).mean())
        r["gate_r1"] = float(model.verify_log_odds(z1, z)[0])
        r["gate_r1_vs_codec"] = psnr(o1, a) - r["codec_psnr"]
        # conditioning: Clean teacher-forced; null conditioning
        zc = restore_with(z, teacher_hidden(z, "Clean"))
        oc = to_a(model.decode(zc))
        r.update({k: v for k, v in img_metrics(oc, a, "rclean_").items() if k.endswith(("psnr", "dlev", "p8"))})
        r["rclean_dz"] = float((zc - z).norm() / z.norm())
        zn = restore_null(z)
        on = to_a(model.decode(zn))
        r.update({k: v for k, v in img_metrics(on, a, "rnull_").items() if k.endswith(("psnr", "dlev", "p8"))})
        r["rnull_dz"] = float((zn - z).norm() / z.norm())
        # velocity at s = 1 (the first Euler step's direction) and its mean
        ctx, pooled = model.connector.condition(ans.hidden)
        v = model.uir(z, torch.ones(1), ctx, pooled)
        r["v_rel"] = float(v.norm() / z.norm())
        r["v_mean"] = float(v.mean())
        # full adaptive loop
        res = restore_image(model, x, max_rounds=4)
        oa = to_a(res.image)
        r.update(img_metrics(oa, a, "loop_"))
        r["loop_rounds"] = res.rounds[0]
        r["loop_answers"] = [t["answer"] for t in res.trace[0]]
        r["loop_verdicts"] = [t["verdict"] for t in res.trace[0]]
        rows.append(r)
        print(f"{group:8s} {name:22s} mean {r['mean']:.2f} codec {r['codec_psnr']:.1f}dB dlev {r['codec_dlev']:+.3f} | ans {r['answer']:16s} "
              f"lpClean {r['lp_clean']:+.1f} | r1 {r['r1_psnr']:.1f}dB dlev {r['r1_dlev']:+.3f} dsat {r['r1_dsat']:+.3f} p8 {r['r1_p8']:.2f} "
              f"gate {r['gate_r1']:+.2f} | clean-cond {r['rclean_psnr']:.1f} null {r['rnull_psnr']:.1f} | loop {r['loop_psnr']:.1f}dB "
              f"dlev {r['loop_dlev']:+.3f} rounds {r['loop_rounds']} ({time.time()-t0:.0f}s)", flush=True)
(OUT / f"e1_{tag}.json").write_text(json.dumps(rows, indent=1))
