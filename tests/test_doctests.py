"""The examples in kops' docstrings run (`>>>` lines that need no project, network or trained model); the ones that
do are marked ``# doctest: +SKIP`` and read as documentation only."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import kaggleops

OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def kops_modules() -> list[str]:
    """Every module of the installed package (not the data folders shipped inside it)."""
    return sorted(m.name for m in pkgutil.walk_packages(kaggleops.__path__, "kaggleops.")
                  if not m.name.startswith(("kaggleops._kernels", "kaggleops._datasets", "kaggleops.__main__")))


def test_every_runnable_docstring_example_passes() -> None:
    attempted, failures = 0, []
    for name in kops_modules():
        module = importlib.import_module(name)
        result = doctest.testmod(module, optionflags=OPTIONS, verbose=False, report=False)
        attempted += result.attempted
        if result.failed:
            failures.append(f"{name}: {result.failed} of {result.attempted} failed")
    assert not failures, failures
    assert attempted >= 23  # the examples that run today (23); a lower count means examples were lost
