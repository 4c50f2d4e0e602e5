"""Training recipes that were tried and are kept as data, outside the installed package.

Each is a `rar_core.train.Recipe` like the shipped `compact`; BENCHMARKS.md's table of
experiments has what they gave. This file runs `rar train` with them added to `--recipe`:

    python experiments/recipes.py --recipe gpu --stage all --device cuda --out runs/gpu
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from rar_core.train import RECIPES, PoolConfig, Recipe, StageConfig  # noqa: E402

COMPACT = RECIPES["compact"]


def _pools(name: str, refine_only: dict | None = None, **both) -> Recipe:
    """`compact` with `both` set in its refine and verify pools (and `refine_only` in the refine
    pool alone): the experiments on what the restorer and the gate are shown after the six stages."""
    return replace(COMPACT, name=name,
                   refine=replace(COMPACT.refine, pool=replace(COMPACT.refine.pool, **(refine_only or {}), **both)),
                   verify=replace(COMPACT.verify, pool=replace(COMPACT.verify.pool, **both)))


# `compact` with the extra and wide splits in every stage's pool (the recipes compact-wide*).
WIDE = replace(_pools("compact-wide", extra=True, wide=True), pool=replace(COMPACT.pool, extra=True, wide=True))

EXPERIMENTS = {
    # The GPU stages of the model shipped before `compact` (commit 2cb633f): one H100, each stage
    # in a time budget (8.3 min in all, 14 loader processes); these are the step counts that ran.
    # A GPU runs these 1-8 M-parameter networks at the cost of their kernel launches, so large
    # batches come almost free. That model then had 1500 more e2e steps on CPU (6 x 96 px).
    "gpu": Recipe(
        name="gpu",
        preset="compact",
        codec=StageConfig(steps=3301, batch=64, crop=128, lr=1e-3),
        uir=StageConfig(steps=1099, batch=96, crop=128, lr=4e-4),
        lqa=StageConfig(steps=1929, batch=128, crop=64, lr=5e-4, crops=(64, 128, 192, 256)),
        connector=StageConfig(steps=200, batch=96, crop=128, lr=2e-4),
        e2e=StageConfig(steps=247, batch=48, crop=96, lr=1e-4, crops=(96, 64, 128, 192, 256)),
        decoder=StageConfig(steps=773, batch=64, crop=128, lr=5e-4),
    ),
    # `compact` with 80 % identification batches in the LQA stage (commit e09f261). As a fine-tune
    # of an earlier model it lifted identification from 27.5 % to 36.7 % (324 answers) and taught
    # the LQA to call clean photos clean; the e2e stage after it gave part of that back, and the
    # restorer, which reads the LQA's hidden states, needed the connector and e2e stages to catch
    # up. Never run end to end from scratch.
    "compact-identify": replace(COMPACT, name="compact-identify", lqa=replace(COMPACT.lqa, identify=0.8)),
    # `compact` with the remedies of experiments/rootcause/FINDINGS.md section 3: bright
    # exposures and flat graphics in the pool, clean->clean samples (answer "Clean") in every
    # restorer stage, identification trained on the input round only in e2e, and the verify stage
    # on the restorer's own rounds on clean and degraded inputs. The candidate for the next
    # built-in model (issue: do no harm).
    "compact-clean": replace(
        COMPACT, name="compact-clean",
        pool=PoolConfig(synthetic=12, synthetic_p=0.12, bright_p=0.35),
        uir=replace(COMPACT.uir, clean_p=0.25),
        lqa=replace(COMPACT.lqa, clean_p=0.2),
        connector=replace(COMPACT.connector, clean_p=0.25),
        e2e=replace(COMPACT.e2e, clean_p=0.25, identify_input_only=True),
        verify=StageConfig(steps=1200, batch=8, crop=128, lr=1e-4, crops=(64, 128, 192, 256), clean_p=0.33),
    ),
    # The refine stage of `compact` with dark, low-key exposures in its pool as well (dark_p 0.15):
    # it taught the restorer to leave low-light inputs dark (BENCHMARKS.md, experiment refine,
    # dark exposures; screened only).
    "compact-refine-dark": replace(COMPACT, name="compact-refine-dark", refine=replace(
        COMPACT.refine, pool=replace(COMPACT.refine.pool, dark_p=0.15))),
    # `compact` with dark exposures in the refine pool (dark_p 0.15) that never get the low-light
    # degradation, in the refine and the verify pools: a dark photo is kept dark under blur, noise
    # or JPEG, and a dimmed one is still lifted (BENCHMARKS.md, experiment dark, not dimmed).
    "compact-dark-not-dimmed": _pools("compact-dark-not-dimmed", {"dark_p": 0.15}, dark_not_dimmed=True),
    # `compact` with grey and channel-permuted photo crops in the refine and verify pools (10 % and
    # 20 %): colours and grey content the registry photos lack (BENCHMARKS.md, experiment recolour).
    "compact-recolour": _pools("compact-recolour", grey_p=0.1, permute_p=0.2),
    # `compact` with the extra photos of scripts/fetch_data.py (people, texture, objects) in the
    # refine and verify pools: 123 photos against 49 (BENCHMARKS.md, experiment more photos).
    "compact-more-photos": _pools("compact-more-photos", extra=True),
    # `compact` with the extra photos and the wide split's screenshots, night photos and people
    # (scripts/fetch_data.py; 186 images against 49) in every stage's pool, the codec's to the
    # verify's: the restorer's gains on blur, JPEG and low resolution do not carry to content its
    # 49 photos lack, and a refine stage alone trades them against the dimmed inputs' gain
    # (BENCHMARKS.md, the summary of the experiments).
    "compact-wide": WIDE,
    # `compact-wide` at 16-18 % of each stage's steps: 1 h 55 min on the slowest 2-core machine
    # measured, where `compact` takes about 10 h 56 min (docs/training.md), so that a whole
    # candidate trains, calibrates and benches within three hours. It learns nothing usable: the
    # calibrated gate keeps every input (BENCHMARKS.md, experiment compact-wide-short).
    "compact-wide-short": replace(WIDE, name="compact-wide-short", **{
        stage: replace(WIDE.stage(stage), steps=steps) for stage, steps in
        dict(codec=1150, uir=195, lqa=350, connector=35, e2e=450, decoder=240, refine=240, verify=165).items()}),
    # `compact` with a 5x learning rate in the verify stage: at 1e-4 its comparison loss ends near
    # chance on the answer token. The loss stayed where it was and the gate got worse
    # (BENCHMARKS.md, experiment verify lr 5e-4; not built in).
    "compact-verify-lr": replace(COMPACT, name="compact-verify-lr", verify=replace(COMPACT.verify, lr=5e-4)),
    # `compact` with the verify stage ranking every pair of a sample's rounds, not only successive
    # ones: more pairs, and clearer ones, for a comparison that ends near chance on successive
    # rounds. The gate came no closer to its targets and lightly degraded inputs came out worse
    # (BENCHMARKS.md, experiment compact-verify-pairs; not built in).
    "compact-verify-pairs": replace(COMPACT, name="compact-verify-pairs", verify=replace(COMPACT.verify, all_pairs=True)),
    # The verify stage of the model built in before compact-verify-clean (commit 57de5ae): no
    # "Clean" answer taught.
    "compact-verify-dark": replace(COMPACT, name="compact-verify-dark", verify=replace(COMPACT.verify, clean_answer=0.0)),
    # The verify stage of the model built in before compact-verify-dark (commit d0ddfc3): its pool
    # had bright exposures and flat graphics, no dark exposures.
    "compact-verify": replace(COMPACT, name="compact-verify", verify=replace(
        COMPACT.verify, clean_answer=0.0, pool=PoolConfig(synthetic=12, synthetic_p=0.12, bright_p=0.35))),
}


def main(argv: list[str] | None = None) -> int:
    RECIPES.update(EXPERIMENTS)
    from rar_core.cli import main as rar

    return rar(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
