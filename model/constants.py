"""`NAME = literal` lines at the top of a script: the one parser and rewriter (torch-free, no exec).

The editable `train.py` keeps its hyperparameters as UPPERCASE module-level constants. Presets
(`model/presets.py`), tuned values (`params` of a run, written into the snapshot) and the
supervisor (which reads `NUM_FOLDS`, `IMAGE_SIZE`, ... of a snapshot) all go through here, so a
constant means the same thing to every reader.
"""
from __future__ import annotations

import ast
import json
import re

NAME_RE = re.compile(r"[A-Z][A-Z0-9_]{0,63}")
SCALARS = (bool, int, float, str)


class ConstantError(ValueError):
    """A constant that cannot be rewritten (absent, ambiguous, or a value that is not a literal)."""


def parse_constants(source: str | bytes, *, drop_reassigned: bool = False) -> dict:
    """The module-level `NAME = literal` assignments of UPPERCASE names ({} for unparsable source).

    A later non-literal assignment (`NAME = f(NAME)`, `NAME += 1`) keeps the declared literal, or
    with `drop_reassigned` leaves the name out: its value at run time is unknown without running it."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return {}
    out: dict = {}
    for node in tree.body:
        if isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Name):
            if drop_reassigned:
                out.pop(node.target.id, None)
            continue
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id.isupper():
            try:
                out[target.id] = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                if drop_reassigned:
                    out.pop(target.id, None)
    return out


def literal(value) -> str:
    """Python source for a scalar constant (floats always look like floats)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, float):
        r = repr(value)
        return r if ("e" in r or "." in r or "inf" in r or "nan" in r) else r + ".0"
    return repr(value)


def _line_pattern(name: str) -> re.Pattern:
    return re.compile(rf"^{re.escape(name)}[ \t]*=[ \t]*(?P<val>[^#\n]*?)(?P<pad>[ \t]*)(?P<comment>#[^\n]*)?$",
                      re.MULTILINE)


def rewrite_constants(text: str, values: dict, comments: dict | None = None) -> str:
    """`text` with each `NAME = ...` line of `values` set to the new literal; the line's comment
    stays in its column (or `comments[NAME]` replaces it). A value equal to the old one keeps its
    spelling (`1e-3` stays `1e-3`). Raises ConstantError naming the constant when it has no single
    top-level line to rewrite."""
    comments = comments or {}
    for name, value in values.items():
        if not NAME_RE.fullmatch(name):
            raise ConstantError(f"{name!r} is not an UPPERCASE constant name")
        if not isinstance(value, SCALARS):
            raise ConstantError(f"{name}: {type(value).__name__} is not a scalar literal (bool, int, float, str)")
        pattern = _line_pattern(name)
        hits = len(pattern.findall(text))
        if hits != 1:
            raise ConstantError(f"{name}: expected one top-level line `{name} = ...`, found {hits}")

        def sub(m, name=name, value=value):
            old = m.group("val").strip()
            try:
                parsed = ast.literal_eval(old)
                same = type(parsed) is type(value) and parsed == value
            except (ValueError, SyntaxError, TypeError):
                same = False
            code = f"{name} = {old if same else literal(value)}"
            comment = comments.get(name) or m.group("comment")
            if not comment:
                return code
            col = m.start("comment") - m.start() if m.group("comment") else len(code) + 2
            return (code.ljust(col) if len(code) < col else code + "  ") + comment

        text = pattern.sub(sub, text, count=1)
    return text
