"""Bundled competitions in Kaggle's own format, one folder per slug, each with the script that makes it
(shipped in the wheel as ``kaggleops._datasets``)."""
