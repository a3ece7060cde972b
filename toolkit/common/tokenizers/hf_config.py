"""Read the files transformers keeps beside a tokenizer: what each one contributes and nothing more.

``tokenizer_config.json`` names the special-token roles and may hold the chat template,
``chat_template.jinja`` holds it in newer exports, and ``generation_config.json`` may list extra
end-of-turn ids.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from toolkit.errors import FormatError

COMPANION_FILES = {
    "tokenizer_config": "tokenizer_config.json",
    "generation_config": "generation_config.json",
    "chat_template_file": "chat_template.jinja",
}


@dataclass
class Companions:
    config: dict[str, Any] = field(default_factory=dict)
    config_path: str | None = None
    chat_template: str | None = None
    eos_ids: list[int] = field(default_factory=list)  # from generation_config.json

    def token(self, key: str) -> str | None:
        """The spelling of special token ``key`` ("bos_token", ...) in tokenizer_config.json."""
        value = self.config.get(key)
        if isinstance(value, dict):  # a serialised AddedToken
            value = value.get("content")
        if value is not None and not isinstance(value, str):
            raise FormatError(f"{self.config_path}: {key} must be a string")
        return value


def find_companions(directory: str | os.PathLike) -> dict[str, str]:
    """The companion files present in ``directory``, keyed like ``read_companions``' arguments."""
    found = {}
    for key, name in COMPANION_FILES.items():
        p = os.path.join(directory, name)
        if os.path.isfile(p):
            found[key] = p
    return found


def read_companions(
    tokenizer_config: str | os.PathLike | None = None,
    generation_config: str | os.PathLike | None = None,
    chat_template_file: str | os.PathLike | None = None,
) -> Companions:
    c = Companions()
    if tokenizer_config is not None:
        c.config_path = os.fspath(tokenizer_config)
        c.config = read_json(c.config_path)
        c.chat_template = _chat_template(c.config, c.config_path)
    if c.chat_template is None and chat_template_file is not None:
        with open(chat_template_file, encoding="utf-8") as fh:
            c.chat_template = fh.read()
    if generation_config is not None:
        eos = read_json(generation_config).get("eos_token_id")
        eos = [] if eos is None else eos if isinstance(eos, list) else [eos]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in eos):
            raise FormatError(f"{os.fspath(generation_config)}: eos_token_id must be ints")
        c.eos_ids = eos
    return c


def read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{os.fspath(path)}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise FormatError(f"{os.fspath(path)}: expected a JSON object")
    return data


def _chat_template(config: dict, where: str) -> str | None:
    template = config.get("chat_template")
    if template is None or isinstance(template, str):
        return template
    # Some configs store several named templates: [{"name": ..., "template": ...}, ...].
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        if isinstance(named.get("default"), str):
            return named["default"]
    raise FormatError(f"{where}: chat_template is neither a string nor a list with a 'default'")
