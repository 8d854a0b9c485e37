"""The bad-input corpus, second part (issue 20): one parametrised table per category.

Every case runs a real entry point (the ``lightgen`` commands in-process through typer's CliRunner, the
analysis scripts and the sweep worker through their ``main``) and asserts the promise: exit code 2, one
``error:`` line naming the field or file, no traceback, nothing left RUNNING in any MLflow store, and
(for ``runs import``) the target store unchanged. No case trains a model.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.fault

LATIN1 = "caf\xe9 cr\xe8me".encode("latin-1")  # not UTF-8


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------
def _runs_in(db: Path) -> list[tuple[str, str]]:
    """(run_uuid, status) of every run in an MLflow SQLite store; [] when there is none."""
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        try:
            return con.execute("select run_uuid, status from runs").fetchall()
        except sqlite3.OperationalError:  # no runs table: nothing was ever started
            return []


def _assert_nothing_running(*dbs: Path) -> None:
    for db in dbs:
        running = [r for r, s in _runs_in(db) if s == "RUNNING"]
        assert not running, f"run(s) left RUNNING in {db}: {running}"


def _norm(text: str) -> str:
    return " ".join(text.split())


def _invoke(args: list[str], cwd: Path, monkeypatch) -> tuple[int, str, BaseException | None]:
    from typer.testing import CliRunner

    from lightgen.cli import app

    monkeypatch.chdir(cwd)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("COLUMNS", "250")
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output, res.exception


def _check(code: int, out: str, exc: BaseException | None, needle: str, *, usage: bool = False) -> None:
    """Exit 2, no traceback, the needle named; ``usage``: a click usage error (its own box), else exactly
    one ``error:`` line from the studio's boundary, holding the needle."""
    assert code == 2, (code, out[-2000:], exc)
    assert isinstance(exc, SystemExit), f"uncaught {exc!r}"
    assert "Traceback" not in out
    if usage:
        assert needle in _norm(out), out[-2000:]
        return
    lines = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, out[-2000:]
    assert needle in lines[0], lines[0]


def _fill(args: list[str], **kw: str) -> list[str]:
    return [a.format(**kw) for a in args]


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", REPO / "analysis" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --------------------------------------------------------------------------------------------------
# Files: one folder of bad files for every table
# --------------------------------------------------------------------------------------------------
GOOD_RESULT = {"filename": "00000/samples/0000.png", "tag": "colors", "prompt": "a photo of a red circle",
               "correct": True, "reason": "", "details": {},
               "metadata": {"tag": "colors", "prompt": "a photo of a red circle",
                            "include": [{"class": "circle", "count": 1, "color": "red"}]}}
GOOD_SPEC = {"tag": "single_object", "prompt": "a photo of a circle", "include": [{"class": "circle", "count": 1}]}


def _with(base: dict, **changes) -> str:
    d = json.loads(json.dumps(base))
    d.update(changes)
    return json.dumps(d)


@pytest.fixture(scope="module")
def d(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bad2")
    (d / "a_file").write_text("not a folder")
    (d / "folder.yaml").mkdir()
    (d / "folder_sweep.yaml").mkdir()
    (d / "folder.jsonl").mkdir()
    (d / "latin1.yaml").write_bytes(b"seed: 0\ntrain:\n  lr: " + LATIN1 + b"\n")
    (d / "nul.yaml").write_bytes(b"seed: 0\n\x00\x01\x02: [\n")
    (d / "latin1_sweep.yaml").write_bytes(b"name: l\narms:\n  - name: " + LATIN1 + b"\n")
    (d / "scalar_sweep.yaml").write_text("42\n")
    # results.jsonl of every wrong shape
    good = json.dumps(GOOD_RESULT)
    results = {
        "res_latin1": None,
        "res_number": "42",
        "res_list": "[1, 2, 3]",
        "res_string": '"correct"',
        "res_null": "null",
        "res_meta_str": _with(GOOD_RESULT, metadata="not json"),
        "res_meta_num": _with(GOOD_RESULT, metadata=7),
        "res_meta_jsonlist": _with(GOOD_RESULT, metadata="[1, 2]"),
        "res_tag_list": _with(GOOD_RESULT, tag=["colors"]),
        "res_correct_str": _with(GOOD_RESULT, correct="yes"),
        "res_correct_2": _with(GOOD_RESULT, correct=2),
        "res_prompt_num": _with(GOOD_RESULT, prompt=3),
        "res_tag_null": _with(GOOD_RESULT, tag=None),
    }
    for name, line in results.items():
        if line is None:
            (d / f"{name}.jsonl").write_bytes(good.encode() + b"\n" + LATIN1 + b"\n")
        else:
            (d / f"{name}.jsonl").write_text(line + "\n")
    (d / "res_empty.jsonl").write_text("\n\n")
    # GenEval folders whose metadata.jsonl is of the wrong shape
    metas = {
        "ge_latin1": None,
        "ge_list": "[1, 2]",
        "ge_inc_str": _with(GOOD_SPEC, include="circle"),
        "ge_prompt_list": _with(GOOD_SPEC, prompt=["a", "b"]),
        "ge_class_list": _with(GOOD_SPEC, include=[{"class": ["circle"], "count": 1}]),
        "ge_count_str": _with(GOOD_SPEC, include=[{"class": "circle", "count": "one"}]),
        "ge_exclude_str": _with(GOOD_SPEC, exclude="square"),
        "ge_tag_num": _with(GOOD_SPEC, tag=5),
    }
    for name, line in metas.items():
        sub = d / name / "00000"
        (sub / "samples").mkdir(parents=True)
        (sub / "metadata.jsonl").write_bytes(LATIN1 + b"\n" if line is None else line.encode() + b"\n")
    (d / "ge_meta_folder" / "00000" / "metadata.jsonl").mkdir(parents=True)
    # caption files (real world)
    caps = {
        "caps_latin1.jsonl": b'{"caption": "a red circle"}\n' + b'{"caption": "' + LATIN1 + b'"}\n',
        "caps_number.jsonl": b"12\n",
        "caps_caplist.jsonl": b'{"caption": ["a", "red", "circle"]}\n',
        "caps_inc_str.jsonl": b'{"caption": "a circle", "include": "circle"}\n',
        "caps_class_list.jsonl": b'{"caption": "a circle", "include": [{"class": ["person"], "count": 1}]}\n',
        "caps_latin1.txt": LATIN1 + b"\n",
    }
    for name, data in caps.items():
        (d / name).write_bytes(data)
    # bundles whose files are not what they claim
    runs = pd.DataFrame({"run_id": ["r1"], "status": ["FINISHED"]})
    for name in ("bundle_text", "bundle_runs_dir", "bundle_manifest_latin1", "bundle_manifest_list",
                 "bundle_manifest_version", "bundle_history_garbage"):
        (d / name).mkdir()
        runs.to_parquet(d / name / "runs.parquet")
    (d / "bundle_text" / "runs.parquet").write_text("run_id,status\nr1,FINISHED\n")
    (d / "bundle_runs_dir" / "runs.parquet").unlink()
    (d / "bundle_runs_dir" / "runs.parquet").mkdir()
    (d / "bundle_manifest_latin1" / "bundle.json").write_bytes(b'{"version": 1, "x": "' + LATIN1 + b'"}')
    (d / "bundle_manifest_list" / "bundle.json").write_text("[1]")
    (d / "bundle_manifest_version" / "bundle.json").write_text('{"version": "one"}')
    (d / "bundle_history_garbage" / "metrics_history.parquet").write_bytes(b"PAR1 garbage")
    return d


def _caption_file(name: str) -> list[str]:
    """`lightgen data build` of the real world with ``{d}/<name>`` as its caption file."""
    return ["data", "build", "smoke", "--set", "world.kind=real", "--set", "world.teacher=x",
            "--set", f"world.caption_file={{d}}/{name}"]


FILE_CASES = [
    # (id, args with {d}, needle)
    ("config-yaml-not-utf8", ["train", "{d}/latin1.yaml"], "latin1.yaml:3: not UTF-8"),
    ("config-yaml-is-folder", ["train", "{d}/folder.yaml"], "folder.yaml is a folder"),
    ("config-yaml-control-bytes", ["train", "{d}/nul.yaml"], "nul.yaml"),
    ("sweep-yaml-not-utf8", ["sweep", "{d}/latin1_sweep.yaml", "--dry-run"], "latin1_sweep.yaml:3: not UTF-8"),
    ("sweep-yaml-is-folder", ["sweep", "{d}/folder_sweep.yaml", "--dry-run"], "folder_sweep.yaml is a folder"),
    ("sweep-yaml-scalar", ["sweep", "{d}/scalar_sweep.yaml", "--dry-run"], "must be a mapping, got int"),
    ("results-not-utf8", ["geneval", "summary", "{d}/res_latin1.jsonl"], "res_latin1.jsonl:2: not UTF-8"),
    ("results-line-number", ["geneval", "summary", "{d}/res_number.jsonl"], "res_number.jsonl:1: expected a JSON object, got int"),
    ("results-line-list", ["geneval", "summary", "{d}/res_list.jsonl"], "res_list.jsonl:1: expected a JSON object, got list"),
    ("results-line-string", ["geneval", "summary", "{d}/res_string.jsonl"], "res_string.jsonl:1: expected a JSON object"),
    ("results-line-null", ["geneval", "summary", "{d}/res_null.jsonl"], "res_null.jsonl:1: expected a JSON object"),
    ("results-metadata-not-json", ["geneval", "summary", "{d}/res_meta_str.jsonl"], "res_meta_str.jsonl:1: field 'metadata'"),
    ("results-metadata-number", ["geneval", "summary", "{d}/res_meta_num.jsonl"], "res_meta_num.jsonl:1: field 'metadata'"),
    ("results-metadata-json-list", ["geneval", "summary", "{d}/res_meta_jsonlist.jsonl"], "res_meta_jsonlist.jsonl:1: field 'metadata'"),
    ("results-tag-list", ["geneval", "summary", "{d}/res_tag_list.jsonl"], "res_tag_list.jsonl:1: field 'tag' must be str"),
    ("results-correct-string", ["geneval", "summary", "{d}/res_correct_str.jsonl"], "res_correct_str.jsonl:1: field 'correct'"),
    ("results-correct-two", ["geneval", "summary", "{d}/res_correct_2.jsonl"], "res_correct_2.jsonl:1: field 'correct'"),
    ("results-prompt-number", ["geneval", "summary", "{d}/res_prompt_num.jsonl"], "res_prompt_num.jsonl:1: field 'prompt'"),
    ("results-tag-null", ["geneval", "summary", "{d}/res_tag_null.jsonl"], "res_tag_null.jsonl:1"),
    ("results-empty", ["geneval", "summary", "{d}/res_empty.jsonl"], "res_empty.jsonl: no results"),
    ("results-is-folder", ["geneval", "summary", "{d}/folder.jsonl"], "folder.jsonl: is a folder"),
    ("geneval-import-line-list", ["geneval", "import", "{d}/res_list.jsonl", "--run", "x"], "res_list.jsonl:1"),
    ("metadata-not-utf8", ["geneval", "evaluate", "{d}/ge_latin1"], "metadata.jsonl:1: not UTF-8"),
    ("metadata-list", ["geneval", "evaluate", "{d}/ge_list"], "metadata.jsonl: expected a JSON object, got list"),
    ("metadata-include-string", ["geneval", "evaluate", "{d}/ge_inc_str"], "field 'include'"),
    ("metadata-prompt-list", ["geneval", "evaluate", "{d}/ge_prompt_list"], "field 'prompt' must be a string"),
    ("metadata-class-list", ["geneval", "evaluate", "{d}/ge_class_list"], "include[0].class must be a string"),
    ("metadata-count-string", ["geneval", "evaluate", "{d}/ge_count_str"], "include[0].count"),
    ("metadata-exclude-string", ["geneval", "evaluate", "{d}/ge_exclude_str"], "field 'exclude' must be a list"),
    ("metadata-tag-number", ["geneval", "evaluate", "{d}/ge_tag_num"], "field 'tag' must be a string"),
    ("metadata-is-folder", ["geneval", "evaluate", "{d}/ge_meta_folder"], "missing metadata.jsonl"),
    ("captions-not-utf8", _caption_file("caps_latin1.jsonl"), "caps_latin1.jsonl:2: not UTF-8"),
    ("captions-line-number", _caption_file("caps_number.jsonl"), "caps_number.jsonl:1: expected a JSON object"),
    ("captions-caption-list", _caption_file("caps_caplist.jsonl"), "caps_caplist.jsonl:1: no 'caption'"),
    ("captions-include-string", _caption_file("caps_inc_str.jsonl"), "caps_inc_str.jsonl:1: 'include' must be a list"),
    ("captions-class-list", _caption_file("caps_class_list.jsonl"), "caps_class_list.jsonl:1: include[0].class"),
    ("captions-txt-not-utf8", _caption_file("caps_latin1.txt"), "caps_latin1.txt:1: not UTF-8"),
    ("captions-is-folder", _caption_file("folder.jsonl"), "folder.jsonl is a folder"),
    ("bundle-runs-not-parquet", ["runs", "import", "{d}/bundle_text"], "runs.parquet is not a readable Parquet"),
    ("bundle-runs-is-folder", ["runs", "import", "{d}/bundle_runs_dir"], "missing runs.parquet"),
    ("bundle-manifest-not-utf8", ["runs", "import", "{d}/bundle_manifest_latin1"], "unreadable bundle.json"),
    ("bundle-manifest-list", ["runs", "import", "{d}/bundle_manifest_list"], "bundle.json is not a bundle manifest"),
    ("bundle-manifest-version-text", ["runs", "import", "{d}/bundle_manifest_version"], "bundle.json is not a bundle manifest"),
    ("bundle-history-garbage", ["runs", "import", "{d}/bundle_history_garbage"], "metrics_history.parquet is not a readable"),
    ("out-under-a-file", ["geneval", "prompts", "--out", "{d}/a_file/sub"], "a_file"),
    ("out-is-a-file", ["geneval", "prompts", "--out", "{d}/a_file"], "a_file"),
    ("train-root-under-file", ["train", "smoke", "--set", "tracking.root={d}/a_file/r"], "tracking.root"),
    ("train-checkpoint-dir-under-file", ["train", "smoke", "--checkpoint-dir", "{d}/a_file/ck"], "--checkpoint-dir"),
    ("dpo-root-under-file", ["dpo", "smoke", "--base", "x", "--set", "tracking.root={d}/a_file/r"], "tracking.root"),
    ("dpo-checkpoint-dir-is-file", ["dpo", "smoke", "--base", "x", "--checkpoint-dir", "{d}/a_file"], "is a regular file"),
    ("data-cache-under-file", ["data", "build", "smoke", "--out", "{d}/a_file/c"], "data.cache_dir"),
    ("geneval-sample-out-under-file", ["geneval", "sample", "--teacher", "--out", "{d}/a_file/o"], "--out"),
    ("runs-export-out-under-file", ["runs", "export", "--out", "{d}/a_file/bundle"], "--out"),
]


@pytest.mark.parametrize("case", FILE_CASES, ids=[c[0] for c in FILE_CASES])
def test_files_not_what_they_claim(case, d, tmp_path, monkeypatch):
    _refused_before_the_store(case, d, tmp_path, monkeypatch, "a run was started before the input was refused")


def _refused_before_the_store(case, d, tmp_path, monkeypatch, why: str) -> None:
    """The command exits 2 with the named file/field, no traceback, and the MLflow store never created."""
    _, args, needle = case
    code, out, exc = _invoke(_fill(args, d=str(d)), tmp_path, monkeypatch)
    _check(code, out, exc, needle)
    _assert_nothing_running(tmp_path / "mlflow.db")
    assert not (tmp_path / "mlflow.db").exists(), why


# --------------------------------------------------------------------------------------------------
# Values that validate as numbers but cannot work
# --------------------------------------------------------------------------------------------------
T = ["train", "smoke", "--set"]
VALUE_CASES = [
    # (id, args, needle, usage error from click?)
    ("lr-nan", T + ["train.lr=nan"], "train.lr", False),
    ("lr-inf", T + ["train.lr=.inf"], "train.lr", False),
    ("lr-minus-inf", T + ["train.lr=-.inf"], "train.lr", False),
    ("temperature-nan", T + ["eval.temperature=nan"], "eval.temperature", False),
    ("temperature-inf", T + ["eval.temperature=.inf"], "eval.temperature", False),
    ("cfg-inf", T + ["eval.cfg=.inf"], "eval.cfg", False),
    ("dpo-beta-inf", T + ["dpo.beta=.inf"], "dpo.beta", False),
    ("dpo-lr-nan", T + ["dpo.lr=nan"], "dpo.lr", False),
    ("grad-clip-nan", T + ["train.grad_clip=nan"], "train.grad_clip", False),
    ("weight-decay-inf", T + ["train.weight_decay=.inf"], "train.weight_decay", False),
    ("teacher-guidance-inf", T + ["world.teacher_guidance=.inf"], "world.teacher_guidance", False),
    ("mlp-ratio-nan", T + ["model.mlp_ratio=nan"], "model.mlp_ratio", False),
    ("auto-max-gib-inf", T + ["data.auto_max_gib=.inf"], "data.auto_max_gib", False),
    ("eval-checkpoint-nan", T + ["eval.checkpoints=[.nan]"], "eval.checkpoints", False),
    ("scale-1e30-float", T + ["data.scale=1.0e+30"], "data.scale", False),
    ("scale-over-bound", T + ["data.scale=10B"], "less than or equal to 1000000000", False),
    ("scale-1e30-text", T + ["data.scale=1e30"], "data.scale", False),
    ("toy-resolution-1024", T + ["data.resolution=1024"], "toy world renders at most 256 px", False),
    ("toy-resolution-512", T + ["data.resolution=512"], "data.resolution=512", False),
    ("too-many-tokens", T + ["data.resolution=256", "--set", "model.patch_size=1"], "image tokens; at most 4096", False),
    ("heldout-near-one", T + ["world.heldout_fraction=0.999"], "world.heldout_fraction", False),
    ("heldout-one", T + ["world.heldout_fraction=1"], "world.heldout_fraction", False),
    ("seed-negative", T + ["seed=-1"], "seed", False),
    ("data-seed-negative", T + ["data.seed=-1"], "data.seed", False),
    ("world-seed-negative", T + ["world.seed=-1"], "world.seed", False),
    ("tracking-root-empty", T + ["tracking.root="], "tracking.root", False),
    ("tracking-root-blank", T + ["tracking.root=   "], "tracking.root", False),
    ("bootstrap-huge", T + ["eval.bootstrap=2000000000"], "eval.bootstrap", False),
    ("sweep-lr-nan", ["sweep", "data-scale", "--dry-run", "--set", "train.lr=nan"], "train.lr", False),
    ("data-build-seed-negative", ["data", "build", "smoke", "--seed", "-1"], "--seed", True),
    ("data-show-seed-negative", ["data", "show", "smoke", "--seed", "-1"], "--seed", True),
    ("sample-seed-negative", ["sample", "--checkpoint", "x", "--prompt", "a", "--seed", "-1"], "--seed", True),
    ("geneval-sample-seed-negative", ["geneval", "sample", "--teacher", "--out", "o", "--seed", "-1"], "--seed", True),
    ("geneval-summary-seed-negative", ["geneval", "summary", "r.jsonl", "--seed", "-1"], "--seed", True),
    ("geneval-import-seed-negative", ["geneval", "import", "r.jsonl", "--run", "x", "--seed", "-1"], "--seed", True),
    ("geneval-import-step-negative", ["geneval", "import", "r.jsonl", "--run", "x", "--step", "-1"], "--step", True),
    ("geneval-summary-bootstrap-huge", ["geneval", "summary", "r.jsonl", "--bootstrap", "2000000000"], "--bootstrap", True),
    ("geneval-evaluate-bootstrap-huge", ["geneval", "evaluate", "f", "--bootstrap", "2000000000"], "--bootstrap", True),
    ("sweep-seeds-huge", ["sweep", "data-scale", "--dry-run", "--seeds", "1000000000"], "--seeds", True),
    ("sweep-workers-huge", ["sweep", "data-scale", "--workers", "100000"], "--workers", True),
    ("sweep-workers-set-huge", T + ["sweep.workers=100000"], "sweep.workers", False),
]


@pytest.mark.parametrize("case", VALUE_CASES, ids=[c[0] for c in VALUE_CASES])
def test_values_that_cannot_work(case, tmp_path, monkeypatch):
    _, args, needle, usage = case
    code, out, exc = _invoke(args, tmp_path, monkeypatch)
    _check(code, out, exc, needle, usage=usage)
    _assert_nothing_running(tmp_path / "mlflow.db")
    assert not (tmp_path / "mlruns").exists(), "work was started before the value was refused"


SCRIPT_VALUE_CASES = [
    ("tables-seed-negative", "make_tables", ["--seed", "-1"], "--seed"),
    ("tables-n-boot-huge", "make_tables", ["--n-boot", "2000000000"], "--n-boot must be in 10..100000"),
    ("tables-n-resamples-huge", "make_tables", ["--n-resamples", "1000000000"], "--n-resamples must be in"),
    ("curves-seed-negative", "make_curves", ["--seed", "-5"], "--seed"),
]


@pytest.mark.parametrize("case", SCRIPT_VALUE_CASES, ids=[c[0] for c in SCRIPT_VALUE_CASES])
def test_script_values_that_cannot_work(case, tmp_path, monkeypatch, capsys):
    _, script, argv, needle = case
    monkeypatch.chdir(tmp_path)
    mod = _load_script(script)
    with pytest.raises(SystemExit) as ei:  # argparse refuses before anything is read
        mod.run_main(mod.main, argv)
    err = capsys.readouterr().err
    assert ei.value.code == 2 and needle in err and "Traceback" not in err, err


# --------------------------------------------------------------------------------------------------
# Sweep definitions that are empty or contradictory: refused before any work
# --------------------------------------------------------------------------------------------------
def _arm(grid: str) -> str:
    return f"arms:\n  - name: a\n    {grid}\n"


SWEEP_CASES = [
    # (id, YAML text, needle)
    ("empty-grid-list", "name: s\n" + _arm("grid: {data.scale: []}"), "grid.data.scale is an empty list"),
    ("empty-zip-list", "name: s\n" + _arm("zip: {data.scale: [], train.iterations: []}"), "is an empty list"),
    ("no-arms", "name: s\narms: []\n", "needs at least one arm"),
    ("seed-axis", "name: s\n" + _arm("grid: {seed: [0, 1]}"), "'seed' cannot be in grid"),
    ("data-seed-axis", "name: s\n" + _arm("grid: {data.seed: [0, 1]}"), "'data.seed' cannot be in grid"),
    ("tracking-root-axis", "name: s\n" + _arm("grid: {tracking.root: [a, b]}"), "'tracking.root' cannot be in grid"),
    ("tracking-experiment-axis", "name: s\n" + _arm("grid: {tracking.experiment: [a, b]}"), "'tracking.experiment'"),
    ("sweep-workers-axis", "name: s\n" + _arm("grid: {sweep.workers: [1, 2]}"), "'sweep.workers' cannot be in grid"),
    ("preset-axis", "name: s\n" + _arm("grid: {preset: [smoke, lab]}"), "'preset' cannot be in grid"),
    ("seed-in-fixed", "name: s\n" + _arm("fixed: {seed: 3}"), "'seed' cannot be in fixed"),
    ("seed-in-zip", "name: s\n" + _arm("zip: {seed: [0, 1], data.scale: [100k, 200k]}"), "'seed' cannot be in zip"),
    ("seed-in-base", "name: s\nbase: {seed: 3}\n" + _arm("grid: {data.scale: [100k]}"), "base: 'seed' cannot be set"),
    ("seed-in-preset-set", "name: s\npresets: {smoke: {set: {data.seed: 1}}}\n" + _arm("grid: {data.scale: [100k]}"),
     "presets.smoke.set: 'data.seed'"),
    ("tpe-no-search", "name: s\nsampler: tpe\nbudget: 4\n", "needs a non-empty 'search' space"),
    ("tpe-no-budget", "name: s\nsampler: tpe\nsearch: {train.lr: {low: 0.0001, high: 0.01}}\n", "needs 'budget' >= 1"),
    ("tpe-search-seed", "name: s\nsampler: tpe\nbudget: 2\nsearch: {seed: {low: 0, high: 9, type: int}}\n",
     "search: 'seed' cannot be searched"),
    ("tpe-low-above-high", "name: s\nsampler: tpe\nbudget: 2\nsearch: {train.lr: {low: 0.1, high: 0.01}}\n",
     "must be below high"),
    ("tpe-log-nonpositive", "name: s\nsampler: tpe\nbudget: 2\nsearch: {train.lr: {low: 0, high: 0.1, log: true}}\n",
     "log=true needs low > 0"),
    ("tpe-search-nan", "name: s\nsampler: tpe\nbudget: 2\nsearch: {train.lr: {low: .nan, high: 0.1}}\n", "search.train.lr.low"),
    ("grid-with-search", "name: s\nsearch: {train.lr: {low: 0.001, high: 0.01}}\n" + _arm("grid: {data.scale: [100k]}"),
     "only apply to sampler 'tpe'"),
    ("grid-with-budget", "name: s\nbudget: 5\n" + _arm("grid: {data.scale: [100k]}"), "only apply to sampler 'tpe'"),
    ("objective-typo", "name: s\nobjective: geneval/overal\n" + _arm("grid: {data.scale: [100k]}"),
     "objective 'geneval/overal' is not a metric a trial logs"),
    ("objective-not-logged", "name: s\nobjective: train/loss\n" + _arm("grid: {data.scale: [100k]}"), "objective 'train/loss'"),
    ("zip-unequal", "name: s\n" + _arm("zip: {data.scale: [100k, 200k], train.iterations: [10]}"), "equal lengths"),
    ("key-in-grid-and-zip", "name: s\narms:\n  - name: a\n    grid: {data.scale: [100k]}\n    zip: {data.scale: [200k]}\n",
     "data.scale in both grid and zip"),
    ("key-in-grid-and-fixed", "name: s\narms:\n  - name: a\n    grid: {data.scale: [100k]}\n    fixed: {data.scale: 200k}\n",
     "data.scale in both grid and fixed"),
    ("preset-arms-unknown", "name: s\npresets: {smoke: {arms: [nope]}}\n" + _arm("grid: {data.scale: [100k]}"),
     "presets.smoke.arms names unknown arm(s) nope"),
    ("preset-arms-empty", "name: s\npresets: {smoke: {arms: []}}\n" + _arm("grid: {data.scale: [100k]}"),
     "presets.smoke.arms is empty"),
    ("name-with-quote", "name: \"it's\"\n" + _arm("grid: {data.scale: [100k]}"), "name: must be letters"),
    ("duplicate-arms", "name: s\narms:\n  - name: a\n  - name: a\n", "arm names must be unique"),
    ("seeds-huge", "name: s\nseeds: 1000000000\n" + _arm("grid: {data.scale: [100k]}"), "seeds: Input should be less"),
    ("tpe-budget-huge", "name: s\nsampler: tpe\nbudget: 1000000000\nsearch: {train.lr: {low: 0.001, high: 0.01}}\n",
     "budget: Input should be less"),
]


@pytest.mark.parametrize("case", SWEEP_CASES, ids=[c[0] for c in SWEEP_CASES])
@pytest.mark.parametrize("mode", ["dry-run", "launch"])
def test_sweep_definitions_refused_before_work(case, mode, tmp_path, monkeypatch):
    _, text, needle = case
    path = tmp_path / "s.yaml"
    path.write_text(text)
    args = ["sweep", str(path)] + (["--dry-run"] if mode == "dry-run" else ["--workers", "1"])
    code, out, exc = _invoke(args, tmp_path, monkeypatch)
    _check(code, out, exc, needle)
    assert "s.yaml" in out  # the file is named
    # refused before any work: no store, no study, no dataset
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


# --------------------------------------------------------------------------------------------------
# Bundles from elsewhere: `lightgen runs import` validates the whole bundle, then writes
# --------------------------------------------------------------------------------------------------
def _bundle(folder: Path, runs: dict | None = None, hist: dict | None = None) -> Path:
    """A valid one-run bundle, with columns of the runs or history table replaced."""
    from lightgen.analysis.bundle import write_bundle

    r = {"run_id": ["src1"], "experiment": ["lightgen/data-scale"], "status": ["FINISHED"],
         "start_time": [1_700_000_000_000], "end_time": [1_700_000_100_000], "params.data.scale": ["100k"],
         "tags.lightgen.sweep": ["data-scale"], "tags.optuna.study": ["st1"], "tags.lightgen.kind": ["trial"],
         "metrics.geneval/overall": [0.5]}
    h = {"run_id": ["src1", "src1"], "key": ["geneval/overall", "geneval/overall"], "step": [10, 20],
         "value": [0.4, 0.5], "timestamp": [1_700_000_050_000, 1_700_000_060_000]}
    r.update(runs or {})
    h.update(hist or {})
    write_bundle(pd.DataFrame({k: v for k, v in r.items() if v is not None}),
                 pd.DataFrame({k: v for k, v in h.items() if v is not None}), None, folder)
    return folder


NAN = float("nan")
IMPORT_CASES = [
    # (id, runs columns, history columns, needle)
    ("status-bogus", {"status": ["BOGUS"]}, None, "status 'BOGUS' is not one of"),
    ("metric-not-number", {"metrics.geneval/overall": ["abc"]}, None, "metrics.geneval/overall is not a number"),
    ("history-value-not-number", None, {"value": ["x", "y"]}, "value is not a number"),
    ("history-step-nan", None, {"step": [10.0, NAN]}, "step must be a whole number"),
    ("history-step-fraction", None, {"step": [10.0, 1.5]}, "step must be a whole number"),
    ("history-key-empty", None, {"key": ["", "geneval/overall"]}, "metric key must be a non-empty string"),
    ("history-key-invalid", None, {"key": ["a*b", "a*b"]}, "Names may only contain"),
    ("history-timestamp-nan", None, {"timestamp": [NAN, 1.0]}, "timestamp must be whole milliseconds"),
    ("history-unknown-run", None, {"run_id": ["src1", "other"]}, "run_id 'other' is not in runs.parquet"),
    ("param-key-empty", {"params.": ["x"]}, None, "column 'params.' has an empty param key"),
    ("tag-key-empty", {"tags.": ["x"]}, None, "column 'tags.' has an empty tag key"),
    ("metric-key-empty", {"metrics.": [1.0]}, None, "column 'metrics.' has an empty metric key"),
    ("param-key-escapes", {"params.../x": ["x"]}, None, "params.../x"),
    ("experiment-empty", {"experiment": [""]}, None, "experiment name must be a non-empty string"),
    ("experiment-blank", {"experiment": ["   "]}, None, "experiment name must be a non-empty string"),
    ("run-id-empty", {"run_id": [""]}, {"run_id": ["", ""]}, "run_id must be a non-empty string"),
    ("start-time-garbage", {"start_time": ["yesterday-ish"]}, None, "start_time 'yesterday-ish' is not a time"),
    ("tag-both-quotes", {"tags.optuna.study": ["a'b\"c"]}, None, "tags.optuna.study holds both"),
    ("param-too-long", {"params.data.scale": ["x" * 7000]}, None, "params.data.scale is longer than 6000"),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """One target store for every refused import (each case asserts it stays empty)."""
    from mlflow.tracking import MlflowClient

    db = tmp_path_factory.mktemp("store") / "target.db"
    MlflowClient(f"sqlite:///{db}").search_experiments()  # create the schema once
    return db


@pytest.mark.parametrize("case", IMPORT_CASES, ids=[c[0] for c in IMPORT_CASES])
def test_runs_import_validates_whole_bundle(case, store, tmp_path, monkeypatch):
    _, runs, hist, needle = case
    bundle = _bundle(tmp_path / "bundle", runs, hist)
    before = _runs_in(store)
    code, out, exc = _invoke(["runs", "import", str(bundle), "--tracking-uri", f"sqlite:///{store}"],
                             tmp_path, monkeypatch)
    _check(code, out, exc, needle)
    assert "bundle" in out and str(bundle) in _norm(out)  # the bundle is named
    assert _runs_in(store) == before == [], "a refused import wrote to the store"


def test_runs_import_all_bundles_checked_before_any_is_written(store, tmp_path, monkeypatch):
    good = _bundle(tmp_path / "good")
    bad = _bundle(tmp_path / "bad", {"status": ["BOGUS"]})
    code, out, exc = _invoke(["runs", "import", str(good), str(bad), "--tracking-uri", f"sqlite:///{store}"],
                             tmp_path, monkeypatch)
    _check(code, out, exc, "status 'BOGUS'")
    assert _runs_in(store) == []


def test_runs_import_quotes_in_filter_values(tmp_path, monkeypatch):
    """A quote in a run id or a study tag used to break the MLflow filter string; now it imports, once."""
    db = tmp_path / "dst.db"
    bundle = _bundle(tmp_path / "q", {"run_id": ["it's-a-run"], "tags.optuna.study": ["st'1"],
                                      "tags.lightgen.job": ["j'1"]}, {"run_id": ["it's-a-run"] * 2})
    args = ["runs", "import", str(bundle), "--tracking-uri", f"sqlite:///{db}"]
    code, out, exc = _invoke(args, tmp_path, monkeypatch)
    assert code == 0, (out, exc)
    assert "imported 1 runs" in out
    code, out, exc = _invoke(args, tmp_path, monkeypatch)
    assert code == 0 and "imported 0 runs, skipped 1" in out, (out, exc)
    assert [s for _, s in _runs_in(db)] == ["FINISHED"]


def test_runs_import_rolls_back_a_failed_write(tmp_path, monkeypatch):
    """Should the store fail mid-import (after validation), the runs created so far are removed."""
    from mlflow.tracking import MlflowClient

    import lightgen.runs as runs_mod

    db = tmp_path / "dst.db"
    bundle = _bundle(tmp_path / "b")
    real = MlflowClient.log_batch

    def broken(self, run_id, metrics=(), params=(), tags=(), **kw):
        if metrics:
            raise OSError(28, "No space left on device")
        return real(self, run_id, metrics=metrics, params=params, tags=tags, **kw)

    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    with pytest.raises(OSError):
        runs_mod.import_runs(bundle, f"sqlite:///{db}")
    assert _runs_in(db) == []


# --------------------------------------------------------------------------------------------------
# Storage
# --------------------------------------------------------------------------------------------------
STORAGE_CASES = [
    # (id, args, needle)
    ("journal-under-file-status", ["sweep", "data-scale", "--status", "--storage", "journal:{d}/a_file/j.log"], "a_file is a regular file"),
    ("journal-under-file-launch", ["sweep", "data-scale", "--storage", "journal:{d}/a_file/j.log"], "--storage"),
    ("journal-is-folder", ["sweep", "data-scale", "--status", "--storage", "journal:{d}/folder.jsonl"], "is a folder"),
    ("journal-empty-path", ["sweep", "data-scale", "--status", "--storage", "journal:"], "needs a file path"),
    ("sqlite-is-folder", ["sweep", "data-scale", "--status", "--storage", "sqlite:///{d}/folder.jsonl"], "folder.jsonl is a folder"),
    ("sqlite-under-file", ["sweep", "data-scale", "--status", "--storage", "sqlite:///{d}/a_file/o.db"], "a_file is a regular file"),
    ("sweep-storage-under-file", ["sweep", "data-scale", "--status", "--set", "sweep.storage=journal:{d}/a_file/j"], "sweep.storage"),
    ("root-under-file-status", ["sweep", "data-scale", "--status", "--set", "tracking.root={d}/a_file/r"], "tracking.root"),
    ("storage-unknown-scheme", ["sweep", "data-scale", "--status", "--storage", "nosuch://x/y"], "unreachable or invalid"),
]


def test_sweep_objective_no_trial_logs_with_eval_off(tmp_path, monkeypatch):
    """A GenEval objective with eval.enabled=false: no trial would log it, so the sweep is refused."""
    code, out, exc = _invoke(["sweep", "data-scale", "--set", "eval.enabled=false", "--workers", "1"], tmp_path, monkeypatch)
    _check(code, out, exc, "objective 'geneval/overall' is a GenEval metric but eval.enabled is false")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("case", STORAGE_CASES, ids=[c[0] for c in STORAGE_CASES])
def test_storage(case, d, tmp_path, monkeypatch):
    _refused_before_the_store(case, d, tmp_path, monkeypatch,
                              "the MLflow store was touched before the storage was checked")


# --------------------------------------------------------------------------------------------------
# Symlinks and manifests
# --------------------------------------------------------------------------------------------------
def _manifest_folder(tmp_path: Path, content: bytes, *, link: str | None = None) -> Path:
    from lightgen.data.store import MANIFEST

    folder = tmp_path / "ds" / "abc"
    folder.mkdir(parents=True)
    if link == "outside":
        (tmp_path / "elsewhere.json").write_bytes(content)
        (folder / MANIFEST).symlink_to(tmp_path / "elsewhere.json")
    elif link == "inside":
        (folder / "real.json").write_bytes(content)
        (folder / MANIFEST).symlink_to(folder / "real.json")
    else:
        (folder / MANIFEST).write_bytes(content)
    return folder


MANIFEST_CASES = [
    ("symlink-out-of-folder", b'{"shards": []}', "outside", "refusing dataset manifest"),
    ("not-utf8", b'{"shards": "' + LATIN1 + b'"}', None, "is unreadable"),
    ("not-an-object", b"[1, 2]", None, "is not a manifest"),
    ("shards-not-a-list", b'{"shards": 3}', None, "is not a manifest"),
]


@pytest.mark.parametrize("case", MANIFEST_CASES, ids=[c[0] for c in MANIFEST_CASES])
def test_manifest_refused(case, tmp_path):
    from lightgen.cliutil import UserError
    from lightgen.data.store import MANIFEST, read_manifest

    _, content, link, needle = case
    folder = _manifest_folder(tmp_path, content, link=link)
    with pytest.raises(UserError, match=needle) as ei:
        read_manifest(folder)
    assert str(folder / MANIFEST) in str(ei.value)


def test_manifest_symlink_inside_folder_is_accepted(tmp_path):
    from lightgen.data.store import read_manifest

    folder = _manifest_folder(tmp_path, b'{"shards": [], "size": 0}', link="inside")
    assert read_manifest(folder) == {"shards": [], "size": 0}


# --------------------------------------------------------------------------------------------------
# The error boundary itself: every entry point, and bugs still traceback
# --------------------------------------------------------------------------------------------------
def _errors():
    import pyarrow as pa
    import yaml
    from pydantic import BaseModel

    class M(BaseModel):
        x: int

    try:
        M(x="nope")
    except Exception as e:  # noqa: BLE001
        verr = e
    try:
        yaml.safe_load("a: [")
    except yaml.YAMLError as e:
        yerr = e
    try:
        json.loads("{x")
    except json.JSONDecodeError as e:
        jerr = e
    try:
        b"\xe9".decode("utf-8")
    except UnicodeDecodeError as e:
        uerr = e
    return [
        ("file-not-found", FileNotFoundError(2, "No such file", "/x/f.yaml"), "file not found: /x/f.yaml"),
        ("is-a-folder", IsADirectoryError(21, "Is a directory", "/x/d"), "/x/d: is a folder"),
        ("under-a-file", NotADirectoryError(20, "Not a directory", "/x/f/g"), "/x/f/g: part of this path is a regular file"),
        ("exists", FileExistsError(17, "File exists", "/x/f"), "/x/f: already exists"),
        ("permission", PermissionError(13, "Permission denied", "/x/p"), "permission denied: /x/p"),
        ("disk-full", OSError(28, "No space left on device", "/x/big"), "/x/big: No space left on device"),
        ("connection", ConnectionError("store http://h unreachable"), "unreachable"),
        ("not-utf8", uerr, "not UTF-8 text"),
        ("json", jerr, "not valid JSON"),
        ("yaml", yerr, "malformed YAML"),
        ("arrow", pa.ArrowInvalid("Parquet magic bytes not found"), "not a readable Parquet"),
        ("schema", verr, "x: Input should be a valid integer"),
        ("bug-key", KeyError("x"), None),
        ("bug-type", TypeError("unsupported operand"), None),
        ("bug-runtime", RuntimeError("oops"), None),
        ("bug-value", ValueError("internal"), None),
    ]


@pytest.mark.parametrize("case", _errors(), ids=[c[0] for c in _errors()])
def test_describe_error_sorts_expected_from_bugs(case):
    from lightgen.cliutil import describe_error, one_line

    _, exc, needle = case
    msg = describe_error(exc)
    if needle is None:
        assert msg is None
    else:
        assert msg is not None and needle in msg and "\n" not in one_line(msg), msg


def test_a_bug_keeps_its_traceback_and_exit_1():
    import typer
    from typer.testing import CliRunner

    from lightgen.cliutil import run_guarded, user_errors

    app = typer.Typer()

    @app.command()
    @user_errors
    def boom() -> None:
        raise KeyError("a bug")

    res = CliRunner().invoke(app, [])
    assert res.exit_code == 1 and isinstance(res.exception, KeyError)
    with pytest.raises(KeyError):
        run_guarded(lambda: {}["a bug"])


def test_sweep_worker_boundary(d, capsys):
    from lightgen.cliutil import run_guarded
    from lightgen.sweep import _worker_main

    argv = ["worker", str(d / "latin1_sweep.yaml"), "--preset", "smoke", "--storage", "journal:j",
            "--tracking-uri", "sqlite:///x.db", "--parent-run-id", "p"]
    assert run_guarded(_worker_main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latin1_sweep.yaml:3: not UTF-8" in err[0], err


@pytest.mark.parametrize("script", ["make_tables", "make_curves"])
def test_analysis_script_boundary(script, d, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    mod = _load_script(script)
    assert mod.run_main(mod.main, ["--from", str(d / "bundle_text")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs.parquet is not a readable Parquet" in err[0], err


def test_bench_boundary(tmp_path, monkeypatch):
    code, out, exc = _invoke(["bench", "data", "--n", "1", "--resolutions", "5000"], tmp_path, monkeypatch)
    _check(code, out, exc, "resolution must be an integer in 16..1024")


def test_main_boundary_in_a_real_process(d, tmp_path):
    """`python -m lightgen`, the console entry point: one line on stderr, exit 2, no traceback."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    env.pop("MLFLOW_TRACKING_URI", None)
    res = subprocess.run([sys.executable, "-m", "lightgen", "sweep", str(d / "latin1_sweep.yaml"), "--dry-run"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "latin1_sweep.yaml:3: not UTF-8" in lines[0], res.stderr


def test_corpus_size():
    """The issue's bar: >= 120 distinct bad inputs with the first corpus (tests/test_bad_input.py: 42)."""
    n = (len(FILE_CASES) + len(VALUE_CASES) + len(SCRIPT_VALUE_CASES) + len(SWEEP_CASES) + len(IMPORT_CASES)
         + len(STORAGE_CASES) + len(MANIFEST_CASES))
    assert n + 42 >= 120
