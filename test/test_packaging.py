"""How tinytitan is packaged: the repository's kernels/ folder is `tinytitan.kernels`, installed or
not, and never the unrelated Hugging Face `kernels` package that transformers probes for."""

import pytest
from helpers import REPO_ROOT, run_python


def test_our_kernels_folder_does_not_pose_as_the_hub_kernels_package():
    import_utils = pytest.importorskip("transformers.utils.import_utils")

    import tinytitan.kernels  # noqa: F401 - ours imported alongside transformers

    assert not import_utils.is_kernels_available()


def test_a_checkout_that_was_not_installed_still_finds_the_kernels():
    code = (
        "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]; "
        f"sys.path.insert(0, {str(REPO_ROOT)!r}); import tinytitan.kernels.rmsnorm as r; print(r.__file__)"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(REPO_ROOT / "kernels" / "rmsnorm.py")
