"""Triton kernels of rembert_fast, one op per file (installed as `rembert_fast.kernels`).

Call them through `rembert_fast.ops`, which picks the backend and validates arguments.
"""
