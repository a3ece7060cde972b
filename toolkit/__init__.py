"""cengine-toolkit: run and dissect Llama-family models on a CPU, on our own C engine."""

__version__ = "0.1.0"
