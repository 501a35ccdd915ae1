"""What importing the flows loads: a command pays for the libraries it uses, when it uses them.
torch (1.2 s here), scipy (0.2-1 s), matplotlib (0.3 s), Dask and the benchmarks' peers are
imported where they are used (training, the statistics and inference, plots, the Dask runner),
never by `import flows.train`: a command that stops at a bad parameter, or a deployment's
process that only checks a landed file, does not pay for them."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Loaded on first use only: the descent, the statistics' LAPACK calls and the inference's
# distributions, the report's plots, the cluster runner and what only tests and benchmarks use.
LAZY = ("torch", "scipy", "matplotlib", "dask", "distributed", "statsmodels", "sklearn")


@pytest.mark.parametrize("module", ["flows.train", "flows.score", "flows.watch"])
def test_importing_a_flow_loads_none_of_the_heavy_optional_libraries(module):
    probe = f"import sys, {module}; print(' '.join(m for m in {LAZY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.split() == [], f"{module} imports {result.stdout.strip()}"


def test_make_land_moves_the_files_in_before_loading_prefect():
    # the stack's watcher sees a landed file sooner than make land's own event can say so
    probe = "import sys, flows.land; print('prefect' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "False"


def test_the_hand_over_to_the_warm_runner_loads_the_standard_library_only():
    # `python -m flows.train` with a warm runner up: the command is this process, and little else
    probe = (
        "import sys, flows.warm; "
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} - sys.stdlib_module_names)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    # _distutils_hack: setuptools' start-up hook, loaded by every Python of the environment
    assert set(result.stdout.split()) - {"__main__", "_distutils_hack"} == {"flows"}
