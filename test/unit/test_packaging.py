"""How tinytitan is packaged: the repository's kernels/ folder is `tinytitan.kernels`, never the
unrelated Hugging Face `kernels` package that transformers probes for. (Not installed, in a fresh
Python: test/e2e/test_packaging_checkout.py.)"""

import pytest


def test_our_kernels_folder_does_not_pose_as_the_hub_kernels_package():
    import_utils = pytest.importorskip("transformers.utils.import_utils")

    import tinytitan.kernels  # noqa: F401 - ours imported alongside transformers

    assert not import_utils.is_kernels_available()
