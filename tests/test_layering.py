"""The package is layered: no import cycles between modules, and no layer imports a higher one.

Every ``import``/``from ... import`` of a ``whisper_lora`` module is read from the source (top level and inside
functions alike), so a lazy import cannot hide an upward dependency.
"""

import ast
from pathlib import Path

import whisper_lora

PKG = Path(whisper_lora.__file__).parent
# lowest first; the foundation modules import nothing but each other
LAYERS = [
    {
        "whisper_lora.errors",
        "whisper_lora.languages",
        "whisper_lora.atomic",
        "whisper_lora.locks",
        "whisper_lora.results",
    },
    {"whisper_lora.base"},
    {"whisper_lora.data"},
    {"whisper_lora.registry"},
    {"whisper_lora.inference"},
    {"whisper_lora.training"},
    {"whisper_lora.serving"},
    {"whisper_lora.cli"},
]


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Modules of whisper_lora that ``path`` imports (absolute names; relative imports resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    me = module_name(path)
    pkg = me if path.name == "__init__.py" else me.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("whisper_lora")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("whisper_lora"):
                found.add(mod)
                # `from whisper_lora.x import y` may name the submodule y
                found |= {f"{mod}.{a.name}" for a in node.names if (f"{mod}.{a.name}" in MODULES)}
    return {m for m in found if m in MODULES and m != me}


MODULES = {module_name(p): p for p in PKG.rglob("*.py")}


def layer_of(mod: str) -> int:
    for i, roots in enumerate(LAYERS):
        if any(mod == r or mod.startswith(r + ".") for r in roots):
            return i
    raise AssertionError(f"{mod} is in no layer; add it to LAYERS")


def test_every_module_has_a_layer():
    for mod in MODULES:
        if mod != "whisper_lora":
            layer_of(mod)


def test_no_module_imports_a_higher_layer():
    bad = []
    for mod, path in MODULES.items():
        if mod == "whisper_lora":  # the public API re-exports every layer
            continue
        for dep in imports_of(path):
            if dep != "whisper_lora" and layer_of(dep) > layer_of(mod):
                bad.append(f"{mod} (layer {layer_of(mod)}) imports {dep} (layer {layer_of(dep)})")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {mod: imports_of(path) - {"whisper_lora"} for mod, path in MODULES.items() if mod != "whisper_lora"}
    # a package's __init__ importing its own submodules is not a cycle back from them unless they import it
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                cycles.append(" -> ".join(stack[stack.index(dep) :] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_each_subpackage_says_its_job_and_layer():
    for init in PKG.glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and "layer" in doc.lower(), f"{init} has no docstring naming its layer"
