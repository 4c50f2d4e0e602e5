"""E6: where the periodic texture lives. Flat inputs (no edges of their own); 2 rounds. Spectral
peaks of the output-minus-input difference at periods 4/8/16 px; the same for the latent update
(periods 1/2/4 latent px = 4/8/16 px); and the decoder's response to a smooth latent offset."""
import sys, json
sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
from common import *
from rar_core.model import Assessment
model = load(sys.argv[1] if len(sys.argv) > 1 else None)

def peaks(d, periods):
    """Power at frequency N/p (both axes, all harmonics k*N/p below Nyquist) over the median power."""
    d = d - d.mean()
    P = np.abs(np.fft.fft2(d)) ** 2
    N = d.shape[0]
    med = np.median(P[1:, 1:]) + 1e-20
    out = {}
    for p in periods:
        f = N // p
        vals = [P[f, 0], P[0, f], P[f, f]] + ([P[2*f, 0], P[0, 2*f]] if 2 * f < N // 2 + 1 else [])
        out[p] = float(np.mean(vals) / med)
    return out

imgs = {"cream": np.full((256, 256, 3), [0.95, 0.93, 0.86], np.float32), "sky0": synth(100, "sky"), "wall0": synth(100, "wallpaper"),
        "mid_gray": np.full((256, 256, 3), 0.45, np.float32)}
res = {}
with torch.no_grad():
    for name, a in imgs.items():
        x = to_t(a); z0 = model.encode(x); rec = to_a(model.decode(z0))
        r = {"codec_pix": peaks((rec - a).mean(-1), (4, 8, 16)), "codec_psnr": psnr(rec, a)}
        z = z0
        for k in range(2):
            ans = model.lqa.identify(model.lqa_view(z), list(model.config.labels))
            z1 = model.restore(z, Assessment(ans.text, ans.hidden))
            o = to_a(model.decode(z1))
            dz = (z1 - z0)[0].numpy()
            r[f"r{k+1}"] = {"answer": ans.text[0], "psnr": psnr(o, a), "dlev": float(o.mean() - a.mean()),
                           "pix": peaks((o - rec).mean(-1), (4, 8, 16)), "lat": peaks(dz.mean(0), (1, 2, 4)) if False else peaks(np.abs(dz).mean(0) * 0 + dz[int(np.abs(dz).mean((1, 2)).argmax())], (2, 4, 8)),
                           "dz_rms": float(np.sqrt((dz ** 2).mean())), "dz_chmean": dz.mean((1, 2)).round(3).tolist()}
            z = z1
        # decoder: the same latent update, smoothed (box 4x4 latent px), decoded: does a grid appear?
        import torch.nn.functional as F
        dzt = (z - z0)
        smooth = F.avg_pool2d(F.pad(dzt, (2, 1, 2, 1), mode="replicate"), 4, stride=1)
        os_ = to_a(model.decode(z0 + smooth))
        r["decoder_smoothed_update"] = {"pix": peaks((os_ - rec).mean(-1), (4, 8, 16)), "dlev": float(os_.mean() - a.mean()), "psnr": psnr(os_, a)}
        res[name] = r
        Image.fromarray((np.concatenate([a, rec, o, os_], 1) * 255).astype(np.uint8)).save(OUT / f"e6_{name}.png")
        print(name, json.dumps(r, default=lambda v: round(v, 2)), flush=True)
(OUT / "e6_texture.json").write_text(json.dumps(res, indent=1))
