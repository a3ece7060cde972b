"""Render a model's Jinja chat template the way Hugging Face transformers does.

Same sandboxed environment (``ImmutableSandboxedEnvironment``, ``trim_blocks``, ``lstrip_blocks``,
loop controls), the same ``tojson`` filter (no HTML escaping) and the same globals
(``raise_exception``, ``strftime_now``), so a template renders here exactly as in transformers. It
only produces text; tokenizing the result is the tokenizer's job.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any

import jinja2
from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from toolkit.errors import FormatError, TokenizerError


def _raise_exception(message: str) -> None:
    # Templates call this to reject the conversation (e.g. roles that do not alternate).
    raise TokenizerError(f"chat template: {message}")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes <, >, & for HTML; chat templates need the plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise FormatError(
            f"chat template has a syntax error on line {e.lineno}: {e.message}"
        ) from None


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, (list, tuple)):
        raise TokenizerError(f"messages must be a list of dicts, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise TokenizerError(f"messages[{i}] must be a dict, got {type(m).__name__}")
        for key in ("role", "content"):
            if not isinstance(m.get(key), str):
                got = type(m[key]).__name__ if key in m else "nothing"
                raise TokenizerError(f"messages[{i}][{key!r}] must be a str, got {got}")


def render_chat_template(
    template: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool = True,
    bos_token: str | None = None,
    eos_token: str | None = None,
    **extra: Any,
) -> str:
    """Render ``messages`` (dicts with str ``role`` and ``content``) with ``template``.

    ``extra`` is passed to the template as further variables (e.g. ``tools``, ``date_string``).
    Raises TokenizerError for malformed messages or a template that fails while rendering, and
    FormatError for a template that does not parse.
    """
    if not isinstance(template, str):
        raise TokenizerError(f"chat template must be a str, got {type(template).__name__}")
    _check_messages(messages)
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos_token,
            eos_token=eos_token,
            **extra,
        )
    except TokenizerError:
        raise
    except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
        raise TokenizerError(
            f"chat template failed while rendering: {type(e).__name__}: {e}"
        ) from e
