"""The package's shape: no module imports another that imports it back, type-only imports included."""
import ast
import pathlib

import gagent

PACKAGE = pathlib.Path(gagent.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: pathlib.Path, name: str, modules: set) -> set:
    """gagent modules `path` imports, at run time or under TYPE_CHECKING alike (`from pkg import mod`
    counts as importing mod, not pkg)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("gagent"))
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("gagent"):
                submodules = {"%s.%s" % (target, alias.name) for alias in node.names} & modules
                found.update(submodules or {target})
    return found


def import_graph() -> dict:
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: {dep for dep in _imports(path, name, set(modules)) if dep in modules and dep != name}
            for name, path in modules.items()}


def find_cycle(graph: dict):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                cycle = visit(dep, stack)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [])
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_between_gagent_modules():
    graph = import_graph()
    assert "gagent.slot" in graph["gagent.server"]  # the graph really holds the package's imports
    assert find_cycle(graph) is None


def test_miners_and_pool_sets_depend_on_interfaces_not_on_protocol_sessions():
    graph = import_graph()
    for module in ("gagent.miner", "gagent.poolset", "gagent.slot"):
        assert "gagent.btcagent" not in graph[module], module
    assert "gagent.server" not in graph["gagent.miner"]
