"""The run folder's knowledge of its checkpoints."""

from tinytitan.run_folder import RunFolder


def test_newest_checkpoint_is_chosen_by_its_integer_step(tmp_path):
    run = RunFolder(tmp_path)
    for name in ("step-9", "step-10", "step-100", "step-11.tmp", "step-x", "step-12"):
        (run.checkpoints / name).mkdir(parents=True)
        if name != "step-12":  # no metadata: incomplete
            (run.checkpoints / name / ".metadata").write_bytes(b"")
    assert run.published_steps() == [9, 10, 100]
