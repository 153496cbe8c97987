"""Evaluate a trained run at unseen lengths.

    python eval.py --workdir=runs/alibi
    python eval.py --workdir=runs/alibi --lengths=64,512,4096
    python eval.py --workdir=runs/rope_randomized --config.positions.eval=contiguous

Loads the config saved in --workdir and its latest checkpoint. Any config
field can be overridden with --config.<field>=<value>, as in train.py (for
example the evaluation-time position sampling). Writes <workdir>/eval/:
results.json (loss against length, non-overlapping and sliding windows),
loss_vs_length.png, per_position.json/png, attention.json/png (attention
entropy and largest logit per layer against position) and, with
--config.eval.generation=true, generation.json/png (BLEU and ROUGE of greedy
continuations after each position, lmx.evaluation.generation) and, with
--config.eval.ood=true, ood.json/png (LM-Infinite's factors 1 and 3: logits
against distance, PCA of hidden states; lmx.evaluation.ood). A task run
(configs/tasks/) writes results.json with exact-match accuracy against task
length, accuracy_vs_length.png and, for passkey, passkey_heatmap.png;
--lengths are then task lengths. With
--config.eval.evaluators="('loss','longppl')" results.json adds LongPPL
(perplexity on the key tokens that need the long context; lmx.evaluation.
longppl). Every evaluation ends with the effective length of each
length-dependent score: the longest length keeping
config.eval.effective_fraction (0.85) of the in-distribution score
(lmx.evaluation.effective).

With --config.<field> overrides the results go to a folder of their own,
named from the overrides (<workdir>/eval_<field>=<value>,...), and record
them (results.json's "overrides"); the plain <workdir>/eval/ stays as it
was. --out=DIR chooses the folder explicitly.
"""

import os
import sys

from absl import app, flags

from lmx.training import checkpoint
from lmx import cli
from lmx.evaluation import runner as evaluation
from lmx.evaluation import generation as generation_eval
from lmx.evaluation import plots
from lmx.evaluation import task_accuracy as task_eval
from lmx.errors import CheckpointError, ConfigError, DataError


_RUN = cli.define_run_flags()
_LENGTHS, _OUT = cli.define_eval_flags()
# --help lists --workdir, --step, --config, --lengths and --out.
flags.adopt_module_key_flags(cli)


def override_dir(workdir: str, overrides: dict) -> str:
  """<workdir>/eval_<field>=<value>,... : the folder of an evaluation with
  ``--config.<field>`` overrides (long names end in a hash of them all)."""
  return os.path.join(workdir, evaluation.folder_name(overrides))


def main(argv):
  workdir = cli.run_workdir(argv, _RUN)
  overrides = {k: v for k, v in cli.overrides_in(sys.argv).items()}
  out = _OUT.value or (override_dir(workdir, overrides) if overrides
                       else os.path.join(workdir, 'eval'))
  try:
    checkpoint.require_run(workdir)  # one clear message for a missing run
    lengths = cli.int_list(_LENGTHS.value, '--lengths')
    results = evaluation.evaluate(_RUN.config.value, workdir, lengths,
                                  out, step=_RUN.step.value,
                                  overrides=overrides)
  except (ConfigError, DataError, CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # anything the checks before did not foresee
    print(f'error: {cli.os_error(e)}', file=sys.stderr)
    sys.exit(2)
  task = results.get('kind') == 'task'
  if task:  # the table names the task, encoding and positions
    print(f'step {results["step"]}: ' + task_eval.format_task_table(results))
  else:
    print(plots.titled(
        f'{results["position"]} (train {results["train_sampling"]}, eval '
        f'{results["eval_sampling"]} positions), step {results["step"]}',
        overrides, width=None) + ':')
    print(evaluation.format_table(results))
    if results.get('longppl'):
      print('LongPPL (Fang et al. 2025, self-contrast):')
      print(evaluation.format_longppl_table(results))
  if results.get('effective_length'):
    print(evaluation.format_effective(results))
  generation = results.get('generation')
  if generation is not None:
    print(f'Generation quality ({generation["tokens"]} greedy tokens after '
          f'each position, {generation["documents"]} validation documents):')
    print(generation_eval.format_table(generation))
  if results['skipped']:
    lengths = ', '.join(results['skipped'])
    first = next(iter(results['skipped'].values()))
    print(f'Skipped lengths {lengths}. For the first: {first}')
  if results.get('ood'):
    print(f'Out-of-distribution factors (LM-Infinite) at length '
          f'{results["ood"]["length"]}: ood.json, ood.png')
  # Each evaluator names the files it wrote (lmx.evaluation.evaluators).
  print(f'Wrote {", ".join(results["files"])} to {out}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
