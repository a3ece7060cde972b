"""Loading: GGUF, converted HF directories, and bad files that must raise typed errors."""
import json
import os
import shutil

import pytest

import toolkit
from toolkit import errors

from golden_checks import LOGIT_TOL, check_last_logits, check_top10


def test_load_by_name_uses_the_cache(model, smollm2_gguf_path):
    m = toolkit.load("SmolLM2-135M-Instruct")
    try:
        assert m.path == smollm2_gguf_path
        assert m.config.num_hidden_layers == 30 and m.config.rope_mode == "adjacent"
        # zero-copy: the weights point into the file mapping, not into copies
        assert m.model.layers[0].self_attn.q_proj.weight.dtype == "Q4_1"
        assert m.model.embed_tokens.weight.dtype == "Q8_0"
    finally:
        m.close()
    with pytest.raises(errors.ToolkitError):
        m.generate("hi")


def test_missing_model_raises():
    with pytest.raises(errors.ModelNotFoundError):
        toolkit.load("/nonexistent/model.gguf")
    with pytest.raises(errors.ModelNotFoundError):
        toolkit.load("no-such-model-name")


def test_truncated_gguf_raises(tmp_path, smollm2_gguf_path):
    bad = tmp_path / "trunc.gguf"
    with open(smollm2_gguf_path, "rb") as f:
        bad.write_bytes(f.read(5_000_000))
    with pytest.raises(errors.FormatError):
        toolkit.load(str(bad))


def test_garbage_gguf_raises(tmp_path):
    bad = tmp_path / "garbage.gguf"
    bad.write_bytes(b"GGUF" + os.urandom(4000))
    with pytest.raises(errors.FormatError):
        toolkit.load(str(bad))


@pytest.fixture(scope="module")
def converted_dir(tmp_path_factory, smollm2_gguf_path):
    from toolkit.__main__ import main

    out = tmp_path_factory.mktemp("hf") / "smollm2-f32"
    assert main(["convert", smollm2_gguf_path, str(out)]) == 0
    yield out
    shutil.rmtree(out, ignore_errors=True)


def test_convert_writes_an_hf_directory(converted_dir):
    names = set(os.listdir(converted_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "generation_config.json"} <= names
    cfg = json.loads((converted_dir / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["num_key_value_heads"] == 3 and cfg["tie_word_embeddings"]
    tcfg = json.loads((converted_dir / "tokenizer_config.json").read_text())
    assert "chat_template" in tcfg and tcfg["eos_token"] == "<|im_end|>"
    # the safetensors package itself reads our file
    from safetensors import deserialize

    head = dict(deserialize((converted_dir / "model.safetensors").read_bytes()))
    q = head["model.layers.0.self_attn.q_proj.weight"]
    assert q["dtype"] == "F32" and q["shape"] == [576, 576]


def test_converted_directory_matches_golden(converted_dir, golden_logits, golden_tokenization):
    with toolkit.load(str(converted_dir)) as m:
        assert m.config.rope_mode == "half"
        for case in golden_tokenization["chat_templates"]:
            assert m.tokenizer.encode(m.apply_chat_template(case["messages"])) == case["ids"]
        for prompt in golden_logits["prompts"]:
            logits = m.logits(prompt["input_ids"])
            assert check_top10(logits, prompt) <= LOGIT_TOL
            assert check_last_logits(logits, prompt) <= LOGIT_TOL
            gold = prompt["greedy"]["ids"]
            assert m.generate_ids(prompt["input_ids"], max_new_tokens=len(gold), stop_at_eos=False) == gold


def test_hf_directory_errors(tmp_path, converted_dir):
    d = tmp_path / "broken"
    d.mkdir()
    with pytest.raises(errors.ModelNotFoundError):
        toolkit.load(str(d))
    (d / "config.json").write_text("{not json")
    with pytest.raises(errors.ToolkitError):
        toolkit.load(str(d))
    shutil.copy(converted_dir / "config.json", d / "config.json")
    shutil.copy(converted_dir / "tokenizer.json", d / "tokenizer.json")
    shutil.copy(converted_dir / "tokenizer_config.json", d / "tokenizer_config.json")
    # weights of the wrong size: the header promises more bytes than the file has
    src = (converted_dir / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(src[: len(src) // 3])
    with pytest.raises(errors.FormatError):
        toolkit.load(str(d))
    # a config that disagrees with the weights (mismatched shapes)
    cfg = json.loads((converted_dir / "config.json").read_text())
    cfg["hidden_size"] = 512
    (d / "config.json").write_text(json.dumps(cfg))
    shutil.copy(converted_dir / "model.safetensors", d / "model.safetensors")
    with pytest.raises(errors.ToolkitError):
        toolkit.load(str(d))


def test_bf16_conversion_loads_and_stays_close(tmp_path, smollm2_gguf_path, model, golden_logits):
    from toolkit.models.llama.convert import convert_gguf_to_hf

    out = tmp_path / "bf16"
    convert_gguf_to_hf(smollm2_gguf_path, str(out), dtype="BF16")
    prompt = golden_logits["prompts"][0]
    with toolkit.load(str(out)) as m:
        assert m.model.layers[3].mlp.up_proj.weight.dtype == "BF16"
        last = m.logits(prompt["input_ids"]).tolist()[-1]
    gold = prompt["last_position_logits"]
    assert max(range(len(last)), key=last.__getitem__) == prompt["last_position_argmax"]
    assert max(abs(a - b) for a, b in zip(last, gold)) < 0.5  # bf16 keeps ~3 significant digits


def test_convert_rejects_a_bad_dtype(tmp_path, smollm2_gguf_path):
    from toolkit.models.llama.convert import convert_gguf_to_hf

    with pytest.raises(errors.InvalidArgumentError):
        convert_gguf_to_hf(smollm2_gguf_path, str(tmp_path / "x"), dtype="Q4_1")


def test_cli_profile_takes_max_new_tokens_and_reports_an_unwritable_trace(smollm2_gguf_path, tmp_path, capsys):
    """--max-new-tokens as in `generate`; a trace path it cannot write is one 'error:' line and exit
    status 2, not a traceback."""
    from toolkit.__main__ import main

    bad = str(tmp_path / "missing-dir" / "trace.json")
    assert main(["profile", "Hi", "--model", smollm2_gguf_path, "--max-new-tokens", "2", "--trace", bad]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "missing-dir" in err and "Traceback" not in err
    assert main(["convert", smollm2_gguf_path, str(tmp_path / "nope" / "x" / "y" / ("z" * 300))]) == 2


_EDIT_WEIGHTS = r"""
import hashlib, sys
import toolkit
from toolkit.core.engine import functional as F
from toolkit.core.engine.tensor import Tensor

path = sys.argv[1]
digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
with toolkit.load(path) as m, toolkit.load(path) as other:
    before = m.logits("The capital of France is")
    lm = m.model
    F.scale(lm.layers[0].input_layernorm.weight, 0.0, out=lm.layers[0].input_layernorm.weight)  # F32 in the file
    w = lm.layers[3].mlp.down_proj.weight                                                      # Q4_1 in the file
    w[0].copy_(Tensor(w[0].shape, w.dtype))
    after = m.logits("The capital of France is")
    assert bytes(after.memoryview()) != bytes(before.memoryview())
    # the edit is this model's own: another model on the same file and the file itself are untouched
    assert bytes(other.logits("The capital of France is").memoryview()) == bytes(before.memoryview())
assert hashlib.sha256(open(path, "rb").read()).hexdigest() == digest
print("edited")
"""


def test_weights_can_be_edited_in_place_without_touching_the_file(smollm2_gguf_path):
    """Weight ablation (zeroing a norm, a row of a quantised matrix) is a standard experiment; the
    weights used to sit in a read-only mapping, so the first write killed the interpreter (SIGSEGV).
    Run in a child process: a crash must fail this test, not end the test session."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _EDIT_WEIGHTS, smollm2_gguf_path], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert r.returncode == 0 and r.stdout.strip() == "edited", (r.returncode, r.stderr[-2000:])
