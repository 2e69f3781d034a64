"""How tinytitan is packaged, in a fresh Python: a checkout that was not installed still imports
its kernels/ folder as `tinytitan.kernels`."""

from helpers import REPO_ROOT, run_python


def test_a_checkout_that_was_not_installed_still_finds_the_kernels():
    code = (
        "import sys; sys.meta_path = [f for f in sys.meta_path if 'editable' not in getattr(f, '__module__', '')]; "
        f"sys.path.insert(0, {str(REPO_ROOT)!r}); import tinytitan.kernels.rmsnorm as r; print(r.__file__)"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(REPO_ROOT / "kernels" / "rmsnorm.py")
