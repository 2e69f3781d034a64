"""The run folder's knowledge of its checkpoints."""

from tinytitan.run_folder import RunFolder


def test_newest_checkpoint_is_chosen_by_its_integer_step(tmp_path):
    run = RunFolder(tmp_path)
    for name in ("step-9", "step-10", "step-100", "step-11.tmp", "step-x", "step-12-model"):
        (run.checkpoints / name).mkdir(parents=True)
        (run.checkpoints / name / ".metadata").write_bytes(b"")
    assert run.published_steps() == [9, 10, 100]


def test_a_published_step_without_metadata_is_listed_for_the_resume_to_refuse(tmp_path):
    """It used to be skipped: the run resumed from an older step and later deleted it."""
    run = RunFolder(tmp_path)
    for name in ("step-10", "step-20"):
        (run.checkpoints / name).mkdir(parents=True)
    (run.checkpoints / "step-10/.metadata").write_bytes(b"")
    assert run.published_steps() == [10, 20]
