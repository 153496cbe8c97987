"""The shape of the code, as properties: lmx's import graph has no cycle
(imports inside functions included), and no module outside lmx/positions/
names a member of any method family (encodings, RoPE scalings, length
scalings, far branches and masks, position samplers): the registries do."""

import ast
import os

from lmx import positions
from lmx.positions import far
from lmx.positions import length_scaling
from lmx.positions import rope_scaling
from lmx.positions import sampling

# Every method family's registry: {family: {name: member}}.
FAMILIES = {
    'encoding': positions.REGISTRY,
    'rope scaling': rope_scaling.SCALINGS,
    'length scaling': length_scaling.REGISTRY,
    'far branch or mask': far.REGISTRY,
    'position sampler': sampling.REGISTRY,
}

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'lmx')


def _modules() -> dict[str, str]:
  """``{dotted module name: path}`` of every module of lmx."""
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(root, f)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[rel[:-len('.__init__')] if rel.endswith('__init__') else rel] = path
  return out


def _imports(name: str, path: str, modules) -> set[str]:
  """The lmx modules ``name`` imports, anywhere in its source."""
  out = set()
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        parts = package.split('.')
        base = '.'.join(parts[:len(parts) - node.level + 1] + (
            [base] if base else []))
      # `from lmx import config` imports the module lmx.config.validate.
      subs = {f'{base}.{a.name}' for a in node.names}
      out |= (subs & set(modules)) or {base}
  return {m for m in out if m in modules and m != name}


def _graph():
  modules = _modules()
  return {n: _imports(n, p, modules) for n, p in modules.items()}


def _cycle(graph):
  """A cycle of the graph as a list of modules, or None."""
  state, stack = {}, []

  def visit(n):
    state[n] = 'open'
    stack.append(n)
    for m in sorted(graph[n]):
      if state.get(m) == 'open':
        return stack[stack.index(m):] + [m]
      if m not in state:
        found = visit(m)
        if found:
          return found
    stack.pop()
    state[n] = 'done'
    return None

  for n in sorted(graph):
    if n not in state:
      found = visit(n)
      if found:
        return found
  return None


def test_the_import_graph_has_no_cycle():
  graph = _graph()
  assert len(graph) > 30 and 'lmx.positions.rope' in graph
  # The reader sees function-level imports too.
  assert 'lmx.training.checkpoint' in graph['lmx.model.decoding']
  cycle = _cycle(graph)
  assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_the_cycle_finder_finds_cycles():
  assert _cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}}) == ['a', 'b', 'c', 'a']
  assert _cycle({'a': {'b'}, 'b': set()}) is None


def _named(path: str, names: set[str]) -> list[str]:
  """String constants (docstrings aside) and attribute names of ``path``
  that are one of ``names``."""
  tree = ast.parse(open(path).read())
  docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                  ast.AsyncFunctionDef))
                and n.body and isinstance(n.body[0], ast.Expr)
                and isinstance(n.body[0].value, ast.Constant)}
  out = []
  for node in ast.walk(tree):
    if (isinstance(node, ast.Constant) and isinstance(node.value, str)
        and id(node) not in docstrings and node.value in names):
      out.append(f'{path}:{node.lineno}: {node.value!r}')
    elif isinstance(node, ast.Attribute) and node.attr in names:
      out.append(f'{path}:{node.lineno}: .{node.attr}')
  return out


# Strings that equal a registered name but mean something else there.
NOT_A_MEMBER = {
    # sacrebleu's tokenize='none': score the words as given (not NoPE).
    ('lmx.evaluation.generation', "'none'"),
    # config.model.remat='off': no rematerialisation (not a length scaling).
    ('lmx.model.transformer', "'off'"),
    ('lmx.config.defaults', "'off'"),
    # config.model.attention_gate='off': no gate (not a length scaling).
    ('lmx.model.gating', "'off'"),
}


def test_no_module_outside_positions_names_a_member_of_a_family():
  names = set().union(*FAMILIES.values())
  assert {'alibi', 'rope', 'yarn', 'dynamic', 'none', 'logn', 'rerope',
          'lm_infinite', 'sinks', 'pose', 'cape'} <= names
  found = []
  for name, path in _modules().items():
    if not name.startswith('lmx.positions'):
      found += [f for f in _named(path, names)
                if (name, f.rsplit(': ', 1)[1]) not in NOT_A_MEMBER]
  assert not found, 'named outside lmx/positions/:\n' + '\n'.join(found)


def test_the_name_finder_finds_names(tmp_path):
  path = tmp_path / 'm.py'
  path.write_text('"""rope in a docstring is fine."""\n'
                  "x = cfg.model.rope\nif p == 'alibi':\n  pass\n")
  assert _named(str(path), {'rope', 'alibi'}) == [
      f'{path}:2: .rope', f"{path}:3: 'alibi'"]


def test_the_docs_table_of_scalings_is_the_registry():
  """docs/extensions.md's table of RoPE scalings lists exactly the
  registered methods, in the registry's order."""
  text = open(os.path.join(ROOT, 'docs', 'extensions.md')).read()
  head = '| `scaling` | method | fields used |'
  assert head in text
  rows = text.split(head, 1)[1].strip().splitlines()[1:]
  names = []
  for row in rows:
    if not row.startswith('| `'):
      break
    names.append(row.split('`')[1])
  assert tuple(names) == rope_scaling.METHODS
