"""Key paths of pytree leaves, in one spelling for the whole package.

``jax.tree_util`` names a leaf by a key path: a tuple of ``DictKey``
(``.key``), ``GetAttrKey`` (``.name``), ``SequenceKey`` (``.idx``) and
``FlattenedIndexKey`` (``.key``) entries. lmx's parameters are nested dicts
(``nnx.to_pure_dict``), so a path reads as plain keys:
``('blocks', 0, 'attn', 'qkv', 'kernel')``, or ``'blocks/0/attn/qkv/kernel'``
as one string.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax


def path_keys(path: Sequence[Any]) -> tuple:
  """The plain keys of a key path: ``('blocks', 0, 'attn', 'qkv',
  'kernel')``."""
  keys = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        keys.append(getattr(k, attr))
        break
    else:
      keys.append(k)
  return tuple(keys)


def path_str(path: Sequence[Any]) -> str:
  """``'blocks/0/attn/qkv/kernel'`` for a key path of a pytree leaf."""
  return '/'.join(str(k) for k in path_keys(path))


def leaves_by_path(tree) -> dict[tuple, Any]:
  """``{path_keys(path): leaf}`` of every leaf of ``tree``."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {path_keys(path): leaf for path, leaf in flat}
