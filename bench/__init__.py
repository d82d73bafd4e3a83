"""Benchmarks of kilo_web's realtime path.

``python -m bench run --quick`` compares it with its own stack's ceiling
(docs/benchmarks.md); the fault scripts beside it have their own commands.
"""
