"""Side-by-side benchmark of the reconciler, supervisord and circus (`python -m benchmarks`).

Not a test: timing goals live here, never as asserts in tests/ (see docs/benchmarks.md).
"""
