"""The notebook layer: `%load_ext toolkit` magics, the generation and attention widgets, plots and
HTML views. It uses the public toolkit API only (never the engine).

    %load_ext toolkit
    from toolkit.notebook import GenerationWidget, AttentionExplorer, plots
    GenerationWidget(model)

ipywidgets and matplotlib load on first use of a name that needs them.
"""

__all__ = ["GenerationWidget", "AttentionExplorer", "plots", "display", "load_ipython_extension",
           "unload_ipython_extension"]


def __getattr__(name):
    if name == "GenerationWidget":
        from .widgets import GenerationWidget

        return GenerationWidget
    if name == "AttentionExplorer":
        from .attention import AttentionExplorer

        return AttentionExplorer
    if name in ("plots", "display", "magics", "session", "widgets", "attention"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'toolkit.notebook' has no attribute {name!r}")


def load_ipython_extension(ip):
    from .magics import load_ipython_extension as load

    load(ip)


def unload_ipython_extension(ip):
    from .magics import unload_ipython_extension as unload

    unload(ip)
