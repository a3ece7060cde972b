"""cengine-toolkit: run and dissect Llama-family models on a CPU, on our own C engine.

    import toolkit
    m = toolkit.load("smollm2-135m-instruct")
    print(m.generate("The capital of France is", max_new_tokens=16))
"""

__version__ = "0.1.0"


def load(model="smollm2-135m-instruct", threads=None, **defaults):
    """Loads a model by name, .gguf path or HF directory; see toolkit.api.load."""
    from .api import load as _load

    return _load(model, threads=threads, **defaults)


def load_ipython_extension(ip):
    """`%load_ext toolkit`: registers the notebook magics (%tk_load, %%tk_generate, ...)."""
    from .notebook import load_ipython_extension as _load

    _load(ip)


def unload_ipython_extension(ip):
    from .notebook import unload_ipython_extension as _unload

    _unload(ip)
