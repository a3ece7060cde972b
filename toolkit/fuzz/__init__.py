"""Hardening tools: a tiny synthetic model (``tiny``) and a seeded mutation fuzzer of the loaders
(``python -m toolkit.fuzz --cases N --seed S --out DIR``)."""
