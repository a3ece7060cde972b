"""A headless IPython shell with `%load_ext toolkit` (helpers and stand-ins: nb_fakes.py)."""
import os

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def shell(tmp_path, monkeypatch):
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    c = Config()
    c.HistoryManager.hist_file = ":memory:"
    ip = InteractiveShell.instance(config=c)
    ip.run_line_magic("load_ext", "toolkit")
    yield ip
    ip.run_line_magic("unload_ext", "toolkit")
    InteractiveShell.clear_instance()
