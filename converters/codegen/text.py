"""Python literals and line wrapping for generated code, in the style ``ruff format`` writes."""

from __future__ import annotations

import math
from typing import Any

LINE = 110  # the project's ruff line length


def literal(value: Any) -> str:
    """``value`` as Python source, strings in double quotes."""
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, float):
        if math.isinf(value):
            return 'float("inf")' if value > 0 else 'float("-inf")'
        import numpy as np

        short = np.float32(value)
        text = str(short) if float(short) == value and np.isfinite(short) else repr(value)
        return text.replace("e+", "e")  # as ruff format writes an exponent
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (tuple, list)):
        items = [literal(v) for v in value]
        if isinstance(value, list):
            return f"[{', '.join(items)}]"
        return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"
    return repr(value)


def call_line(head: str, args: str, tail: str, indent: int = 4) -> str:
    """``head + args + tail`` on one line if it fits at ``indent``, else the arguments on their own line
    (or one per line with a trailing comma), as ruff format does."""
    one = f"{head}{args}{tail}"
    if indent + len(one) <= LINE:
        return one
    pad = " " * 4
    if indent + 4 + len(args) <= LINE:
        return f"{head}\n{' ' * indent}{pad}{args}\n{' ' * indent}{tail.lstrip()}"
    parts = split_args(args)
    inner = "".join(f"\n{' ' * indent}{pad}{p}," for p in parts)
    return f"{head}{inner}\n{' ' * indent}{tail.lstrip()}"


def assign_line(head: str, expression: str, indent: int = 4) -> str:
    """``head + expression`` on one line if it fits, else its first call's arguments wrapped inside
    its parentheses (``x = f(`` / arguments / ``)[0]``), as ruff format does."""
    one = f"{head}{expression}"
    start = expression.find("(")
    if indent + len(one) <= LINE or start < 0:
        return one
    depth, quote = 0, False
    for i in range(start, len(expression)):
        ch = expression[i]
        if ch == '"' and expression[i - 1] != "\\":
            quote = not quote
        elif not quote and ch in "([{":
            depth += 1
        elif not quote and ch in ")]}":
            depth -= 1
            if depth == 0:
                return call_line(head + expression[: start + 1], expression[start + 1 : i], expression[i:], indent)
    return one


def split_args(args: str) -> list[str]:
    """Top-level comma-separated parts of an argument list."""
    parts, depth, start, quote = [], 0, 0, False
    for i, ch in enumerate(args):
        if ch == '"' and (i == 0 or args[i - 1] != "\\"):
            quote = not quote
        elif not quote and ch in "([{":
            depth += 1
        elif not quote and ch in ")]}":
            depth -= 1
        elif not quote and ch == "," and depth == 0:
            parts.append(args[start:i].strip())
            start = i + 1
    parts.append(args[start:].strip())
    return [p for p in parts if p]


def subscript(slices: tuple[tuple[int | None, int | None, int], ...]) -> str:
    """``[:, 1:]`` for per-axis (start, stop, step); trailing whole axes left out."""
    parts = []
    for start, stop, step in slices:
        text = f"{'' if start is None else start}:{'' if stop is None else stop}"
        parts.append(text + (f":{step}" if step != 1 else ""))
    while len(parts) > 1 and parts[-1] == ":":
        parts.pop()
    return f"[{', '.join(parts)}]"
