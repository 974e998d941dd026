"""Kernel templates and training notebooks (shipped in the wheel as ``kaggleops._kernels``)."""
