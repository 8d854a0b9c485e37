"""Design checks of the toy study on the ``cpu`` world (issue 17; the review's measurements, rerun).

Measures, for world seeds 0 and 1 of ``experiments/cpu.yaml``'s world (no training, CPU, < 2 minutes):

* realised coverage of the trainable compositions (stated by a caption AND shown by its scene) vs dataset scale
  (100 … 64K items) at caption diversity 0, 0.5 and 1, and the saturation point (smallest scale with
  coverage ≥ 0.99);
* per task, the share of the standard prompts that are novel to a run (trainable, never realised in its data)
  at diversity 0, 0.25, 0.5, 0.75, 1 at a fixed scale (the cpu preset's 10K items);
* the leak count: items (at all knobs 1, 10K items) whose caption states or whose scene shows a held-out
  composition, read by the caption parser and GenEval's position rule;
* distinct prompts per task in the held-out prompt set.

Writes ``study/design_checks.json`` and prints markdown tables. Run: ``python study/design_checks.py``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightgen.config import load_config  # noqa: E402
from lightgen.data.compositions import item_compositions, prompt_split  # noqa: E402
from lightgen.geneval.prompts import toy_heldout_prompts, toy_prompts  # noqa: E402
from lightgen.utils import write_atomic  # noqa: E402
from lightgen.world.captions import CaptionGenerator, Knobs  # noqa: E402
from lightgen.world.parse import parser_for  # noqa: E402
from lightgen.world.toy import ToyWorld  # noqa: E402

SCALES = (100, 250, 500, 1_000, 2_000, 4_000, 8_000, 16_000, 64_000)
COVERAGE_D = (0.0, 0.5, 1.0)
NOVEL_D = (0.0, 0.25, 0.5, 0.75, 1.0)
NOVEL_SCALE = 10_000
LEAK_ITEMS = 10_000
WORLD_SEEDS = (0, 1)
TASKS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def knobs(d: float) -> Knobs:
    return Knobs(0.05 + 0.95 * d, d, d)


def grow(world: ToyWorld, d: float, res: int, sizes: list[int]) -> dict[int, frozenset]:
    """The run's composition set (stated AND shown) at each size (nested prefixes of one stream, data seed 0).

    Exact shortcut: a caption can only state compositions the generator allows at this coverage (with the
    inverses of its relations), so once every allowed one is realised the set cannot grow and the remaining
    sizes get the same set without generating their items."""
    from lightgen.world.toy import close_inverses

    gen = CaptionGenerator(world, knobs(d), seed=0)
    allowed = close_inverses([("color", *p) for p in gen.color_pairs] + [("count", *p) for p in gen.count_pairs]
                             + [("relation", *t) for t in gen.relation_triples], world.relations)
    allowed |= {("class", c) for c in world.classes}
    train: set = set()
    out, start = {}, 0
    for n in sorted(sizes):
        if train != allowed:
            for i in range(start, n):
                spec, _ = gen.item(i)
                train |= item_compositions(world, spec, world.objects(spec, res, gen.render_seed(i)))[0]
                if train == allowed:
                    break
        assert train <= allowed
        start = n
        out[n] = frozenset(train)
    return out


def leaks(world: ToyWorld, res: int) -> int:
    parse = parser_for(world)
    gen = CaptionGenerator(world, Knobs(1.0, 1.0, 1.0), seed=0)
    bad = 0
    for i in range(LEAK_ITEMS):
        spec, cap = gen.item(i)
        shown = world.shown_compositions(world.objects(spec, res, gen.render_seed(i)))
        bad += any(world.is_heldout_composition(c) for c in parse.compositions(cap) | shown)
    return bad


def check(seed: int) -> dict:
    cfg = load_config("cpu", [f"world.seed={seed}"])
    world, res, n_prompts = ToyWorld(cfg.world), cfg.data.resolution, cfg.eval.n_prompts
    out: dict = {"world_seed": seed, "heldout_fraction": world.heldout_fraction,
                 "trainable_compositions": len(world.trainable_compositions()),
                 "heldout_compositions": len(world.heldout_compositions())}
    trainable = world.trainable_compositions()
    curves, at_scale = {}, {}
    for d in COVERAGE_D:
        sets = grow(world, d, res, sorted(set(SCALES) | {NOVEL_SCALE}))
        at_scale[d] = sets[NOVEL_SCALE]
        curve = {n: len(trainable & sets[n]) / len(trainable) for n in SCALES}
        sat = next((n for n in SCALES if curve[n] >= 0.99), None)
        plateau = next(n for n in SCALES if curve[n] == curve[SCALES[-1]])  # where the coverage knob caps it
        curves[str(d)] = {"coverage": {str(n): round(v, 4) for n, v in curve.items()}, "saturation_items": sat,
                          "plateau_items": plateau}
    out["realised_coverage"] = curves
    std = toy_prompts(world, n_prompts, seed=seed)
    novel = {}
    for d in NOVEL_D:
        train = at_scale[d] if d in at_scale else grow(world, d, res, [NOVEL_SCALE])[NOVEL_SCALE]
        per = {}
        for t in TASKS:
            mine = [s for s in std if s["tag"] == t]
            per[t] = round(sum(prompt_split(world, s, train) == "novel" for s in mine) / len(mine), 4)
        novel[str(d)] = per
    out["novel_share"] = {"scale": NOVEL_SCALE, "prompts_per_task": n_prompts, "by_diversity": novel}
    out["leaks"] = {"items": LEAK_ITEMS, "count": leaks(world, res)}
    held = toy_heldout_prompts(world, n_prompts, seed=seed)
    out["heldout_prompts"] = dict(Counter(s["tag"] for s in held))
    out["heldout_prompts_distinct"] = {t: len({s["prompt"] for s in held if s["tag"] == t}) for t in out["heldout_prompts"]}
    return out


def markdown(results: list[dict]) -> str:
    lines = []
    for r in results:
        s = r["world_seed"]
        lines += [f"### cpu world, world.seed={s}, heldout_fraction={r['heldout_fraction']} "
                  f"({r['trainable_compositions']} trainable / {r['heldout_compositions']} held-out compositions)", "",
                  "Realised coverage of the trainable compositions vs items:", "",
                  "| D | " + " | ".join(f"{n:,}" for n in SCALES) + " | saturation (≥ 0.99) | plateau |",
                  "|---|" + "---|" * (len(SCALES) + 2)]
        for d, c in r["realised_coverage"].items():
            lines.append(f"| {d} | " + " | ".join(f"{c['coverage'][str(n)]:.3f}" for n in SCALES)
                         + f" | {c['saturation_items'] or 'never (capped by coverage)'} | {c['plateau_items']} |")
        ns = r["novel_share"]
        lines += ["", f"Share of the standard prompts ({ns['prompts_per_task']} per task) novel to a run of "
                  f"{ns['scale']:,} items:", "", "| D | " + " | ".join(TASKS) + " |", "|---|" + "---|" * len(TASKS)]
        for d, per in ns["by_diversity"].items():
            lines.append(f"| {d} | " + " | ".join(f"{per[t]:.2f}" for t in TASKS) + " |")
        lines += ["", f"Leaks (items of {r['leaks']['items']:,} at all knobs 1 stating or showing a held-out "
                  f"composition): **{r['leaks']['count']}**", "",
                  "Distinct held-out prompts per task: " + ", ".join(f"{t} {n}" for t, n in r["heldout_prompts_distinct"].items()),
                  ""]
    return "\n".join(lines)


def main() -> None:
    t0 = time.time()
    results = [check(s) for s in WORLD_SEEDS]
    import platform

    blob = {"machine": f"{platform.machine()} {platform.system()}, CPU only (no GPU used)", "seconds": round(time.time() - t0, 1),
            "results": results}
    write_atomic(ROOT / "study" / "design_checks.json", json.dumps(blob, indent=1) + "\n")
    print(markdown(results))
    print(f"({blob['seconds']} s)")


if __name__ == "__main__":
    main()
