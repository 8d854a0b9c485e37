"""GenEval's summary numbers, plus a bootstrap CI over prompts and the per-run splits.

As the official ``summary_scores.py``: per-task score = mean correctness over the task's images;
Overall = unweighted mean of the task scores; "% correct images" = mean over all images;
"% correct prompts" = share of prompts with at least one correct image (prompts are identified by
their metadata JSON). The 95 % CI resamples prompts with replacement *within each task* (the tasks
are fixed strata of the benchmark, and Overall weighs them equally), percentile method.

Splits: toy prompts carry ``split`` (``intrain`` / ``novel`` / ``heldout``, :mod:`lightgen.data.compositions`).
``geneval/…`` is the standard set (every prompt not ``heldout``), ``geneval_<split>/<task|overall>`` each
split, with ``geneval_<split>/n_prompts`` its distinct prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from lightgen.geneval.tasks import ordered

SPLITS = ("intrain", "novel", "heldout")  # lightgen.data.compositions.SPLITS

RESULT_KEYS = ("filename", "tag", "prompt", "correct", "reason", "metadata", "details")


def read_results(path: str | Path) -> list[dict[str, Any]]:
    """Read a results.jsonl (ours or the official evaluator's pandas output); clear errors on bad rows."""
    from lightgen.errors import UserError

    from lightgen.utils import iter_jsonl

    path = Path(path)
    rows = []
    for where, row in iter_jsonl(path):
        rows.append(check_result(row, where))
    if not rows:
        raise UserError(f"{path}: no results found")
    return rows


def check_result(row: Any, where: str) -> dict[str, Any]:
    """One results.jsonl row, checked: an object with ``tag`` (string), ``correct`` (true/false) and
    ``metadata`` (an object, or a string holding a JSON object, as the official evaluator writes it)."""
    from lightgen.errors import UserError
    from lightgen.utils import require_object

    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__} (not a GenEval results file?)")
    missing = [k for k in ("tag", "correct", "metadata") if k not in row]
    if missing:
        raise UserError(f"{where}: missing field(s) {', '.join(missing)} (not a GenEval results file?)")
    require_object(where, row, {"tag": str, "prompt": str, "filename": str, "reason": str, "correct": (bool, int),
                                "metadata": (dict, str), "details": (dict, str)})
    if row["tag"] is None or row["correct"] is None:
        raise UserError(f"{where}: fields 'tag' and 'correct' must not be null")
    if isinstance(row["correct"], int) and not isinstance(row["correct"], bool) and row["correct"] not in (0, 1):
        raise UserError(f"{where}: field 'correct' must be true or false, got {row['correct']!r}")
    meta = row["metadata"]
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            raise UserError(f"{where}: field 'metadata' is a string but not JSON text of an object") from None
    if not isinstance(meta, dict):
        raise UserError(f"{where}: field 'metadata' must be an object, got {type(meta).__name__}")
    return row


def write_results(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write results.jsonl atomically, one official-format row per image."""
    from lightgen.utils import write_atomic

    return write_atomic(path, "".join(json.dumps({k: r[k] for k in RESULT_KEYS if k in r}) + "\n" for r in rows))


def _meta(row: dict[str, Any]) -> dict[str, Any]:
    m = row["metadata"]
    return json.loads(m) if isinstance(m, str) else m


def _task_arrays(rows: list[dict[str, Any]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per task: (correct images per prompt, images per prompt), prompts in first-seen order."""
    per: dict[str, dict[str, list[int]]] = {}
    for r in rows:
        key = r["metadata"] if isinstance(r["metadata"], str) else json.dumps(r["metadata"], sort_keys=True)
        acc = per.setdefault(r["tag"], {}).setdefault(key, [0, 0])
        acc[0] += bool(r["correct"])
        acc[1] += 1
    return {t: (np.array([v[0] for v in d.values()], float), np.array([v[1] for v in d.values()], float))
            for t, d in per.items()}


def _ordered_tasks(tasks: Iterable[str]) -> list[str]:
    return ordered(tasks)


def _scores(rows: list[dict[str, Any]], prefix: str) -> dict[str, float]:
    arrays = _task_arrays(rows)
    out = {}
    for t in _ordered_tasks(arrays):
        c, n = arrays[t]
        out[f"{prefix}/{t}"] = float(c.sum() / n.sum())
    if out:
        out[f"{prefix}/overall"] = float(np.mean(list(out.values())))
    return out


def bootstrap_overall(rows: list[dict[str, Any]], n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of Overall, resampling prompts with replacement within each task."""
    arrays = _task_arrays(rows)
    if n_boot <= 0 or not arrays:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    task_scores = []
    for t in _ordered_tasks(arrays):
        c, n = arrays[t]
        idx = rng.integers(0, len(c), size=(n_boot, len(c)))
        task_scores.append(c[idx].sum(1) / n[idx].sum(1))
    overall = np.mean(task_scores, axis=0)
    lo, hi = np.quantile(overall, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def summarize(results: list[dict[str, Any]], bootstrap: int = 1000, seed: int = 0) -> dict[str, float]:
    """GenEval's numbers as MLflow metrics (see module docstring); per split when specs carry "split"."""
    from lightgen.errors import UserError

    every = list(results)
    if not every:
        raise UserError("no GenEval results to summarise")
    flags = [_meta(r).get("split") for r in every]
    rows = [r for r, f in zip(every, flags) if f != "heldout"] or every
    out = _scores(rows, "geneval")
    out["geneval/overall_ci_low"], out["geneval/overall_ci_high"] = bootstrap_overall(rows, bootstrap, seed)
    out["geneval/correct_images"] = float(np.mean([bool(r["correct"]) for r in rows]))
    by_prompt: dict[str, bool] = {}
    for r in rows:
        key = r["metadata"] if isinstance(r["metadata"], str) else json.dumps(r["metadata"], sort_keys=True)
        by_prompt[key] = by_prompt.get(key, False) or bool(r["correct"])
    out["geneval/correct_prompts"] = float(np.mean(list(by_prompt.values())))
    for split in SPLITS:
        mine = [r for r, f in zip(every, flags) if f == split]
        if mine:
            out.update(_scores(mine, f"geneval_{split}"))
            out[f"geneval_{split}/n_prompts"] = float(sum(len(c) for c, _ in _task_arrays(mine).values()))
    return out


def format_summary(summary: dict[str, float], results: list[dict[str, Any]]) -> str:
    """A text table in the spirit of GenEval's summary_scores.py output (tasks: the standard set)."""
    results = [r for r in results if _meta(r).get("split") != "heldout"] or list(results)
    arrays = _task_arrays(results)
    lines = [
        "Summary", "=======",
        f"Total images: {len(results)}",
        f"Total prompts: {sum(len(c) for c, _ in arrays.values())}",
        f"% correct images: {summary['geneval/correct_images']:.2%}",
        f"% correct prompts: {summary['geneval/correct_prompts']:.2%}",
        "", "Task breakdown", "==============",
    ]
    for t in _ordered_tasks(arrays):
        c, n = arrays[t]
        row = f"{t:<16} = {c.sum() / n.sum():.2%} ({int(c.sum())} / {int(n.sum())})"
        for split in SPLITS:
            if f"geneval_{split}/{t}" in summary:
                row += f"  {split} {summary[f'geneval_{split}/{t}']:.2%}"
        lines.append(row)
    lines += ["", f"Overall score (avg. over tasks): {summary['geneval/overall']:.5f}"
              f"  95% CI [{summary['geneval/overall_ci_low']:.4f}, {summary['geneval/overall_ci_high']:.4f}]"]
    for split in SPLITS:
        if f"geneval_{split}/overall" in summary:
            lines.append(f"Overall ({split}, {int(summary[f'geneval_{split}/n_prompts'])} prompts): "
                         f"{summary[f'geneval_{split}/overall']:.5f}")
    return "\n".join(lines)
