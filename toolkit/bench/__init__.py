"""Benchmarks: `python -m toolkit.bench kernels` (engine kernels against the machine's memory
bandwidth) and `python -m toolkit.bench generate` (end-to-end prefill/decode speed).

Benchmarks measure; they assert nothing. Slow measurements live here, never in the test suite.
"""
