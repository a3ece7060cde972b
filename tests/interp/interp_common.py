"""Shared by the interp tests."""
PROMPT = "The quick brown fox jumps over the lazy dog near the river."
