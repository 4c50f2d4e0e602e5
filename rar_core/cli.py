"""`rar`: restore, assess and inspect from the command line (same functions the nodes call)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from . import __version__
from .config import PRESETS


def _load(model_path: str | None, device: str):
    from .checkpoint import default_model_path, load_rar

    path = Path(model_path) if model_path else default_model_path()
    return load_rar(path, device=device)


def _outputs(inputs: list[Path], out: str) -> list[Path]:
    o = Path(out)
    if len(inputs) == 1 and o.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"):
        return [o]
    # One output per input, never two with the same name (a.png and a.jpg, or dir1/a.png and
    # dir2/a.png): later ones get their extension, then a counter, in the name.
    names: list[Path] = []
    used: set[str] = set()
    for p in inputs:
        name = p.stem + ".png"
        if name in used:
            base = f"{p.stem}_{p.suffix.lstrip('.').lower()}"
            name, k = base + ".png", 2
            while name in used:
                name, k = f"{base}_{k}.png", k + 1
        used.add(name)
        names.append(o / name)
    return names


def cmd_restore(args) -> int:
    from tqdm import tqdm

    from .image import list_images, load_image, save_image
    from .loop import restore_image

    torch.manual_seed(args.seed)
    inputs = list_images(args.inputs)
    if not inputs:
        raise SystemExit("rar restore: no images found in the given inputs")
    model = _load(args.model, args.device)
    traces = {}
    for src, dst in tqdm(list(zip(inputs, _outputs(inputs, args.output))), desc="restoring", unit="img", disable=args.quiet):
        image, alpha = load_image(src)
        t = time.perf_counter()
        res = restore_image(model, image, args.max_rounds, args.steps, args.mode, args.seed, tile=args.tile)
        save_image(res.image, dst, alpha)
        traces[str(src)] = {
            "output": str(dst),
            "rounds": res.rounds[0],
            "tiles": res.tiles,
            "seconds": time.perf_counter() - t,
            "trace": res.trace[0],
        }
        if not args.quiet:
            answers = " -> ".join(r["answer"] for r in res.trace[0] if r["accepted"]) or "kept input"
            tqdm.write(f"{src.name}: {res.rounds[0]} round(s) [{answers}] -> {dst}")
    if args.trace:
        Path(args.trace).write_text(json.dumps(traces, indent=2))
    return 0


def cmd_assess(args) -> int:
    from .image import list_images, load_image, pad_to_multiple, to_rgb

    model = _load(args.model, args.device)
    results = {}
    for src in list_images(args.inputs):
        image, _ = load_image(src)
        padded, _ = pad_to_multiple(to_rgb(image), model.config.pixel_multiple)
        z = model.encode(padded, torch.Generator().manual_seed(args.seed))
        results[str(src)] = model.assess(z, free=args.free).answer[0]
        print(f"{src}: {results[str(src)]}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def parameter_table(model) -> list[tuple[str, int]]:
    """Stored values per module (parameters and persistent buffers), as in the model file."""
    rows = []
    if model.codec is not None:
        rows.append(("codec (AutoencoderKL)", model.codec))
    rows += [
        ("LQA: A_I image adapter", model.lqa.A_I),
        ("LQA: vision_proj", model.lqa.vision_proj),
        ("LQA: language model", model.lqa.lm),
        ("A_Q quality adapter (Q-Former)", model.connector),
        ("UIR restorer (MMDiT)", model.uir),
    ]
    # Stored buffers count too: SD3.5-M's fixed pos_embed table alone is 226 M values.
    return [(name, sum(t.numel() for t in m.state_dict().values())) for name, m in rows]


def cmd_info(args) -> int:
    from .config import RARConfig
    from .loop import RAR

    if args.preset:
        config = RARConfig.preset(args.preset)
        with torch.device("meta"):  # sizes only: the official preset would need ~36 GB in fp32
            model = RAR(config, with_codec=True)
        meta = {"preset": args.preset}
    else:
        from .checkpoint import default_model_path, read_metadata

        path = Path(args.model) if args.model else default_model_path()
        meta = {k: v for k, v in read_metadata(path).items() if k not in ("tokenizer", "config")}
        meta["file"] = str(path)
        model = _load(str(path), "cpu")
        config = model.config
    print(f"RAR model '{config.name}' ({', '.join(f'{k}: {v}' for k, v in meta.items())})")
    print(f"latent: {config.codec.latent_channels} channels, {config.codec.downsample}x downsampling, "
          f"format '{config.codec.latent_format}'; image sides padded to multiples of {config.pixel_multiple}")
    rows = parameter_table(model)
    width = max(len(r[0]) for r in rows)
    for name, n in rows:
        print(f"  {name:<{width}}  {n:>15,}  ({_human(n)})")
    total = sum(n for _, n in rows)
    print(f"  {'total':<{width}}  {total:>15,}  ({_human(total)})")
    print(f"labels: {', '.join(config.labels)}")
    return 0


def _human(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="rar", description="RAR: Restore, Assess, Repeat (iterative latent image restoration)")
    p.add_argument("--version", action="version", version=f"comfyui-rar {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("restore", help="restore images (files or folders)")
    r.add_argument("inputs", nargs="+")
    r.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    r.add_argument("--model", help="RAR .safetensors (default: the built-in compact model)")
    r.add_argument("--max-rounds", type=int, default=4)
    r.add_argument("--steps", type=int, default=None, help="Euler steps per round (default: the model's, 4)")
    r.add_argument("--mode", choices=("adaptive", "fixed", "once"), default="adaptive")
    r.add_argument("--trace", help="write the per-round trace as JSON")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--tile", type=int, default=1024, help="images larger than this are restored in tiles")
    r.add_argument("--device", default="cpu")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(func=cmd_restore)

    a = sub.add_parser("assess", help="name the main degradation of images")
    a.add_argument("inputs", nargs="+")
    a.add_argument("--model")
    a.add_argument("--free", action="store_true", help="free greedy generation instead of the label set")
    a.add_argument("--json", help="write the answers as JSON")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu")
    a.set_defaults(func=cmd_assess)

    i = sub.add_parser("info", help="model sizes per module")
    i.add_argument("model", nargs="?")
    i.add_argument("--preset", choices=sorted(PRESETS))
    i.set_defaults(func=cmd_info)

    for extra in ("convert", "train", "bench"):
        _add_optional(sub, extra)
    return p


def _add_optional(sub, name: str) -> None:
    """Subcommands that live in their own modules register themselves if present."""
    import importlib

    try:
        mod = importlib.import_module(f"{__package__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__package__}.{name}":
            raise
        return
    add = getattr(mod, f"add_{name}_subparser", None)
    if add is not None:
        add(sub)


def main(argv: list[str] | None = None) -> int:
    from .checkpoint import CheckpointError
    from .image import ImageError
    from .loop import LatentError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, CheckpointError, ImageError, LatentError) as e:
        print(f"rar {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rar {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
