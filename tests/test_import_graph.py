"""The package's shape, read statically with `ast` (nothing is imported): no import cycles, the command line
never depends on the demo (the demo depends on it), and no module grows past 400 lines.

Every import counts, also one inside a function: a lazy import still makes one module depend on the other.
Importing `a.b` runs `a/__init__.py` first, but that implicit parent import is not an edge: `a.b` and `a` form
a cycle only when each names the other in an import statement.
"""
from __future__ import annotations

import ast
import os
import pathlib
from typing import Iterator

PACKAGE = 'jaxprompt'
ROOT = pathlib.Path(__file__).resolve().parents[1] / PACKAGE
MAX_LINES = 400


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
  return (isinstance(test, ast.Name) and test.id == 'TYPE_CHECKING') or (
      isinstance(test, ast.Attribute) and test.attr == 'TYPE_CHECKING')


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


# ------------------------------------------------------------------------------------ the checker itself


def test_the_checker_resolves_imports_and_finds_cycles():
  graph = {'p': {'p.a'}, 'p.a': {'p.b'}, 'p.b': {'p.a', 'p.c'}, 'p.c': set(), 'p.d': {'p'}}
  assert find_cycles(graph) == [['p.a', 'p.b', 'p.a']]
  graph['p.c'] = {'p.d'}
  assert find_cycles(graph) == [['p', 'p.a', 'p.b', 'p.c', 'p.d', 'p']]
  modules = module_files()
  assert {'jaxprompt', 'jaxprompt.cli', 'jaxprompt.cli.main', 'jaxprompt.errors'} <= set(modules)
  assert 'jaxprompt.cli.main' in imports_of('jaxprompt.cli', modules)  # `from jaxprompt.cli.main import main`
  assert 'jaxprompt.errors' in imports_of('jaxprompt.cli.parser', modules)  # `from jaxprompt.errors import X`
  assert {'jaxprompt.cli.console', 'jaxprompt.cli.parser'} <= imports_of('jaxprompt.cli.main', modules)


# ------------------------------------------------------------------------------------ the package


def test_no_import_cycles():
  cycles = find_cycles(import_graph())
  assert not cycles, 'import cycles:\n' + '\n'.join(' -> '.join(c) for c in cycles)


def test_the_cli_does_not_depend_on_the_demo():
  """`jaxprompt demo` is dispatched by name ('jaxprompt.demo.run:main'), never imported by the CLI."""
  graph = import_graph()
  bad = []
  for module in (m for m in graph if m == f'{PACKAGE}.cli' or m.startswith(f'{PACKAGE}.cli.')):
    parents = _reachable(graph, module)
    bad += [' -> '.join(_path(parents, m)) for m in sorted(parents) if m.startswith(f'{PACKAGE}.demo')][:1]
  assert not bad, 'the CLI imports the demo:\n' + '\n'.join(bad)


def test_no_module_is_longer_than_400_lines():
  long = {str(path.relative_to(ROOT.parent)): n for path in module_files().values()
          if (n := len(path.read_text(encoding='utf-8').splitlines())) > MAX_LINES}
  assert not long, f'modules over {MAX_LINES} lines: {long}'
