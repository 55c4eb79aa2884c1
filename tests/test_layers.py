"""The layer rule of DESIGN.md, read from every module's imports with ast.

Fails on: an upward import, a role importing another role, an import cycle,
an import inside a function, and any import that is not the standard library or meshkit.
"""

import ast
import os
import sys
import tempfile
import textwrap
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = {"core": 0, "rules": 1, "adapters": 2, "roles": 3, "cli": 4}


def modules_of(root: str, package: str) -> dict:
    """{module name: file path} for every .py under root/package."""
    found = {}
    base = os.path.join(root, package)
    for dirpath, _, files in os.walk(base):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(dirpath, f)
    return found


def layer_of(module: str):
    parts = module.split(".")
    if len(parts) == 1:
        return 0
    if parts[1] == "__main__":
        return 4
    return LAYERS.get(parts[1])


def role_of(module: str):
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == "roles" else None


def _imports(tree, module: str, is_pkg: bool):
    """Yield (lineno, imported module name, inside_function)."""
    def visit(node, in_func):
        for child in ast.iter_child_nodes(node):
            func = in_func or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for a in child.names:
                    yield child.lineno, a.name, [], in_func
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = module.split(".") if is_pkg else module.split(".")[:-1]
                    base = base[:len(base) - (child.level - 1)]
                    name = ".".join(base + ([child.module] if child.module else []))
                else:
                    name = child.module
                yield child.lineno, name, [a.name for a in child.names], in_func
            yield from visit(child, func)
    yield from visit(tree, False)


def check_tree(root: str, package: str = "meshkit") -> list:
    """Every problem found, as 'file:line: what' strings."""
    mods = modules_of(root, package)
    problems, graph = [], {m: set() for m in mods}
    for mod, path in sorted(mods.items()):
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        rel = os.path.relpath(path, root)
        my_layer = layer_of(mod)
        if my_layer is None:
            problems.append(f"{rel}: module is in no layer package ({', '.join(LAYERS)})")
            continue
        for line, name, names, in_func in _imports(tree, mod, path.endswith("__init__.py")):
            where = f"{rel}:{line}"
            if in_func:
                problems.append(f"{where}: import inside a function ({name})")
            top = name.split(".")[0]
            if top != package:
                if top not in sys.stdlib_module_names:
                    problems.append(f"{where}: imports {name}, which is neither the standard library nor {package}")
                continue
            targets = [f"{name}.{n}" for n in names if f"{name}.{n}" in mods] or [name]
            for target in targets:
                if target not in mods:
                    problems.append(f"{where}: imports {target}, which does not exist")
                    continue
                if target != mod:
                    graph[mod].add(target)
                their = layer_of(target)
                if their is not None and their > my_layer:
                    problems.append(f"{where}: upward import of {target} (layer {their}) from layer {my_layer}")
                mine_r, their_r = role_of(mod), role_of(target)
                if mine_r and their_r and mine_r != their_r:
                    problems.append(f"{where}: role {mine_r} imports role {their_r}")
    problems += [f"import cycle: {' -> '.join(c)}" for c in find_cycles(graph)]
    return problems


def find_cycles(graph: dict) -> list:
    """Each cycle once, as a list of modules ending where it starts."""
    cycles, state, stack = [], {}, []

    def dfs(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                dfs(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            dfs(node)
    return cycles


class LayerRuleOnMeshkit(unittest.TestCase):
    def test_meshkit_obeys_the_layer_rule(self):
        problems = check_tree(ROOT)
        self.assertEqual(problems, [], "\n" + "\n".join(problems))

    def test_every_layer_package_exists(self):
        for name in LAYERS:
            self.assertTrue(os.path.isdir(os.path.join(ROOT, "meshkit", name)), name)


class LayerCheckerCatchesBadModules(unittest.TestCase):
    """Small bad packages in a temp dir: the checker must flag each kind of breach."""

    def tree(self, files: dict) -> list:
        with tempfile.TemporaryDirectory() as d:
            for rel, text in files.items():
                path = os.path.join(d, "pkg", rel)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w") as f:
                    f.write(textwrap.dedent(text))
            for sub in ("", "core", "rules", "adapters", "roles", "roles/a", "roles/b", "cli"):
                init = os.path.join(d, "pkg", sub, "__init__.py")
                os.makedirs(os.path.dirname(init), exist_ok=True)
                if not os.path.exists(init):
                    open(init, "w").close()
            return check_tree(d, "pkg")

    def test_clean_tree_passes(self):
        self.assertEqual(self.tree({"rules/x.py": "import os\nfrom pkg.core import y\n", "core/y.py": "import json\n"}), [])

    def test_catches_each_breach(self):
        cases = [
            ("upward import", {"core/x.py": "from pkg.rules import y\n", "rules/y.py": ""}, "upward import"),
            ("upward relative", {"rules/x.py": "from ..cli import y\n", "cli/y.py": ""}, "upward import"),
            ("role imports role", {"roles/a/x.py": "from pkg.roles.b import y\n", "roles/b/y.py": ""}, "role a imports role b"),
            ("cycle", {"rules/x.py": "from pkg.rules import y\n", "rules/y.py": "from pkg.rules import x\n"}, "import cycle"),
            ("import in function", {"rules/x.py": "def f():\n    import json\n"}, "import inside a function"),
            ("import in method", {"rules/x.py": "class A:\n    def f(self):\n        from os import path\n"}, "import inside a function"),
            ("third party", {"adapters/x.py": "import requests\n"}, "neither the standard library"),
            ("third party from", {"adapters/x.py": "from yaml import safe_load\n"}, "neither the standard library"),
            ("missing layer", {"misc/x.py": "", "misc/__init__.py": ""}, "no layer package"),
        ]
        for name, files, expected in cases:
            with self.subTest(name):
                problems = self.tree(files)
                self.assertTrue(any(expected in p for p in problems), f"{name}: {problems}")


if __name__ == "__main__":
    unittest.main()
