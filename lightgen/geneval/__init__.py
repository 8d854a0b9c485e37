"""GenEval for the studio: official prompts (byte-exact), rules, detectors, scoring and summaries.

Public API (docs/ARCHITECTURE.md)::

    official_prompts() -> list[dict]                      # GenEval's 553 metadata dicts
    toy_prompts(world, n_per_task, seed) -> list[dict]    # the standard set (trainable compositions)
    toy_heldout_prompts(world, n_per_task, seed)          # the held-out set, "split": "heldout"
    ToyDetector(world) | RealDetector.from_pretrained(segmenter, clip)
    evaluate_images(images_per_prompt, metadata, detector) -> results rows (official format)
    summarize(results, bootstrap=1000, seed=0) -> {"geneval/overall": ..., ...}
    run_geneval(cfg, world, sampler, out_dir) -> (summary, results)
"""

from importlib import import_module
from typing import Any

# Lazy exports: `lightgen geneval --help` (which imports this package) must not pay for scipy/sklearn.
_EXPORTS = {
    "evaluate_folder": "evaluate", "evaluate_images": "evaluate", "run_geneval": "evaluate",
    "official_prompts": "prompts", "toy_prompts": "prompts", "toy_heldout_prompts": "prompts", "write_prompt_files": "prompts",
    "RealDetector": "real_detector", "ToyDetector": "toy_detector",
    "check_image": "rules", "filter_detections": "rules", "relative_position": "rules",
    "format_summary": "summary", "read_results": "summary", "summarize": "summary", "write_results": "summary",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(f"lightgen.geneval.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'lightgen.geneval' has no attribute {name!r}")
