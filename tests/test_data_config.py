"""The data/world config fields this layer added: defaults and rejections naming the key."""

from __future__ import annotations

import pytest

from lightgen.config import ConfigError, load_config
from lightgen.world.captions import Knobs


def test_defaults():
    cfg = load_config("smoke")
    assert cfg.data.cache_dtype == "bf16" and cfg.data.keep_images is None and cfg.data.n_clusters is None
    assert cfg.data.auto_max_gib == 4.0
    assert cfg.world.teacher_batch_size == 8 and cfg.world.teacher_device == "auto"


@pytest.mark.parametrize("override,key", [
    ("data.cache_dtype=fp8", "data.cache_dtype"), ("data.n_clusters=0", "data.n_clusters"),
    ("data.auto_max_gib=-1", "data.auto_max_gib"), ("world.teacher_batch_size=0", "world.teacher_batch_size"),
])
def test_rejections_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("smoke", [override])


def test_caption_diversity_maps_onto_knobs_and_overrides():
    assert Knobs.from_config(load_config("smoke", ["data.caption_diversity=0"]).data) == Knobs(0.05, 0.0, 0.0)
    assert Knobs.from_config(load_config("smoke", ["data.caption_diversity=1"]).data) == Knobs(1.0, 1.0, 1.0)
    k = Knobs.from_config(load_config("smoke", ["data.caption_diversity=0.5", "data.variety=0.9"]).data)
    assert k == Knobs(0.05 + 0.95 * 0.5, 0.9, 0.5)
