"""Ship the top-level ``kernels/`` and ``datasets/`` folders inside the wheel (everything else: pyproject.toml)."""

from setuptools import find_packages, setup

BUNDLED = {"kaggleops._kernels": "kernels", "kaggleops._datasets": "datasets"}

setup(
    packages=find_packages(include=["kaggleops", "kaggleops.*"]) + list(BUNDLED),
    package_dir=BUNDLED,
    package_data={
        "kaggleops._kernels": ["*.tmpl", "*.ipynb"],
        "kaggleops._datasets": ["*/*.csv", "*/*.py", "*/*.md", "*/*.json"],
        "": ["*.csv", "*.json", "*.tmpl", "*.yaml", "*.md"],
    },
)
