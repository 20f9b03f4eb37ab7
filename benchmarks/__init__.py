"""Benchmarks: scale, incremental cost and peers measured side by side (issue 5).

``python -m benchmarks.run --scale S`` is the one command; the other modules are the child
processes it starts (each measured cold, in a fresh process) and their helpers.
"""
