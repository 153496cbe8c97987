"""Generate text from a trained run.

    python generate.py --workdir=runs/rope --prompt='def main(' \
        --max_new_tokens=200 --temperature=0.8 --top_k=40 --seed=0
    python generate.py --workdir=runs/rope --prompt='import ' --temperature=0
    python generate.py --workdir=runs/rope --max_new_tokens=4000 \
        --config.model.lm_infinite.n_global=10 \
        --config.model.lm_infinite.n_local=64

Loads the config saved in --workdir and the parameters of its latest
checkpoint (--step=N for another). Any config field can be overridden with
--config.<field>=<value>, as in eval.py (e.g. LM-Infinite's Lambda-shaped
mask, whose KV cache is bounded, or a RoPE scaling). The prompt is encoded
by the run's tokenizer (bytes, or the SentencePiece model the run keeps in
its workdir), and the prompt and its continuation are decoded by it and
printed. --temperature=0 is greedy decoding; --top_k=K samples among the K
most likely tokens (0: all).
Same seed, same text. Bad input exits with 2 and one message.
"""

import sys

from absl import app, flags

from lmx.training import checkpoint
from lmx.config import fields as checks
from lmx import cli
from lmx.config import validate as config_lib
from lmx.model import decoding
from lmx.errors import CheckpointError, ConfigError, DataError


_RUN = cli.define_run_flags()
flags.adopt_module_key_flags(cli)  # --help lists --workdir, --step, --config
_PROMPT = flags.DEFINE_string('prompt', '', 'Text to continue (encoded by '
                              "the run's tokenizer); empty: start a new "
                              'document.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 200, 'Tokens to generate '
                                "(bytes, or the run's subword tokens).")
_TEMPERATURE = flags.DEFINE_float('temperature', 1.0, 'Sampling temperature; '
                                  '0 = greedy.')
_TOP_K = flags.DEFINE_integer('top_k', 0, 'Sample among the K most likely '
                              'tokens; 0 = all.')
_SEED = flags.DEFINE_integer('seed', 0, 'Sampling seed.')
_STOP_AT_EOD = flags.DEFINE_bool('stop_at_eod', False, 'Stop at the '
                                 'end-of-document token.')


def main(argv):
  workdir = cli.run_workdir(argv, _RUN)
  try:
    # jax.random.PRNGKey(seed) alone reads it: any int64.
    checks.check_seed(_SEED.value, '--seed', lo=-checks.INT64_MAX - 1)
    checkpoint.require_run(workdir)  # one clear message for a missing run
    config = _RUN.config.value
    config_lib.validate(config)
    text, _ = decoding.generate_from_run(
        config, workdir, _PROMPT.value, _MAX_NEW.value,
        temperature=_TEMPERATURE.value, top_k=_TOP_K.value, seed=_SEED.value,
        step=_RUN.step.value, stop_at_eod=_STOP_AT_EOD.value)
  except (ConfigError, DataError, CheckpointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  except OSError as e:  # anything the checks before did not foresee
    print(f'error: {cli.os_error(e)}', file=sys.stderr)
    sys.exit(2)
  print(text)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
