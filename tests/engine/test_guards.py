"""The guards that would have caught the Q4-on-Intel collapse: the generate summary's warning when
decode runs under a tenth of what weight bytes and read bandwidth allow, and the cached bandwidth
figure it uses."""
import json
import types

from toolkit import __main__ as cli
from toolkit.bench import bandwidth
from toolkit.core.engine.backend import Tensor


def fake_model(tied, nbytes=(1000, 3000)):
    params = [Tensor((n // 4,), "F32") for n in nbytes]
    return types.SimpleNamespace(parameters=lambda: iter(params), config=types.SimpleNamespace(tie_word_embeddings=tied),
                                 embed_tokens=types.SimpleNamespace(weight=params[1]))


def test_bytes_per_token_leaves_out_an_untied_embedding():
    assert bandwidth.decode_bytes_per_token(fake_model(True)) == 4000
    assert bandwidth.decode_bytes_per_token(fake_model(False)) == 1000


def test_generate_warns_only_when_far_below_the_ceiling(monkeypatch, capsys):
    monkeypatch.setattr(bandwidth, "read_bandwidth", lambda: 4000.0 * 100)  # ceiling: 100 tok/s
    model = fake_model(True)
    cli._speed_guard(model, 9.0, 30)
    err = capsys.readouterr().err
    assert "WARNING: decode ran at 9.0 tok/s, under a tenth of the 100 tok/s" in err
    for tps, n in [(11.0, 30), (9.0, 2)]:  # fast enough, or too few tokens to judge
        cli._speed_guard(model, tps, n)
        assert capsys.readouterr().err == ""


def test_bandwidth_is_measured_once_and_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(bandwidth.B, "bench_read_bandwidth", lambda n, reps: calls.append(n) or 0.05)
    first = bandwidth.read_bandwidth()
    assert first == bandwidth.NBYTES / 0.05 and len(calls) == 1
    assert bandwidth.read_bandwidth() == first and len(calls) == 1
    table = json.loads((tmp_path / "bandwidth.json").read_text())
    assert list(table.values()) == [first]
    (tmp_path / "bandwidth.json").write_text("not json")  # a corrupt cache is measured again, not fatal
    assert bandwidth.read_bandwidth() == first and len(calls) == 2
