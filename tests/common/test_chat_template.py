"""Chat-template rendering: the golden SmolLM2 conversations, HF's helpers, and error handling."""

import datetime

import pytest

from toolkit.common.chat_template import render_chat_template
from toolkit.common.loaders.gguf import GGUFFile
from toolkit.common.tokenizers import from_gguf
from toolkit.errors import FormatError, TokenizerError


@pytest.fixture(scope="module")
def smollm2(smollm2_gguf_path):
    with GGUFFile(smollm2_gguf_path) as g:
        return g.metadata["tokenizer.chat_template"], from_gguf(g.metadata)


def test_golden_conversations(smollm2, golden_tokenization):
    template, tok = smollm2
    for case in golden_tokenization["chat_templates"]:
        text = render_chat_template(template, case["messages"],
                                    add_generation_prompt=case["add_generation_prompt"])
        assert text == case["text"]
        assert tok.encode(text) == case["ids"]
        assert tok.apply_chat_template(case["messages"], case["add_generation_prompt"]) == text


def test_generation_prompt_flag(smollm2):
    template, _ = smollm2
    msgs = [{"role": "user", "content": "hi"}]
    with_prompt = render_chat_template(template, msgs, add_generation_prompt=True)
    without = render_chat_template(template, msgs, add_generation_prompt=False)
    assert with_prompt == without + "<|im_start|>assistant\n"


def test_hf_environment_features():
    template = (
        "{% for m in messages %}"
        "{% if m.role == 'skip' %}{% continue %}{% endif %}"
        "{{ m | tojson }}|{{ bos_token }}|{{ extra_var }}\n"
        "{% endfor %}"
        "{{ strftime_now('%Y') }}"
    )
    msgs = [{"role": "user", "content": "<b>ü</b>"}, {"role": "skip", "content": "x"}]
    out = render_chat_template(template, msgs, bos_token="<s>", extra_var=7)
    year = str(datetime.datetime.now().year)
    # tojson keeps non-ASCII and does not HTML-escape; trim_blocks removed the newline after tags.
    assert out == '{"role": "user", "content": "<b>ü</b>"}|<s>|7\n' + year


def test_whitespace_control():
    template = "{% if true %}\n  A\n{% endif %}\nB"
    assert render_chat_template(template, []) == "  A\nB"  # trim_blocks + lstrip_blocks


def test_raise_exception_from_template():
    template = ("{% if messages[0]['role'] != 'user' %}"
                "{{ raise_exception('first must be user') }}{% endif %}")
    with pytest.raises(TokenizerError, match="first must be user"):
        render_chat_template(template, [{"role": "assistant", "content": "x"}])


@pytest.mark.parametrize(
    "messages, message",
    [
        ("hello", "must be a list"),
        ([("user", "x")], r"messages\[0\] must be a dict"),
        ([{"content": "x"}], r"messages\[0\]\['role'\] must be a str, got nothing"),
        ([{"role": "user", "content": None}], r"\['content'\] must be a str, got NoneType"),
        ([{"role": "user", "content": "ok"}, {"role": 3, "content": "x"}], r"messages\[1\]"),
    ],
)
def test_message_validation(messages, message):
    with pytest.raises(TokenizerError, match=message):
        render_chat_template("{{ messages }}", messages)


def test_template_errors():
    with pytest.raises(FormatError, match="syntax error"):
        render_chat_template("{% for %}", [])
    with pytest.raises(TokenizerError, match="failed while rendering"):
        render_chat_template("{{ bos_token + 'x' }}", [])  # bos_token is None
    with pytest.raises(TokenizerError, match="must be a str"):
        render_chat_template(None, [])


def test_sandbox_blocks_attribute_escape():
    with pytest.raises(TokenizerError):
        render_chat_template("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])
