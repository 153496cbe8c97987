"""lmx.trees: one spelling of a leaf's key path."""

import dataclasses

import jax
import jax.numpy as jnp

from lmx import trees


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Box:
  value: jax.Array


def test_paths_read_as_plain_keys_of_dicts_lists_and_attributes():
  tree = {'blocks': [{'attn': {'qkv': {'kernel': Box(jnp.zeros(2))}}}],
          'head': jnp.ones(3)}
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  assert [trees.path_keys(p) for p in paths] == [
      ('blocks', 0, 'attn', 'qkv', 'kernel', 'value'), ('head',)]
  assert [trees.path_str(p) for p in paths] == [
      'blocks/0/attn/qkv/kernel/value', 'head']
  leaves = trees.leaves_by_path(tree)
  assert list(leaves) == [('blocks', 0, 'attn', 'qkv', 'kernel', 'value'),
                          ('head',)]
  assert leaves[('head',)].shape == (3,)
