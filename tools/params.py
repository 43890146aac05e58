"""A tuned value's one path: checked against the snapshot's constants, then written into them.

`params` of a run (the agent's, `suggest`'s, a seed rerun's SEED) are never passed to the child:
they are validated here at submit and written into the main file's `NAME = literal` lines, so the
snapshot is exactly the code that ran. The experiments row keeps `params_json` as the record.
"""

from __future__ import annotations

import math

from model.constants import ConstantError, literal, parse_constants, rewrite_constants
from tools.errors import ToolError

_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}


def _example(name: str, current) -> str:
    return f'{{"{name}": {literal(current) if current is not None else "1"}}}'


def checked_value(name: str, current, value):
    """`value` typed like the constant it replaces, or a ToolError naming the constant, its type and an example."""
    if current is None:  # a constant defaulting to None takes any scalar
        ok = isinstance(value, (bool, int, float, str))
    elif isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            ok = math.isfinite(value)
    elif isinstance(current, str):
        ok = isinstance(value, str)
    else:
        raise ToolError(f"params.{name}: {name} in train.py is a {type(current).__name__} ({current!r}), which "
                        "params cannot set. Fix: edit train.py instead.")
    if not ok:
        kind = _TYPE_NAMES.get(type(current), "scalar")
        raise ToolError(f"params.{name}={value!r}: {name} is a {kind} in train.py (now {literal(current)}). "
                        f"Fix: pass a {'finite ' if kind == 'float' else ''}{kind}, e.g. params={_example(name, current)}.")
    return value


def bake(text: str, params: dict, main_file: str) -> str:
    """`text` (the main file) with `params` written into its constants; ToolError before anything is made."""
    if not params:
        return text
    constants = parse_constants(text)
    unknown = sorted(k for k in params if k not in constants)
    if unknown:
        known = ", ".join(sorted(constants)[:40]) or "(none)"
        raise ToolError(f"params.{unknown[0]}: {main_file} has no top-level constant {unknown[0]} "
                        f"(`{unknown[0]} = <literal>`). Fix: use one of {known}, or add the constant to {main_file}.")
    values = {k: checked_value(k, constants[k], v) for k, v in params.items()}
    try:
        return rewrite_constants(text, values)
    except ConstantError as exc:
        raise ToolError(f"params: {exc} in {main_file}. Fix: keep a single `NAME = literal` line per tuned constant.") \
            from None
