"""`rar`: restore, assess and inspect from the command line (same functions the nodes call).

The inference commands need only the base dependencies. Subcommands that live in their own
modules (convert, train, bench) are imported only when they are the command being run, so a
missing training extra never breaks `rar --help` or `rar restore`.

Exit codes: 0 done; 1 some images failed (the others were written); 2 a bad option, path or
model file, reported in one line before any work; 130 interrupted (finished items are kept).
docs/errors.md lists every bad-input case and the line it prints.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
import warnings
from pathlib import Path

from . import __version__
from .config import DEFAULT_ROUNDS, DEFAULT_STEPS, MODES, PRESETS, PROTOCOLS, ROUNDS_LIMIT

MIN_TILE = 256  # the codec's tiles overlap by an eighth: below 256 px the overlaps cost more than they save

# Subcommands defined in their own modules: name -> (module, help). The help is repeated here so
# `rar --help` lists them without importing them.
LAZY_COMMANDS = {
    "convert": ("convert", "convert the official RAR release into a comfyui-rar .safetensors file"),
    "train": ("train", "train a RAR model stage by stage (resumable)"),
    "bench": ("bench", "benchmark a RAR model on the evaluation set (writes BENCHMARKS.md)"),
}
# What a lazy command needs beyond the base install (import names), and the pip extra that has it.
# Checked before the command runs: its modules import these only where the data is made.
NEEDS = {"train": ("scipy",), "bench": ("scipy", "skimage", "matplotlib")}
EXTRAS = {"train": "train", "bench": "bench"}
EXTRA_PACKAGES = {p for needs in NEEDS.values() for p in needs}


class CLIError(Exception):
    """A bad option, path or input found before any work: one line, exit code 2."""


class MissingExtra(CLIError):
    pass


class Parser(argparse.ArgumentParser):
    """argparse, with its usage errors on one line like every other `rar` error."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


# ----- checks before any work ------------------------------------------------------------------


def check_options(args) -> None:
    """Ranges of the numeric options and the device, before a model is loaded."""
    if getattr(args, "max_rounds", None) is not None and not 1 <= args.max_rounds <= ROUNDS_LIMIT:
        raise CLIError(f"--max-rounds must be between 1 and {ROUNDS_LIMIT}, got {args.max_rounds}")
    if getattr(args, "steps", None) is not None and args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps} (leave it out for the model's default)")
    if getattr(args, "tile", None) is not None and args.tile < MIN_TILE:
        raise CLIError(f"--tile must be at least {MIN_TILE} pixels, got {args.tile}")
    if getattr(args, "device", None) is not None:
        check_device(args.device)


def check_device(name: str) -> None:
    """A device this torch can use: a known name, and its backend present with enough devices."""
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"--device {name!r} is not a device name; use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cpu":
        return
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA GPU is visible"
            raise CLIError(f"--device {name}: {why} (torch {torch.__version__}); use --device cpu")
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise CLIError(f"--device {name}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
        return
    backend = getattr(torch, dev.type, None) if dev.type != "mps" else torch.backends.mps
    if backend is None or not getattr(backend, "is_available", lambda: False)():
        raise CLIError(f"--device {name}: {dev.type} is not available in this torch build; use cpu or cuda")


def _inputs(items: list[str]) -> list[Path]:
    from .image import list_images

    missing = [i for i in items if not Path(i).exists()]
    if missing:
        raise CLIError(f"input not found: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    inputs = list_images(items)
    if not inputs:
        raise CLIError(f"no images found in {' '.join(items)} (image files end in .png .jpg .jpeg .webp .bmp .tif .tiff)")
    return inputs


def plan_outputs(inputs: list[Path], out: str, input_items: list[str], overwrite: bool) -> list[Path]:
    """-o as one file (one input, image extension) or a folder; never an input unless `overwrite`."""
    from .image import IMAGE_EXTENSIONS

    o = Path(out)
    sources = {p.resolve(): p for p in inputs}
    if not o.is_dir() and o.suffix:
        if o.suffix.lower() not in IMAGE_EXTENSIONS:
            raise CLIError(f"-o {out}: unknown image extension {o.suffix!r}; use {' '.join(sorted(IMAGE_EXTENSIONS))} "
                           "for one image, or a folder name without an extension")
        if len(inputs) > 1:
            raise CLIError(f"-o {out} is one file but there are {len(inputs)} input images; give a folder")
        if o.resolve() in sources and not overwrite:
            raise CLIError(f"-o {out} is the input image itself; restoring would replace the original: "
                           "choose another output, or pass --overwrite to restore in place")
        return [o]
    if not overwrite:
        folders = {Path(i).resolve() for i in input_items if Path(i).is_dir()}
        if o.resolve() in folders:
            raise CLIError(f"-o {out} is an input folder; its originals would be replaced: "
                           "choose another folder, or pass --overwrite to restore in place")
    # One output per input, never two with the same name (a.png and a.jpg, or dir1/a.png and
    # dir2/a.png), and never another input's name: later ones get their extension, then a
    # counter, in the name.
    names: list[Path] = []
    used: set[str] = set()

    def free(name: str, src: Path) -> bool:
        other = sources.get((o / name).resolve())
        return name not in used and (other is None or other == src)

    for p in inputs:
        name = p.stem + ".png"
        if not free(name, p):
            base = f"{p.stem}_{p.suffix.lstrip('.').lower()}"
            name, k = base + ".png", 2
            while not free(name, p):
                name, k = f"{base}_{k}.png", k + 1
        used.add(name)
        names.append(o / name)
    if not overwrite:
        for src, dst in zip(inputs, names):
            if dst.resolve() == src.resolve():
                raise CLIError(f"output {dst} would replace the input {src}: choose another -o, "
                               "or pass --overwrite to restore in place")
    return names


def check_existing(outputs: list[Path], overwrite: bool, skip: bool) -> set[Path]:
    """Outputs that exist: an error unless --overwrite or --skip-existing; returns those to skip."""
    folders = [d for d in outputs if d.is_dir()]
    if folders:
        raise CLIError(f"output {folders[0]} exists and is a folder; move it away or choose another -o")
    existing = [d for d in outputs if d.exists()]
    if overwrite or not existing:
        return set()
    if skip:
        return set(existing)
    if len(existing) == 1:
        raise CLIError(f"output {existing[0]} already exists; pass --overwrite to replace it, "
                       "or --skip-existing to keep it and restore the rest")
    raise CLIError(f"outputs {existing[0]} and {len(existing) - 1} more already exist; pass --overwrite to replace them, "
                   "or --skip-existing to keep them and restore the rest")


def check_report(path: str | None, flag: str, overwrite: bool, taken: set[Path]) -> None:
    """A --trace / --json file: not an image of this run, not a folder, writable, not clobbered."""
    from .image import check_writable

    if path is None:
        return
    p = Path(path)
    if p.resolve() in taken:
        raise CLIError(f"{flag} {path} is also an input or output image of this run")
    if p.is_dir():
        raise CLIError(f"{flag} {path} is a folder; give a .json file name")
    if p.exists() and not overwrite:
        raise CLIError(f"{flag} {path} already exists; pass --overwrite to replace it, or choose another name")
    check_writable(p, f"{flag} file")


def write_json(path: str | Path, data) -> None:
    from .image import write_atomic

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: f.write(json.dumps(data, indent=2).encode("utf-8")))


def _reason(e: BaseException) -> str:
    """One line for a failed item."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if isinstance(e, RuntimeError) and "out of memory" in text.lower():
        return "out of memory (try a smaller --tile, or --device cpu)"
    if isinstance(e, (ValueError, OSError)):  # ImageError, LatentError, CheckpointError, file errors
        return text
    return f"{type(e).__name__}: {text}"


def _ms(seconds: float) -> float:
    return round(seconds, 3)


def _load(model_path: str | None, device: str):
    from .checkpoint import default_model_path, load_rar

    path = Path(model_path) if model_path else default_model_path()
    return load_rar(path, device=device)


def _load_quietly(src: Path, say):
    """load_image, with its warnings (an animation's first frame only) as one line each."""
    from .image import load_image

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_image(src)
    for w in caught:
        say(f"warning: {w.message}")
    return loaded


class Batch:
    """Per-item outcomes of a run over many images: what finished, what failed and why."""

    def __init__(self, command: str, total: int, quiet: bool, write):
        self.command, self.total, self.quiet, self.write = command, total, quiet, write
        self.done = 0
        self.skipped = 0
        self.failed: list[tuple[Path, str]] = []

    def say(self, text: str) -> None:
        self.write(f"rar {self.command}: {text}", file=sys.stderr)

    def fail(self, src: Path, e: BaseException) -> str:
        reason = _reason(e)
        self.failed.append((src, reason))
        self.say(f"failed: {src}: {reason}")
        return reason

    def summary(self, verb: str, interrupted: bool = False) -> int:
        """Final line(s) and the exit code."""
        parts = [f"{self.done} {verb}", f"{len(self.failed)} failed"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (output exists)")
        left = self.total - self.done - len(self.failed) - self.skipped
        if interrupted:
            self.say(f"interrupted: {', '.join(parts)}, {left} not started")
            return 130
        if self.failed and self.total > 1:
            self.say(", ".join(parts) + "; failed: " + "; ".join(f"{s.name} ({r})" for s, r in self.failed))
        elif not self.quiet and self.total > 1:
            print(f"rar {self.command}: " + ", ".join(parts))
        return 1 if self.failed else 0


# ----- commands --------------------------------------------------------------------------------


def cmd_restore(args) -> int:
    import torch
    from tqdm import tqdm

    from .image import check_writable, save_image
    from .loop import restore_image

    check_options(args)
    inputs = _inputs(args.inputs)
    outputs = plan_outputs(inputs, args.output, args.inputs, args.overwrite)
    skip = check_existing(outputs, args.overwrite, args.skip_existing)
    for dst in {d.parent.absolute(): d for d in outputs}.values():  # one probe per folder
        check_writable(dst, "output")
    check_report(args.trace, "--trace", args.overwrite, {p.resolve() for p in inputs + outputs})

    torch.manual_seed(args.seed)
    model = _load(args.model, args.device)
    batch = Batch("restore", len(inputs), args.quiet, tqdm.write)
    traces: dict[str, dict] = {}
    interrupted = False
    bar = tqdm(list(zip(inputs, outputs)), desc="restoring", unit="img", disable=args.quiet)
    try:
        for src, dst in bar:
            if dst in skip:
                batch.skipped += 1
                if not args.quiet:
                    tqdm.write(f"{src.name}: skipped, {dst} exists")
                continue
            try:
                image, alpha = _load_quietly(src, batch.say)
                t = time.perf_counter()
                res = restore_image(model, image, args.max_rounds, args.steps, args.mode, args.seed, tile=args.tile,
                                    protocol=args.protocol)
                save_image(res.image, dst, alpha, overwrite=args.overwrite)
            except Exception as e:  # one bad image never stops the batch
                traces[str(src)] = {"output": None, "error": batch.fail(src, e)}
                continue
            batch.done += 1
            traces[str(src)] = {
                "output": str(dst),
                "rounds": res.rounds[0],
                "tiles": res.tiles,
                "seconds": _ms(time.perf_counter() - t),
                "trace": res.trace[0],
            }
            if not args.quiet:
                answers = " -> ".join(r["answer"] for r in res.trace[0] if r["accepted"]) or "kept input"
                tqdm.write(f"{src.name}: {res.rounds[0]} round(s) [{answers}] -> {dst}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if args.trace:
            write_json(args.trace, traces)  # everything that finished, also after Ctrl-C
    return batch.summary("restored", interrupted)


def cmd_assess(args) -> int:
    import torch

    from .image import pad_to_multiple, to_rgb

    check_options(args)
    inputs = _inputs(args.inputs)
    check_report(args.json, "--json", args.overwrite, {p.resolve() for p in inputs})
    model = _load(args.model, args.device)
    batch = Batch("assess", len(inputs), False, print)
    results: dict[str, str | None] = {}
    interrupted = False
    try:
        for src in inputs:
            try:
                image, _ = _load_quietly(src, batch.say)
                padded, _ = pad_to_multiple(to_rgb(image), model.config.pixel_multiple)
                z = model.encode(padded, torch.Generator().manual_seed(args.seed))
                results[str(src)] = model.assess(z, free=args.free).answer[0]
            except Exception as e:  # one bad image never stops the batch
                batch.fail(src, e)
                continue
            batch.done += 1
            print(f"{src}: {results[str(src)]}")
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if args.json:
            write_json(args.json, results)
    batch.quiet = True  # the answers are the output; a summary only when something failed
    return batch.summary("assessed", interrupted)


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
    import torch

    from .config import RARConfig
    from .model import RAR

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


# ----- parser ----------------------------------------------------------------------------------


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """All subcommands; the lazy ones are imported (their real arguments added) only if `command`."""
    p = Parser(prog="rar", description="RAR: Restore, Assess, Repeat (iterative latent image restoration)")
    p.add_argument("--version", action="version", version=f"comfyui-rar {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{restore,assess,info," + ",".join(LAZY_COMMANDS) + "}")

    r = sub.add_parser("restore", help="restore images (files or folders)")
    r.add_argument("inputs", nargs="+")
    r.add_argument("-o", "--output", required=True, help="output file (one input; .png .jpg .webp .bmp .tif) or folder")
    r.add_argument("--model", help="RAR .safetensors (default: the built-in compact model)")
    r.add_argument("--max-rounds", type=int, default=DEFAULT_ROUNDS,
                   help=f"at most this many rounds, 1 to {ROUNDS_LIMIT} (default {DEFAULT_ROUNDS})")
    r.add_argument("--steps", type=int, default=None, help=f"Euler steps per round, at least 1 (default: the model's, {DEFAULT_STEPS})")
    r.add_argument("--mode", choices=MODES, default="adaptive",
                   help="adaptive (default): re-assess and verify every round; fixed: exactly --max-rounds "
                        "restorations, unverified; once: assess once, verify every round")
    r.add_argument("--protocol", choices=PROTOCOLS, default="demo",
                   help="demo (default): the official demo's loop; paper-eval: the paper's evaluation script "
                        "(at most --max-rounds - 1 kept, questions drawn with --seed; docs/official.md)")
    r.add_argument("--trace", help="write the per-round trace as JSON (also for the finished images after Ctrl-C)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--tile", type=int, default=None,
                   help=f"side in px of the codec's tiles on larger images, at least {MIN_TILE} (default: the model's, "
                        "512); smaller uses less memory. The restorer's windows and the LQA's view are the model's")
    r.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    existing = r.add_mutually_exclusive_group()
    existing.add_argument("--overwrite", action="store_true",
                          help="replace existing outputs and the --trace file; allows -o to be the input (restore in place)")
    existing.add_argument("--skip-existing", action="store_true", help="leave images whose output exists alone")
    r.add_argument("-q", "--quiet", action="store_true")
    r.set_defaults(func=cmd_restore)

    a = sub.add_parser("assess", help="name the main degradation of images")
    a.add_argument("inputs", nargs="+")
    a.add_argument("--model")
    a.add_argument("--free", action="store_true", help="free greedy generation instead of the label set")
    a.add_argument("--json", help="write the answers as JSON")
    a.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    a.set_defaults(func=cmd_assess)

    i = sub.add_parser("info", help="model sizes per module")
    i.add_argument("model", nargs="?")
    i.add_argument("--preset", choices=sorted(PRESETS))
    i.set_defaults(func=cmd_info)

    for name, (module, help_text) in LAZY_COMMANDS.items():
        if name == command:
            _add_lazy(sub, name, module)
        else:
            sub.add_parser(name, help=help_text, add_help=False)  # placeholder: listed, never parsed
    return p


def _add_lazy(sub, name: str, module: str) -> None:
    """Import a subcommand's module and let it register its arguments; say which extra is missing."""
    for top in NEEDS.get(name, ()):
        if importlib.util.find_spec(top) is None:
            raise MissingExtra(f"needs {top}, which is not installed: pip install \"comfyui-rar[{EXTRAS[name]}]\"")
    try:
        mod = importlib.import_module(f"{__package__}.{module}")
    except ModuleNotFoundError as e:
        top = (e.name or "").partition(".")[0]
        if top in EXTRA_PACKAGES:
            raise MissingExtra(f"needs {top}, which is not installed: pip install \"comfyui-rar[{EXTRAS.get(name, 'train')}]\"") from e
        if e.name != f"{__package__}.{module}":
            raise
        raise CLIError(f"'{name}' is not part of this installation") from e
    getattr(mod, f"add_{name}_subparser")(sub)


def _command(argv: list[str]) -> str | None:
    """The subcommand named in argv: `rar` has no options that take a value before it."""
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = _command(argv)
    try:
        parser = build_parser(command)
    except CLIError as e:
        print(f"rar {command}: error: {e}", file=sys.stderr)
        return 2
    args = parser.parse_args(argv)

    from .checkpoint import CheckpointError
    from .image import ImageError
    from .model import LatentError

    try:
        return args.func(args)
    except (CLIError, FileNotFoundError, CheckpointError, ImageError, LatentError) as e:
        print(f"rar {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rar {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
