"""The Restore-Assess-Repeat loop (Sec. 5.5-5.7), written once.

    z_deg = E(x) -> [ assess(z) -> restore: A_Q -> UIR, K Euler steps -> z_new
                      -> verify(A = z_new, B = z) -> keep z_new, or roll back and stop ] x N
    -> D(z)

A round is two steps: `attempt` runs the model's stages on the items still active and returns a
`Round` with a typed `Verdict` per item (`judge` is the one rule); `LoopState.fold` keeps or rolls
back each item, stops the ones that are done and writes the trace. `run` repeats them; RAR
Iterate (nodes/loop.py) runs the stages as graph nodes and folds their outputs with the same
`judge` and `fold`; training, calibration and the benches read trajectories from `run`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum

import torch

from . import prompts
from .config import DEFAULT_ROUNDS, MODES, PROTOCOLS
from .model import RAR, Assessment, OnTile

# demo: the official demo's loop (run.py), up to max_rounds kept restorations and one fixed question
# of each kind. paper-eval: the paper's evaluation script (scripts/test_autocomparison.py): its last
# round's restoration is always discarded, so at most max_rounds - 1 are kept, the identification
# question is drawn once per image and the comparison question every round (seeded here; the script
# takes the first from its dataset's meta file). rar-official-layout.md section 6 has both.


def questions(protocol: str, seed: int, rounds: int) -> tuple[str | None, list[str | None]]:
    """(identification question, comparison question per round) of a protocol; None: the model's default."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    if protocol == "demo":
        return None, [None] * rounds
    g = torch.Generator().manual_seed(seed)
    draw = lambda pool: pool[int(torch.randint(len(pool), (1,), generator=g))]  # noqa: E731
    return draw(prompts.IDENTIFY), [draw(prompts.COMPARE) for _ in range(rounds)]


class Verdict(Enum):
    """What a round did to one item."""

    ACCEPTED = "accepted"  # the LQA preferred the candidate: keep it and go on
    REJECTED = "rejected"  # the LQA preferred the previous latent: roll back and stop
    UNVERIFIED = "not verified"  # fixed mode: kept without asking
    CLEAN = "clean"  # the assessment called the item clean: nothing restored, stop

    @property
    def kept(self) -> bool:
        """Does the item take the candidate and stay in the loop?"""
        return self in (Verdict.ACCEPTED, Verdict.UNVERIFIED)


CLEAN_TEXT = "clean: kept"  # the trace's comparison text for an item stopped as clean


def judge(mode: str, answers: Sequence[str], improved: Sequence[bool] | None, stop_when_clean: bool) -> list[Verdict]:
    """The loop's rule for each item of a round: clean (when the model stops on it, in the verified
    modes), else unverified (fixed mode), else what verification said (`improved`)."""
    out = []
    for j, answer in enumerate(answers):
        if stop_when_clean and mode != "fixed" and prompts.is_clean(answer):
            out.append(Verdict.CLEAN)
        elif mode == "fixed":
            out.append(Verdict.UNVERIFIED)
        else:
            out.append(Verdict.ACCEPTED if improved[j] else Verdict.REJECTED)
    return out


@dataclass
class Round:
    """One round's outcome for the active items, in their order. `candidate` rows of items that
    were not restored (clean) are their current latents."""

    answers: list[str]
    verdicts: list[Verdict]
    texts: list[str]  # the LQA's comparison (or why there was none), as the trace shows it
    candidate: torch.Tensor
    assessment: Assessment | None = None
    seconds: dict[str, float] | None = None


@dataclass
class LoopState:
    """Where the loop stands: the kept latent of every item, which items go on, the trace."""

    z: torch.Tensor
    mode: str = "adaptive"
    active: list[int] = field(default_factory=list)
    rounds: list[int] = field(default_factory=list)  # kept restorations per item
    trace: list[list[dict]] = field(default_factory=list)  # per item, one record per round
    n: int = 0  # rounds done
    assessment: Assessment | None = None  # "once" mode: the first assessment of the active items

    @classmethod
    def start(cls, z: torch.Tensor, mode: str = "adaptive") -> "LoopState":
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        b = z.shape[0]
        return cls(z, mode, list(range(b)), [0] * b, [[] for _ in range(b)])

    def copy(self) -> "LoopState":
        """A state to fold into while this one stays as it was (graph expansions cache their inputs)."""
        return replace(self, z=self.z.clone(), active=list(self.active), rounds=list(self.rounds),
                       trace=[list(t) for t in self.trace])

    def done(self, max_rounds: int) -> bool:
        return not self.active or self.n >= max_rounds

    def fold(self, r: Round) -> None:
        """Keep or roll back each active item, stop the ones that are done, record the round."""
        self.n += 1
        still = []
        for j, i in enumerate(self.active):
            v = r.verdicts[j]
            record = {"round": self.n, "answer": r.answers[j], "verdict": r.texts[j], "accepted": v.kept}
            if r.seconds is not None:
                record["seconds"] = r.seconds
            self.trace[i].append(record)
            if v.kept:
                self.z[i] = r.candidate[j].to(self.z.device, self.z.dtype)
                self.rounds[i] += 1
                still.append(j)
        if self.mode == "once":
            first = self.assessment if self.assessment is not None else r.assessment
            self.assessment = first.select(still) if first is not None else None
        self.active = [self.active[j] for j in still]


@torch.no_grad()
def attempt(model: RAR, state: LoopState, steps: int | None = None, on_tile: OnTile | None = None,
            identify: str | None = None, compare: str | None = None) -> Round:
    """One round's stages on the active items: assess (or reuse the first assessment in "once"
    mode), restore all but the clean ones, verify (but in fixed mode), judge. `identify` and
    `compare` are the questions (None: the model's defaults)."""
    mode = state.mode
    z = state.z[state.active]
    t0 = time.perf_counter()
    assessment = state.assessment if mode == "once" and state.assessment is not None else model.assess(z, identify)
    first = judge(mode, assessment.answer, [True] * len(z), model.config.stop_when_clean)  # which are clean
    todo = [j for j, v in enumerate(first) if v is not Verdict.CLEAN]
    t1 = time.perf_counter()
    candidate = z.clone()
    if todo:
        candidate[todo] = model.restore(z[todo], assessment.select(todo), steps, on_tile=on_tile).to(z.device)
    t2 = time.perf_counter()
    improved, texts = [False] * len(z), [CLEAN_TEXT] * len(z)
    if mode == "fixed":
        texts = [Verdict.UNVERIFIED.value] * len(z)
    elif todo:
        ok, said = model.verify(candidate[todo], z[todo], compare)
        for j, o, t in zip(todo, ok.tolist(), said):
            improved[j], texts[j] = o, t
    t3 = time.perf_counter()
    seconds = {"assess": round(t1 - t0, 3), "restore": round(t2 - t1, 3), "verify": round(t3 - t2, 3)}  # ms suffice
    return Round(list(assessment.answer), judge(mode, assessment.answer, improved, model.config.stop_when_clean),
                 texts, candidate, assessment, seconds)


@dataclass
class LoopResult:
    latent: torch.Tensor
    rounds: list[int]  # kept restorations per item
    trace: list[list[dict]] = field(default_factory=list)  # per item, per round (the whole latent)
    tiles: int = 1  # restorer windows per item and Euler step


@torch.no_grad()
def run(
    model: RAR,
    z: torch.Tensor,
    max_rounds: int = DEFAULT_ROUNDS,
    steps: int | None = None,
    mode: str = "adaptive",
    callback: Callable[[int, torch.Tensor], None] | None = None,
    on_tile: OnTile | None = None,
    protocol: str = "demo",
    seed: int = 0,
) -> LoopResult:
    """Repeat assess -> restore -> verify per item until it is rejected, clean, or max_rounds.

    adaptive: re-assess every round, stop at the first rejection and keep the previous latent.
    fixed:    re-assess every round, no verification, exactly max_rounds restorations.
    once:     assess once (the official "offline" mode), then restore with the verify gate.
    `callback(round, z)` runs after every round (progress, previews, interrupts);
    `on_tile(done, total)` during each restoration, per batch of restorer windows (RAR.restore),
    so a host can show finer progress and stop between tiles by raising. `protocol` (PROTOCOLS)
    is the official demo's loop or the paper's evaluation; `seed` draws the latter's questions.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be at least 1, got {max_rounds}")
    model.check_latent(z)
    # paper-eval restores max_rounds times and discards the last; the discarded one is not computed
    rounds = max_rounds - 1 if protocol == "paper-eval" else max_rounds
    identify, compare = questions(protocol, seed, rounds)
    state = LoopState.start(z.to(model.device).float().clone(), mode)
    while not state.done(rounds):
        state.fold(attempt(model, state, steps, on_tile, identify, compare[state.n]))
        if callback is not None:
            callback(state.n, state.z)
    return LoopResult(state.z, state.rounds, state.trace, tiles=len(model.restore_grid(*z.shape[-2:])))


@torch.no_grad()
def trajectory(model: RAR, z: torch.Tensor, rounds: int, steps: int | None = None) -> list[torch.Tensor]:
    """[z_0 = z, z_1, ..., z_rounds]: the fixed-mode loop's latent after each round (the pairs its
    verification is asked about in adaptive mode, up to the first rejection)."""
    zs = [z]
    run(model, z, rounds, steps, "fixed", callback=lambda n, zn: zs.append(zn.clone()))
    return zs


@dataclass
class ImageResult:
    image: torch.Tensor  # [B,3,H,W] in [0,1], the input's size
    rounds: list[int]
    trace: list[list[dict]]  # per item, one record per round for the whole image
    tiles: int = 1  # restorer windows per item


@torch.no_grad()
def restore_image(
    model: RAR,
    image: torch.Tensor,
    max_rounds: int = DEFAULT_ROUNDS,
    steps: int | None = None,
    mode: str = "adaptive",
    seed: int = 0,
    tile: int | None = None,
    overlap: int | None = None,
    callback: Callable[[int, torch.Tensor], None] | None = None,
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    decode: Callable[[torch.Tensor], torch.Tensor] | None = None,
    on_tile: OnTile | None = None,
    protocol: str = "demo",
) -> ImageResult:
    """Image in, restored image out: pad, encode, loop on the whole latent, decode, crop.

    `encode` (image -> normalised z) and `decode` default to the model's own codec, which works
    in tiles of at most `tile` px a side (default `model.codec_tile`; `overlap` is accepted for
    old callers and ignored: the codec's overlap is an eighth of its tile). The official tier
    passes the SD3.5 VAE's. The restorer's windows are the model's (`RAR.restore`); `tiles` in
    the result counts them. `on_tile(done, total)` runs between the codec's tiles and the
    restorer's (whose total is windows x steps). An item whose first round was rejected gets its
    input pixels back: rolling back to the input must not cost a codec round trip. `seed` samples
    the codec's posterior (when the model does) and draws paper-eval's questions.
    """
    from .image import check_image_tensor, check_size, pad_to_multiple, to_rgb

    check_image_tensor(image)
    del overlap
    image = to_rgb(image.float())
    check_size(image.shape[-2], image.shape[-1])
    padded, (h, w) = pad_to_multiple(image, model.config.pixel_multiple)
    if encode is None:
        z = model.encode(padded, torch.Generator(device="cpu").manual_seed(seed), on_tile=on_tile, tile=tile)
    else:
        z = encode(padded)
    res = run(model, z, max_rounds, steps, mode, callback, on_tile, protocol, seed)
    kept = torch.tensor([r == 0 for r in res.rounds], device=image.device)
    if bool(kept.all()):  # nothing restored (clean, or every first round rejected): no decode
        return ImageResult(image.cpu(), res.rounds, res.trace, res.tiles)
    out = model.decode(res.latent, on_tile=on_tile, tile=tile) if decode is None else decode(res.latent)
    out = out[:, :, :h, :w].to(image.device, image.dtype)
    return ImageResult(torch.where(kept[:, None, None, None], image, out).cpu(), res.rounds, res.trace, res.tiles)
