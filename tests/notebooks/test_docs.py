"""Every public name the docs mention exists, with the signature the docs give it.

Docs name Python API as inline code: `toolkit.x.y` or `toolkit.x.y()` (must exist) or
`toolkit.x.y(a, b=1, *args)` (a signature: the parameters shown must be the first ones, with the
same names, kinds and literal defaults; parameters left out must have defaults). An example call
with literal arguments (`toolkit.load("x")`) or `...` (`toolkit.load(path, rope_theta=...)`) only has
its name checked. C functions (`ce_*`) must be
in cengine.h, and `python -m toolkit ...` / `python -m toolkit.bench ...` commands must exist.
"""
import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
SPAN = re.compile(r"`([^`\n]+)`")
PY_NAME = re.compile(r"^(toolkit(?:\.\w+)+)(\(.*\))?$")
C_NAME = re.compile(r"\b(ce_[a-z0-9_]+)\b")
CLI = re.compile(r"^python -m (toolkit(?:\.bench)?)\s+(.*)$")


def _spans():
    for doc in DOCS:
        for span in SPAN.findall(doc.read_text(encoding="utf-8")):
            yield doc.name, span.strip()


def _python_refs():
    seen = {}
    for doc, span in _spans():
        m = PY_NAME.match(span)
        if m:
            seen.setdefault((m.group(1), m.group(2)), doc)
    return sorted(seen.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))


def _resolve(dotted):
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the docs name something that is not there
        return obj
    raise ModuleNotFoundError(dotted)


def _documented_params(params):
    """ast.arguments of a parameter list, or None when it is an example call, not a signature."""
    try:
        fn = ast.parse(f"def _f{params}: pass").body[0]
    except SyntaxError:
        return None
    # `f(path, x=...)`: "..." marks an illustrative call, not a signature
    if any(isinstance(d, ast.Constant) and d.value is Ellipsis for d in fn.args.defaults + fn.args.kw_defaults):
        return None
    return fn.args


def _value(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    try:  # constant expressions such as 512 << 20
        return eval(compile(ast.Expression(node), "<doc>", "eval"), {"__builtins__": {}})
    except Exception:  # noqa: BLE001 - a name (e.g. a module constant): not compared
        return inspect.Parameter.empty


def _check_signature(obj, args, where):
    target = obj.__init__ if inspect.isclass(obj) else obj
    sig = inspect.signature(target)
    actual = [p for p in sig.parameters.values() if p.name not in ("self", "cls")]
    doc = []
    pos = args.posonlyargs + args.args
    defaults = [None] * (len(pos) - len(args.defaults)) + list(args.defaults)
    for a, d in zip(pos, defaults):
        doc.append((a.arg, "positional", d))
    if args.vararg:
        doc.append((args.vararg.arg, "*", None))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        doc.append((a.arg, "keyword", d))
    if args.kwarg:
        doc.append((args.kwarg.arg, "**", None))
    kinds = {inspect.Parameter.POSITIONAL_ONLY: "positional", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
             inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.KEYWORD_ONLY: "keyword",
             inspect.Parameter.VAR_KEYWORD: "**"}
    got = [(p.name, kinds[p.kind]) for p in actual]
    shown = [(n, k) for n, k, _ in doc]
    assert got[:len(shown)] == shown, f"{where}: documented {[n for n, _, _ in doc]}, actual {sig}"
    left_out = [p for p in actual[len(shown):] if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    assert not left_out, f"{where}: the docs leave out required parameters {[p.name for p in left_out]} ({sig})"
    for (name, _, d), p in zip(doc, actual):
        if d is None:
            assert p.default is inspect.Parameter.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD), \
                f"{where}: {name} has a default ({p.default!r}) the docs do not show"
            continue
        v = _value(d)
        if v is not inspect.Parameter.empty:
            assert p.default == v, f"{where}: {name} defaults to {p.default!r}, the docs say {v!r}"


REFS = _python_refs()


def test_the_docs_name_python_api():
    assert len(REFS) > 30  # the parser found the references (a regex gone wrong would find none)


@pytest.mark.parametrize("ref", REFS, ids=[f"{n}{'()' if p else ''}" for (n, p), _ in REFS])
def test_documented_python_name_exists_with_its_signature(ref):
    (name, params), doc = ref
    obj = _resolve(name)
    if params and params.replace(" ", "") not in ("()", "(...)"):
        args = _documented_params(params)
        if args is not None:
            _check_signature(obj, args, f"{doc}: {name}")
        else:
            assert callable(obj), f"{doc}: {name} is called in an example but is not callable"


def test_documented_c_names_exist():
    """Public ones in cengine.h; engine internals that architecture notes name, in cengine/src."""
    sources = [ROOT / "cengine" / "include" / "cengine.h"] + sorted((ROOT / "cengine" / "src").glob("*.[ch]"))
    declared = {n for f in sources for n in re.findall(r"\b(ce_[a-z0-9_]+)\b", f.read_text())}
    named = {(doc, n) for doc, span in _spans() for n in C_NAME.findall(span)}
    assert named, "no ce_ names found in the docs"
    missing = sorted(f"{doc}: {n}" for doc, n in named if n not in declared)
    assert not missing, missing


def test_documented_commands_exist():
    from toolkit.__main__ import main
    from toolkit.bench.__main__ import _BENCHES

    commands = set()
    for doc, span in _spans():
        m = CLI.match(span)
        if m:
            words = []
            for w in m.group(2).split():
                if not re.fullmatch(r"[a-z][a-z_-]*", w):
                    break
                words.append(w)
            if words:
                commands.add((doc, m.group(1), tuple(words[:2])))
    assert any(mod == "toolkit" for _, mod, _ in commands)
    for doc, mod, words in sorted(commands):
        if mod == "toolkit.bench":
            assert words[0] in _BENCHES, f"{doc}: python -m toolkit.bench {words[0]}"
            continue
        with pytest.raises(SystemExit) as exc:
            main(list(words) + ["--help"])
        assert exc.value.code == 0, f"{doc}: python -m toolkit {' '.join(words)} is not a command"
