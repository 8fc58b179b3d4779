"""The built-in handlers' declarations match what their code reads."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

import handlers
from handlers import BUILTIN_NAMES, build_registry
from handlers.declarations import BUILTIN_DECLARATIONS

_READERS = {"attr_int", "attr_str", "attr_bool"}

# Which registered names each handler class serves (a class may serve several).
_CLASSES = {
    "Classify": ("classify",),
    "Recall": ("recall",),
    "LLMCall": ("llm_call",),
    "DispatchTools": ("dispatch_tools",),
    "ToolNode": ("tool",),
    "Format": ("format",),
    "UpdateMemory": ("update_memory",),
    "CheckGoals": ("check_goals",),
    "ChooseMode": ("choose_mode",),
    "Reflect": ("reflect",),
    "UpdateWorkingMemory": ("update_working_memory",),
    "Codergen": ("codergen",),
    "Shell": ("shell",),
}


def _reads(tree: ast.AST) -> dict[str, object]:
    """Attribute names read in ``tree`` (``attr_*(node, "x", default)`` and
    ``node.attrs.get("x")``), each with its literal default when there is one."""
    found: dict[str, object] = {}
    for call in ast.walk(tree):
        if not isinstance(call, ast.Call) or not call.args:
            continue
        func = call.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        key_at = 1 if name in _READERS else 0 if _is_attrs_get(func) else None
        if key_at is None or len(call.args) <= key_at:
            continue
        key = call.args[key_at]
        if isinstance(key, ast.Constant) and isinstance(key.value, str):
            default = call.args[key_at + 1] if len(call.args) > key_at + 1 else None
            found[key.value] = default.value if isinstance(default, ast.Constant) else ...
    return found


def _is_attrs_get(func: ast.expr) -> bool:
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "get"
        and isinstance(func.value, ast.Attribute)
        and func.value.attr == "attrs"
    )


def _module_parse_functions(module_tree: ast.Module) -> list[ast.FunctionDef]:
    """Module-level helpers that read settings (``_parse``), shared by its classes."""
    return [n for n in module_tree.body if isinstance(n, ast.FunctionDef)]


@pytest.mark.parametrize("cls_name", sorted(_CLASSES))
def test_every_attribute_read_is_declared_with_its_default(cls_name: str) -> None:
    """An attribute the code reads but the declaration lacks would be a false warning
    from ``validate``; a declared default that differs from the code's would be a lie
    in the docs."""
    cls = getattr(handlers, cls_name)
    module_tree = ast.parse(Path(inspect.getfile(cls)).read_text())
    class_tree = next(
        n for n in module_tree.body if isinstance(n, ast.ClassDef) and n.name == cls_name
    )
    reads = _reads(class_tree)
    # A module's _parse helper belongs to the one class that uses NodeSettings(_parse).
    if "_parse" in ast.unparse(class_tree):
        for fn in _module_parse_functions(module_tree):
            if fn.name == "_parse":
                reads.update(_reads(fn))
    for name in _CLASSES[cls_name]:
        decl = BUILTIN_DECLARATIONS[name]
        for key, default in reads.items():
            attr = decl.attr(key)
            assert attr is not None, f"{name} reads {key!r} but does not declare it"
            if isinstance(default, int | bool) and attr.type in ("int", "bool"):
                assert attr.default == default, f"{name}.{key}: declared {attr.default!r}"


def test_the_scan_finds_reads_and_defaults() -> None:
    """The scan itself works: it sees llm_call's settings and their defaults."""
    module_tree = ast.parse(Path(inspect.getfile(handlers.LLMCall)).read_text())
    parse = next(f for f in _module_parse_functions(module_tree) if f.name == "_parse")
    assert _reads(parse) == {
        "tools": False,
        "max_tool_rounds": 3,
        "max_tokens": 0,
        "history": 20,
        "prompt": ...,
        "model": ...,
        "system": ...,
    }


def test_every_declared_attribute_is_read() -> None:
    """A declared attribute the code never reads would hide a real typo."""
    for cls_name, names in _CLASSES.items():
        cls = getattr(handlers, cls_name)
        source = Path(inspect.getfile(cls)).read_text()
        for name in names:
            for attr in BUILTIN_DECLARATIONS[name].attrs:
                assert f'"{attr.name}"' in source, f"{name} declares {attr.name!r}, never read"


def test_every_builtin_handler_is_declared() -> None:
    """Every name build_registry registers carries a declaration."""
    registry = build_registry()
    assert {n for n in registry if registry.get(n).declaration is not None} == BUILTIN_NAMES
