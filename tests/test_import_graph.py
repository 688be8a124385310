"""The package's shape, read statically with `ast` (nothing is imported): no import cycles, packages import only
packages in lower layers (`LAYERS`, the same list as docs/LAYERS.md), the command line never depends on the demo
(the demo depends on it), no module grows past 400 lines, no package name hides one of its modules, and one
function builds every `Runtime`.

Every import counts, also one inside a function: a lazy import still makes one module depend on the other.
Importing `a.b` runs `a/__init__.py` first, but that implicit parent import is not an edge: `a.b` and `a` form
a cycle only when each names the other in an import statement.
"""
from __future__ import annotations

import ast
import os
import pathlib
import re
from collections.abc import Iterator

PACKAGE = 'jaxprompt'
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 400
LAYERS_DOC = ROOT.parent / 'docs' / 'LAYERS.md'

# Bottom to top. A module may import its own package and packages of lower layers only; packages of one layer
# never import each other. A top-level module (`errors.py`, `__main__.py`) counts as a package of its own.
LAYERS = [
    ['errors'],
    ['formats'],
    ['parallel'],
    ['models'],
    ['checkpoints', 'data'],
    ['methods'],
    ['runtime'],
    ['train', 'eval'],
    ['commands'],
    ['cli'],
    ['demo', '__main__'],
]


def module_files() -> dict[str, pathlib.Path]:
  """Module name -> file, for every .py under the package (a package is its __init__.py)."""
  modules = {}
  for folder, _, files in os.walk(ROOT):
    for name in files:
      if name.endswith('.py'):
        path = pathlib.Path(folder) / name
        parts = list(path.relative_to(ROOT.parent).with_suffix('').parts)
        if parts[-1] == '__init__':
          parts.pop()
        modules['.'.join(parts)] = path
  return modules


def _is_type_checking(node: ast.If) -> bool:
  test = node.test
  return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (isinstance(test, ast.Attribute) and
                                                                         test.attr == 'TYPE_CHECKING')


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
  """Every import statement, at any depth, except those only run by type checkers."""
  stack = [tree]
  while stack:
    node = stack.pop()
    if isinstance(node, ast.If) and _is_type_checking(node):
      stack.extend(node.orelse)
      continue
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node
    stack.extend(ast.iter_child_nodes(node))


def _deepest_module(name: str, modules: dict[str, pathlib.Path]) -> str | None:
  """`name` or its longest prefix that is a module of the package (`a.b.attr` -> `a.b`)."""
  parts = name.split('.')
  while parts:
    candidate = '.'.join(parts)
    if candidate in modules:
      return candidate
    parts.pop()
  return None


def imports_of(module: str, modules: dict[str, pathlib.Path]) -> set[str]:
  """The package modules `module` imports: `import a.b`, `from a import b` (b a submodule or a name in a),
  and relative `from .x import y`."""
  path = modules[module]
  tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
  package = module if path.name == '__init__.py' else module.rpartition('.')[0]
  found = set()
  for node in _import_nodes(tree):
    if isinstance(node, ast.Import):
      targets = [alias.name for alias in node.names]
    else:
      base = node.module or ''
      if node.level:
        anchor = package.split('.')
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = '.'.join(anchor + ([base] if base else []))
      targets = [f'{base}.{alias.name}' if base else alias.name for alias in node.names]
    for target in targets:
      resolved = _deepest_module(target, modules)
      if resolved is not None and resolved != module:
        found.add(resolved)
  return found


def import_graph() -> dict[str, set[str]]:
  modules = module_files()
  return {m: imports_of(m, modules) for m in sorted(modules)}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """One concrete cycle (a -> b -> ... -> a) for each strongly connected group of modules (Tarjan)."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  groups: list[set[str]] = []

  def visit(node: str) -> None:
    index[node] = low[node] = len(index)
    stack.append(node)
    on_stack.add(node)
    for nxt in sorted(graph.get(node, ())):
      if nxt not in index:
        visit(nxt)
        low[node] = min(low[node], low[nxt])
      elif nxt in on_stack:
        low[node] = min(low[node], index[nxt])
    if low[node] == index[node]:
      group = set()
      while True:
        member = stack.pop()
        on_stack.discard(member)
        group.add(member)
        if member == node:
          break
      if len(group) > 1:
        groups.append(group)

  for node in sorted(graph):
    if node not in index:
      visit(node)
  return [_cycle_in(graph, group) for group in groups]


def _cycle_in(graph: dict[str, set[str]], group: set[str]) -> list[str]:
  """A shortest path from the group's first module back to itself, inside the group (breadth first)."""
  start = min(group)
  previous: dict[str, str] = {}
  frontier = [start]
  while frontier:
    following = []
    for node in frontier:
      for nxt in sorted(graph[node] & group):
        if nxt == start:
          path = [node]
          while path[-1] != start:
            path.append(previous[path[-1]])
          return path[::-1] + [start]
        if nxt not in previous:
          previous[nxt] = node
          following.append(nxt)
    frontier = following
  raise AssertionError(f'no cycle through {start} in {sorted(group)}')


def _reachable(graph: dict[str, set[str]], start: str) -> dict[str, str]:
  """Every module `start` imports, directly or not -> the module that imports it on the way."""
  seen = {start: ''}
  todo = [start]
  while todo:
    node = todo.pop()
    for nxt in sorted(graph[node]):
      if nxt not in seen:
        seen[nxt] = node
        todo.append(nxt)
  return seen


def _path(parents: dict[str, str], end: str) -> list[str]:
  path = [end]
  while parents[path[-1]]:
    path.append(parents[path[-1]])
  return path[::-1]


def package_of(module: str) -> str:
  """`jaxprompt.models.t5` -> 'models'; the root package `jaxprompt` is its own ('jaxprompt')."""
  parts = module.split('.')
  return parts[1] if len(parts) > 1 else parts[0]


def layer_violations(graph: dict[str, set[str]], layers: list[list[str]]) -> list[str]:
  """Every import of a package in a higher layer, or of another package of the same layer, as one line naming
  the importing module, the imported module and both layers. The root package sits below every layer."""
  level = {package: i for i, layer in enumerate(layers) for package in layer}
  level[PACKAGE] = -1

  def where(package: str) -> str:
    i = level[package]
    return 'below every layer' if i < 0 else f'layer {i} {layers[i]}'

  bad = [f'{m}: package {package_of(m)!r} is in no layer' for m in graph if package_of(m) not in level]
  for module, imported in sorted(graph.items()):
    mine = package_of(module)
    for other in sorted(imported):
      theirs = package_of(other)
      if mine not in level or theirs not in level or theirs == mine:
        continue
      if level[theirs] >= level[mine]:
        bad.append(f'{module} ({where(mine)}) imports {other} ({where(theirs)})')
  return bad


def documented_layers(text: str) -> list[list[str]]:
  """The ```layers block of docs/LAYERS.md: one layer a line, bottom first, its packages separated by spaces."""
  found = re.findall(r'^```layers\n(.*?)^```', text, re.M | re.S)
  assert len(found) == 1, f'{LAYERS_DOC} needs exactly one ```layers block, found {len(found)}'
  return [line.split() for line in found[0].splitlines() if line.strip()]


# ------------------------------------------------------------------------------------ the checker itself


def test_the_checker_resolves_imports_and_finds_cycles():
  graph = {'p': {'p.a'}, 'p.a': {'p.b'}, 'p.b': {'p.a', 'p.c'}, 'p.c': set(), 'p.d': {'p'}}
  assert find_cycles(graph) == [['p.a', 'p.b', 'p.a']]
  graph['p.c'] = {'p.d'}
  assert find_cycles(graph) == [['p', 'p.a', 'p.b', 'p.c', 'p.d', 'p']]
  modules = module_files()
  assert {'jaxprompt', 'jaxprompt.cli', 'jaxprompt.cli.main', 'jaxprompt.errors'} <= set(modules)
  assert 'jaxprompt.cli.main' in imports_of('jaxprompt.__main__', modules)  # `from jaxprompt.cli.main import main`
  assert 'jaxprompt.errors' in imports_of('jaxprompt.cli.parser', modules)  # `from jaxprompt.errors import X`
  assert {'jaxprompt.cli.console', 'jaxprompt.cli.parser'} <= imports_of('jaxprompt.cli.main', modules)


def test_the_layer_checker_names_both_modules_and_layers():
  layers = [['low'], ['left', 'right'], ['top']]
  graph = {
      'jaxprompt.low.a': set(), 'jaxprompt.left.b': {'jaxprompt.low.a', 'jaxprompt.left.c'}, 'jaxprompt.left.c': set(),
      'jaxprompt.right.d': {'jaxprompt.left.b'}, 'jaxprompt.top': {'jaxprompt.right.d'}, 'jaxprompt': set()
  }
  assert layer_violations(graph, layers) == [
      "jaxprompt.right.d (layer 1 ['left', 'right']) imports jaxprompt.left.b (layer 1 ['left', 'right'])"
  ]
  graph['jaxprompt.low.a'] = {'jaxprompt.top'}
  graph['jaxprompt.odd'] = set()
  assert layer_violations(graph, layers) == [
      "jaxprompt.odd: package 'odd' is in no layer",
      "jaxprompt.low.a (layer 0 ['low']) imports jaxprompt.top (layer 2 ['top'])",
      "jaxprompt.right.d (layer 1 ['left', 'right']) imports jaxprompt.left.b (layer 1 ['left', 'right'])"
  ]
  assert documented_layers('x\n```layers\nlow\nleft right\n\ntop\n```\n') == layers


# ------------------------------------------------------------------------------------ the package


def test_no_import_cycles():
  cycles = find_cycles(import_graph())
  assert not cycles, 'import cycles:\n' + '\n'.join(' -> '.join(c) for c in cycles)


def test_the_layer_list_is_the_documented_one():
  assert documented_layers(LAYERS_DOC.read_text(encoding='utf-8')) == LAYERS, (
      f'the ```layers block of {LAYERS_DOC} and LAYERS in {__file__} differ: change both')


def test_packages_import_only_lower_layers():
  bad = layer_violations(import_graph(), LAYERS)
  assert not bad, 'imports against the layer order (docs/LAYERS.md):\n' + '\n'.join(bad)


def test_the_cli_does_not_depend_on_the_demo():
  """`jaxprompt demo` is dispatched by name ('jaxprompt.demo.run:main'), never imported by the CLI."""
  graph = import_graph()
  bad = []
  for module in (m for m in graph if m == f'{PACKAGE}.cli' or m.startswith(f'{PACKAGE}.cli.')):
    parents = _reachable(graph, module)
    bad += [' -> '.join(_path(parents, m)) for m in sorted(parents) if m.startswith(f'{PACKAGE}.demo')][:1]
  assert not bad, 'the CLI imports the demo:\n' + '\n'.join(bad)


def test_no_module_is_longer_than_400_lines():
  long = {
      str(path.relative_to(ROOT.parent)): n
      for path in module_files().values()
      if (n := len(path.read_text(encoding='utf-8').splitlines())) > MAX_LINES
  }
  assert not long, f'modules over {MAX_LINES} lines: {long}'


def hidden_submodules(modules: dict[str, pathlib.Path]) -> list[str]:
  """Every top-level name of a package's __init__.py that is also one of its submodules' names but is bound to
  something else: `jaxprompt.methods.x` would then mean the module or that thing depending on how it is reached."""
  bad = []
  for package, path in sorted(modules.items()):
    if path.name != '__init__.py':
      continue
    submodules = {m.rpartition('.')[2] for m in modules if m.rpartition('.')[0] == package}
    for node in ast.parse(path.read_text(encoding='utf-8'), filename=str(path)).body:
      if isinstance(node, ast.ImportFrom):
        base = node.module or ''
        if node.level:
          base = '.'.join(package.split('.')[:len(package.split('.')) - (node.level - 1)] + ([base] if base else []))
        bound = {alias.asname or alias.name: f'{base}.{alias.name}' for alias in node.names}
      elif isinstance(node, ast.Import):
        bound = {alias.asname: alias.name for alias in node.names if alias.asname}
      elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        bound = {node.name: None}
      elif isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        bound = {t.id: None for t in targets if isinstance(t, ast.Name)}
      else:
        continue
      bad += [
          f'{package}: line {node.lineno} binds {name!r}, hiding module {package}.{name}'
          for name, source in bound.items()
          if name in submodules and source != f'{package}.{name}'
      ]
  return bad


def test_a_package_name_never_hides_its_submodule():
  bad = hidden_submodules(module_files())
  assert not bad, 'names that make an import path mean two things:\n' + '\n'.join(bad)


def calls_of(name: str, folders: tuple[str, ...] = (PACKAGE, 'tests', 'bench')) -> list[str]:
  """'path:line in function' of every call `name(...)` or `x.name(...)` in the .py files under `folders` (the
  innermost enclosing function; '<module>' outside any)."""
  found = []
  for folder in folders:
    for path in sorted((ROOT.parent / folder).rglob('*.py')):
      stack = [(ast.parse(path.read_text(encoding='utf-8'), filename=str(path)), '<module>')]
      while stack:
        node, where = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
          where = node.name
        callee = node.func if isinstance(node, ast.Call) else None
        if (isinstance(callee, ast.Name) and callee.id == name) or (isinstance(callee, ast.Attribute) and
                                                                    callee.attr == name):
          found.append(f'{path.relative_to(ROOT.parent)}:{node.lineno} in {where}')
        stack.extend((child, where) for child in ast.iter_child_nodes(node))
  return sorted(found)


def test_runtime_is_built_in_one_place():
  """`build_runtime` is the one constructor of a `Runtime`: the model, mesh, rules, steps and placed weights it
  holds must belong together, which a hand-assembled one (another mesh, the steps of another model) need not."""
  calls = calls_of('Runtime')
  assert [re.sub(r':\d+ in ', ' in ', c) for c in calls
         ] == ['jaxprompt/runtime/runtime.py in build_runtime'
              ], (f'Runtime(...) is called outside build_runtime: {calls}')
