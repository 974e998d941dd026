"""Ship the top-level ``kernels/`` and ``datasets/`` folders inside the wheel (everything else: pyproject.toml).

``kaggleops/_kernels`` and ``kaggleops/_datasets`` are links to those folders in the repository, so the wheel's
package data (read through the links) carries the files themselves; kops reads them with ``importlib.resources``
(kaggleops/resources.py). Neither folder has an ``__init__.py``: from the repository root they must not shadow
Hugging Face's ``kernels`` and ``datasets`` distributions.
"""

from setuptools import find_packages, setup

setup(
    # the two resource folders are data-only (namespace) packages: listed, never imported
    packages=find_packages(include=["kaggleops", "kaggleops.*"]) + ["kaggleops._kernels", "kaggleops._datasets"],
    package_data={
        "kaggleops._kernels": ["*.tmpl", "*.ipynb"],
        "kaggleops._datasets": ["*/*.csv", "*/*.py", "*/*.md", "*/*.json",
                                # evaluation-API competitions: hidden test files, the kaggle_evaluation package
                                "*/hidden/*.csv", "*/kaggle_evaluation/*.py", "*/kaggle_evaluation/core/*.py"],
        "kaggleops.kernel": ["kaggle_image.txt"],  # the packages run-local's Kaggle image environment holds
        "": ["*.csv", "*.json", "*.tmpl", "*.yaml", "*.md"],
    },
)
