"""tinytitan: a compact, PyTorch-native trainer for pretraining small Llama-family models."""

import importlib.util
import sys
from pathlib import Path


def _map_source_kernels() -> None:
    """Make the repository's kernels/ folder importable as `tinytitan.kernels` when the package
    runs from a checkout that was not pip-installed (an installed copy maps it already, see
    pyproject.toml), so that PYTHONPATH=<checkout> is enough, as on an offline GPU machine."""
    if importlib.util.find_spec(f"{__name__}.kernels") is not None:
        return
    folder = Path(__file__).resolve().parent.parent / "kernels"
    spec = importlib.util.spec_from_file_location(
        f"{__name__}.kernels", folder / "__init__.py", submodule_search_locations=[str(folder)]
    )
    if spec is None:
        return  # no kernels/ beside the package: the import error will say what is missing
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


_map_source_kernels()
