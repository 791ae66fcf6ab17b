"""The resume guard's field comparison, checked by hand-written configs."""

import json

import pytest

from stackdistill import resume

OLD = {
    "student": {"hidden_size": 32, "num_layers": 12},
    "log_every": 10,
    "seed": 0,
    "distill": {"teacher_layers": (4, 8, 12)},
}


def test_flatten_and_diff_name_every_changed_leaf():
    new = {
        "student": {"hidden_size": 48, "num_layers": 12},
        "log_every": 5,
        "seed": 0,
        "distill": {"teacher_layers": [4, 8, 12]},
        "extra": 1,
        "added_unset": None,  # a field added since, left at None: not a change
    }
    assert resume.flatten(OLD)["student.hidden_size"] == 32
    assert resume.diff(OLD, new) == [
        ("extra", "<unset>", 1),
        ("log_every", 10, 5),
        ("student.hidden_size", 32, 48),
    ]
    assert resume.diff({**new, "added_unset": 0}, OLD)[0] == ("added_unset", 0, "<unset>")


def test_refused_fields_raise_one_message_with_old_and_new():
    new = {**OLD, "student": {"hidden_size": 48, "num_layers": 9}, "log_every": 5}
    with pytest.raises(resume.ResumeMismatch) as err:
        resume.check(OLD, new, refuse=("student", "seed"), what="DIR", way_out="use a new workdir")
    msg = str(err.value)
    assert "student.hidden_size: 32 -> 48" in msg and "student.num_layers: 12 -> 9" in msg
    assert "log_every" not in msg and msg.endswith("use a new workdir")


def test_allowed_and_free_fields_pass_as_notes():
    new = {**OLD, "seed": 1, "log_every": 5}
    notes = resume.check(OLD, new, refuse=("seed",), allow=("seed",))
    assert notes == ["log_every: 10 -> 5", "seed: 0 -> 1"]
    # A prefix matches whole dotted components only: "seed" does not refuse "seed_offset".
    assert resume.check({"seed_offset": 0}, {"seed_offset": 1}, refuse=("seed",)) == [
        "seed_offset: 0 -> 1"
    ]


# ---------------------------------------------------------------------- the run's rules


def _run(**changes):
    """The demo's config as a plain dict, with dotted `changes`."""
    from helpers import DEMO, load_config

    from stackdistill.config import apply_overrides

    c = load_config(DEMO)
    c.total_steps = 16
    return apply_overrides(c, changes).to_dict()


def test_run_rules_refuse_architecture_and_pass_cadence_and_paths():
    saved = _run()
    new = _run(
        **{
            "student.hidden_size": 48,
            "stacking.start_depth": 4,
            "optim.learning_rate": 1e-3,
            "log_every": 1,
            "data.path": "/elsewhere",
            "mesh.data": 2,
        }
    )
    with pytest.raises(resume.ResumeMismatch) as err:
        resume.check_run(saved, new, step=6, stage=1, workdir="DIR")
    msg = str(err.value)
    for line in (
        "student.hidden_size: 32 -> 48",
        "stacking.start_depth: 3 -> 4",
        "optim.learning_rate: 0.002 -> 0.001",
    ):
        assert line in msg
    assert "log_every" not in msg and "data.path" not in msg and "mesh.data" not in msg
    assert msg.splitlines()[-1].endswith(
        "(fields that change the state's shapes cannot be restored even then)."
    )
    names = "optim.learning_rate,stacking.start_depth,student.hidden_size"
    assert f"--config.resume_changed={names}" in msg
    notes = resume.check_run(
        saved, {**new, "resume_changed": names}, step=6, stage=1, workdir="DIR"
    )
    assert "log_every: 10 -> 1" in notes and "data.path: 'synth' -> '/elsewhere'" in notes
    assert resume.check_run(saved, {**new, "resume_changed": "allow"}, step=6, stage=1, workdir="D")


def test_total_steps_passes_only_while_the_stages_done_keep_their_steps():
    # 16 steps, 4 equal stages: boundaries 4, 8, 12; 32 steps: 8, 16, 24.
    saved, longer = _run(), _run(total_steps=32)
    notes = resume.check_run(saved, longer, step=3, stage=0, workdir="D")
    assert notes == ["total_steps: 16 -> 32 (the stages done so far keep their steps)"]
    with pytest.raises(resume.ResumeMismatch, match=r"total_steps: 16 -> 32 \(moves the stage"):
        resume.check_run(saved, longer, step=6, stage=1, workdir="D")
    with pytest.raises(resume.ResumeMismatch, match=r"the checkpoint is at step 6"):
        resume.check_run(saved, _run(total_steps=4), step=6, stage=1, workdir="D")
    # Stage plan [0-4, 4-8, 8-12, 12-16] vs 17 steps: [0-4, 4-8, 8-12, 12-17]: the last stage
    # only grows.
    assert resume.check_run(saved, _run(total_steps=17), step=13, stage=3, workdir="D")


def test_targets_folder_of_another_config_is_refused_before_the_teacher_loads(tmp_path):
    from helpers import demo_config

    from stackdistill import targets

    c = demo_config(tmp_path, **{"targets.dir": str(tmp_path / "targets")})
    (tmp_path / "targets").mkdir()
    built = {
        "mode": "fixed_crop",
        "epochs": 1,
        "teacher": "another_teacher",
        "teacher_layers": [4, 8, 12],
        "features": True,
        "max_samples": 16000,
        "normalize": False,
        "seed": 0,
        "records": 3,
    }
    (tmp_path / "targets" / "targets.json").write_text(json.dumps(built))
    # The teacher folder does not exist: loading it would fail with another error.
    with pytest.raises(resume.ResumeMismatch) as err:
        targets.build(c, tmp_path)
    msg = str(err.value)
    assert f"teacher.name: 'another_teacher' -> '{c.teacher.name}'" in msg
    assert "data.max_samples: 16000 -> 8000" in msg and "targets.mode" not in msg
    same = {**built, "teacher": c.teacher.name, "max_samples": 8000}
    (tmp_path / "targets" / "targets.json").write_text(json.dumps(same))
    assert targets.build(c, tmp_path)["records"] == 3
