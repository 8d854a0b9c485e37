"""Property-style: every reader of JSONL, YAML and Parquet input, fed randomly corrupted versions of a
valid file, either reads it or raises the studio's own error (``UserError``/``ConfigError``) naming the
file — never a bare ``UnicodeDecodeError``, ``KeyError``, ``TypeError``, ``AttributeError``… (which
would reach the user as a traceback). Seeded, so a failure reproduces; no extra dependency.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.fault

N = 40  # corrupted variants per reader


def _png(path: Path) -> None:
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(path)


_JUNK = [b"\xff", b"\xe9", b"\x00", b"{", b"}", b"[", b"]", b'"', b",", b":", b"\n", b"null", b"42", b"-", b"'",
         b"!!python/object:os.system", b"&a", b"*a", b"\t", b"%"]
_VALUES = [None, 0, -1, 1.5, float("inf"), "", "x", [], [1, "a"], {}, {"a": [1]}, True, "\u00e9"]


def _corrupt_bytes(data: bytes, rng: random.Random) -> bytes:
    """One random byte-level corruption: truncate, flip, insert junk, delete a span, swap lines."""
    b = bytearray(data)
    op = rng.randrange(5)
    if op == 0 and b:
        return bytes(b[: rng.randrange(len(b))])
    if op == 1 and b:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
        return bytes(b)
    if op == 2:
        i = rng.randrange(len(b) + 1)
        return bytes(b[:i] + rng.choice(_JUNK) + b[i:])
    if op == 3 and b:
        i = rng.randrange(len(b))
        return bytes(b[:i] + b[i + rng.randint(1, 20):])
    lines = bytes(b).split(b"\n")
    rng.shuffle(lines)
    return b"\n".join(lines)


def _corrupt_json_obj(obj, rng: random.Random):
    """Valid JSON of the wrong shape: a field removed, retyped, or the whole object replaced."""
    obj = json.loads(json.dumps(obj))
    op = rng.randrange(3)
    if op == 0 or not isinstance(obj, dict) or not obj:
        return rng.choice(_VALUES)
    key = rng.choice(sorted(obj))
    if op == 1:
        del obj[key]
    else:
        obj[key] = rng.choice(_VALUES)
    return obj


def _variants(valid_lines: list[dict], rng: random.Random) -> list[bytes]:
    text = ("\n".join(json.dumps(o) for o in valid_lines) + "\n").encode()
    out = []
    for i in range(N):
        if i % 2:
            out.append(_corrupt_bytes(text, rng))
        else:
            lines = [json.dumps(_corrupt_json_obj(o, rng)) if rng.random() < 0.5 else json.dumps(o) for o in valid_lines]
            out.append(("\n".join(lines) + "\n").encode())
    return out


def _assert_reader_holds(reader: Callable[[Path], object], path: Path, variants: list[bytes]) -> int:
    from lightgen.cliutil import UserError
    from lightgen.config import ConfigError

    refused = 0
    for k, data in enumerate(variants):
        path.write_bytes(data)
        try:
            reader(path)
        except (UserError, ConfigError) as e:
            refused += 1
            assert path.name in str(e), f"variant {k}: message does not name the file: {e}\n{data[:300]!r}"
            assert "\n" not in str(e).strip() or str(e).startswith("invalid"), str(e)
        except Exception as e:  # noqa: BLE001 - the property: nothing else escapes
            pytest.fail(f"variant {k}: {type(e).__name__}: {e}\n{data[:300]!r}")
    return refused


RESULT = {"filename": "00000/samples/0000.png", "tag": "colors", "prompt": "a photo of a red circle", "correct": True,
          "reason": "", "details": {}, "metadata": {"tag": "colors", "prompt": "a photo of a red circle",
                                                    "include": [{"class": "circle", "count": 1, "color": "red"}]}}
SPEC = {"tag": "two_object", "prompt": "a photo of a circle and a square",
        "include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1, "position": ["left of", 0]}]}


def _results_reader(path: Path):
    from lightgen.geneval.summary import read_results, summarize

    summarize(read_results(path), bootstrap=10)  # what `geneval summary` does with the rows


def _metadata_reader(path: Path):
    from lightgen.geneval.prompts import read_metadata

    read_metadata(path)


def _captions_reader(path: Path):
    from lightgen.data.real import read_captions

    read_captions(path)


JSONL_READERS = [
    ("results", "results.jsonl", [RESULT, {**RESULT, "correct": False}], _results_reader),
    ("metadata", "evaluation_metadata.jsonl", [SPEC, SPEC], _metadata_reader),
    ("captions", "captions.jsonl", [{"caption": "a red circle"},
                                    {"caption": "a dog", "include": [{"class": "dog", "count": 1, "color": "red"}]}],
     _captions_reader),
]


@pytest.mark.parametrize("name,filename,valid,reader", JSONL_READERS, ids=[r[0] for r in JSONL_READERS])
def test_jsonl_readers_survive_corruption(name, filename, valid, reader, tmp_path):
    path = tmp_path / filename
    path.write_text("".join(json.dumps(o) + "\n" for o in valid))
    reader(path)  # the valid file reads
    refused = _assert_reader_holds(reader, path, _variants(valid, random.Random(name)))
    assert refused > N // 4, "the corruptions were too mild to test anything"


def test_dpo_pairs_reader_survives_corruption(tmp_path):
    from lightgen.train.dpo import load_pairs

    for n in ("w.png", "l.png"):
        _png(tmp_path / n)
    valid = [{"pos_image_path": "w.png", "neg_image_path": "l.png", "caption": "a red circle"}] * 2
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in valid))
    load_pairs(path)
    refused = _assert_reader_holds(load_pairs, path, _variants(valid, random.Random("pairs")))
    assert refused > N // 4


def test_geneval_folder_metadata_survives_corruption(tmp_path):
    from lightgen.geneval.evaluate import read_folder

    sub = tmp_path / "ge" / "00000"
    (sub / "samples").mkdir(parents=True)
    _png(sub / "samples" / "0000.png")
    meta = sub / "metadata.jsonl"
    meta.write_text(json.dumps(SPEC) + "\n")
    read_folder(tmp_path / "ge")
    refused = _assert_reader_holds(lambda p: read_folder(tmp_path / "ge"), meta, _variants([SPEC], random.Random("ge")))
    assert refused > N // 4


def _yaml_variants(text: str, rng: random.Random) -> list[bytes]:
    import yaml

    data = yaml.safe_load(text)
    out = []
    for i in range(N):
        if i % 2:
            out.append(_corrupt_bytes(text.encode(), rng))
        else:
            d = json.loads(json.dumps(data))
            section = rng.choice(sorted(d))
            if isinstance(d[section], dict) and d[section] and rng.random() < 0.7:
                key = rng.choice(sorted(d[section]))
                d[section][key] = rng.choice(_VALUES)
            else:
                d[section] = rng.choice(_VALUES)
            out.append(yaml.safe_dump(d, allow_unicode=True).encode())
    return out


def test_config_yaml_reader_survives_corruption(tmp_path):
    from lightgen.config import PRESET_DIR, load_config

    text = (PRESET_DIR / "smoke.yaml").read_text()
    path = tmp_path / "exp.yaml"
    refused = _assert_reader_holds(load_config, path, _yaml_variants(text, random.Random("config")))
    assert refused > N // 4


def test_sweep_yaml_reader_survives_corruption(tmp_path):
    from lightgen.sweep import SWEEP_DIR, load_sweep, plan_sweep

    text = (SWEEP_DIR / "data-scale.yaml").read_text()
    path = tmp_path / "sw.yaml"
    refused = _assert_reader_holds(lambda p: plan_sweep(load_sweep(p), "smoke"), path,
                                   _yaml_variants(text, random.Random("sweep")))
    assert refused > N // 4


def test_bundle_parquet_reader_survives_corruption(tmp_path):
    from lightgen.analysis.bundle import read_bundle, write_bundle
    from lightgen.runs import validate_bundle

    runs = pd.DataFrame({"run_id": ["a", "b"], "status": ["FINISHED", "FAILED"], "metrics.geneval/overall": [0.1, 0.2],
                         "params.data.scale": ["100k", "200k"]})
    hist = pd.DataFrame({"run_id": ["a"], "key": ["geneval/overall"], "step": [1], "value": [0.1], "timestamp": [5]})
    folder = write_bundle(runs, hist, None, tmp_path / "b")
    rng = random.Random("parquet")
    for file in ("runs.parquet", "metrics_history.parquet", "results.parquet"):
        valid = (folder / file).read_bytes()
        variants = [_corrupt_bytes(valid, rng) for _ in range(N // 2)]
        _assert_reader_holds(lambda p: validate_bundle(folder, *read_bundle(folder)), folder / file, variants)
        (folder / file).write_bytes(valid)
    # valid Parquet of the wrong shape: columns retyped
    for k in range(N // 2):
        bad = runs.copy()
        col = rng.choice(list(bad.columns))
        bad[col] = [rng.choice(_VALUES[:9]) for _ in range(len(bad))]
        buf = io.BytesIO()
        try:
            bad.astype(str if rng.random() < 0.5 else object).to_parquet(buf)
        except Exception:  # noqa: BLE001 - pyarrow cannot store this mix; not a reader's problem
            continue
        _assert_reader_holds(lambda p: validate_bundle(folder, *read_bundle(folder)), folder / "runs.parquet",
                             [buf.getvalue()])


def test_dataset_manifest_reader_survives_corruption(tmp_path):
    from lightgen.data.store import MANIFEST, read_manifest

    folder = tmp_path / "ds"
    folder.mkdir()
    valid = {"shards": [{"file": "s0.safetensors", "bytes": 10, "sha256": "0", "start": 0, "count": 4}], "size": 4}
    text = json.dumps(valid).encode()
    rng = random.Random("manifest")
    variants = [_corrupt_bytes(text, rng) for _ in range(N)]
    _assert_reader_holds(lambda p: read_manifest(folder), folder / MANIFEST, variants)
