"""The compiled part of ebplane: the filter's HyperSplit tree builder (a CPython extension
module; the rest of the project is declared in pyproject.toml).  ``scripts/setup`` builds
it with the editable install; without it, ebplane falls back to the numpy builder."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ebplane.stages.filter._hsplit",
                             sources=["src/ebplane/stages/filter/_hsplit.c"],
                             extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
                             optional=False)])
