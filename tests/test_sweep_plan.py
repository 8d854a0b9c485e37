"""The plan file: the launcher plans once and writes ``<study>.plan.json``; workers read it instead of
planning again. A plan read back runs the same jobs with the same configs as the plan that was written."""

from __future__ import annotations

import json

import pytest

from lightgen.config import load_config
from lightgen.errors import UserError
from lightgen.sweep import available_sweeps, load_sweep, plan_sweep, read_plan, write_plan


@pytest.mark.parametrize("name", available_sweeps())
def test_plan_file_round_trip_runs_the_same_jobs(name, tmp_path):
    plan = plan_sweep(load_sweep(name), "smoke")
    back = read_plan(write_plan(plan, tmp_path / "p.plan.json"))
    assert back.study_name == plan.study_name and back.sweep == plan.sweep and back.seeds == plan.seeds
    assert [j.key for j in back.jobs] == [j.key for j in plan.jobs]
    assert back.base_config == plan.base_config and back.base_point_id == plan.base_point_id
    for job, again in zip(plan.jobs, back.jobs):
        want = load_config(plan.preset, job.overrides(plan))  # what planning from the sweep file gives
        assert plan.job_config(job) == want
        assert back.job_config(again) == want
        assert again.point.label == job.point.label and again.point.overrides == job.point.overrides


def test_plan_file_keeps_no_password_and_the_same_study(tmp_path):
    secret = "s3cr3t-pw"
    plan = plan_sweep(load_sweep("data-scale"), "smoke", {"sweep.storage": f"postgresql://bob:{secret}@db/optuna"})
    path = write_plan(plan, tmp_path / "p.plan.json")
    assert secret not in path.read_text()
    assert read_plan(path).study_name == plan.study_name


def test_a_damaged_or_foreign_plan_file_is_a_user_error(tmp_path):
    bad = tmp_path / "bad.plan.json"
    bad.write_text(json.dumps({"version": 99}))
    with pytest.raises(UserError, match="bad.plan.json: not a version-1 sweep plan"):
        read_plan(bad)
    bad.write_text(json.dumps({"version": 1, "sweep": {"name": "x"}}))
    with pytest.raises(UserError, match="bad.plan.json"):
        read_plan(bad)


def test_dry_run_counts_the_datasets_the_data_layer_builds():
    from lightgen.sweep import dry_run
    from lightgen.world.captions import Knobs

    # caption-diversity at lab: several arms resolve to the same knobs (e.g. caption_diversity=1.0 and
    # coverage=1.0), and the data layer builds those once; the dry run must list each dataset once
    plan = plan_sweep(load_sweep("caption-diversity"), "lab")
    distinct = set()
    for job in plan.jobs:
        cfg = plan.job_config(job)
        k = Knobs.from_config(cfg.data)
        distinct.add((k.coverage, k.variety, k.density, cfg.data.actual_size, cfg.data.seed, cfg.data.resolution,
                      cfg.world.model_dump_json()))
    n_configs = len({json.dumps(plan.job_config(j).data.model_dump(mode="json"), sort_keys=True) for j in plan.jobs})
    info = dry_run(plan)
    assert len(info["datasets"]) == len(distinct) < n_configs
