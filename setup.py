"""lmx: length-extrapolation research on small JAX/Flax Transformers."""

from setuptools import find_packages, setup

setup(
    name='lmx',
    version='0.1.0',
    description='Train Transformers short, evaluate them long: pluggable '
                'position encodings and length-extrapolation methods in '
                'JAX/Flax.',
    long_description=open('README.md').read(),
    long_description_content_type='text/markdown',
    packages=find_packages(include=['lmx', 'lmx.*']),
    python_requires='>=3.10',
    install_requires=[
        'jax>=0.10',
        'flax>=0.12',
        'optax>=0.2.5',
        'orbax-checkpoint>=0.12',
        'tensorflow-datasets>=4.9.10',
        'array_record>=0.8',
        'importlib_resources',   # tfds needs it for local builders
        'ml-collections>=1.0',
        'absl-py',
        'numpy',
        'matplotlib',
        'tqdm',
        'tensorboardX',
        'submitit>=1.5',       # sweep.py: local and SLURM launchers
        'sacrebleu>=2.4',     # lmx.evaluation.generation: BLEU
        'rouge-score>=0.1.2',  # lmx.evaluation.generation: ROUGE
        'sentencepiece>=0.2',  # lmx.data.subword: subword tokenizers
        'pyarrow>=14',         # lmx.data.sources: parquet corpora
        'zstandard>=0.22',     # lmx.data.sources: .jsonl.zst corpora
    ],
    extras_require={
        'test': ['pytest>=8', 'pytest-xdist>=3', 'hypothesis>=6', 'ruff>=0.6'],
        # Preparing tfds *catalog* datasets (e.g. pg19) needs TensorFlow.
        'tf': ['tensorflow'],
        # bench/train_throughput.py, bench/long_peer.py: x-transformers
        # (PyTorch, CPU build);
        # bench/profile_step.py: xprof, to read the trace.
        'bench': ['torch==2.13.0', 'x-transformers', 'xprof'],
        # bench/aot.py: XLA's TPU compiler (libtpu) to compile for TPU
        # slices from a CPU host; pinned to the JAX that the core resolves.
        # Install it in its own environment: with libtpu present every JAX
        # start looks for a TPU first.
        'tpu': ['jax[tpu]==0.10.2'],
        # bench/aot.py: XLA's GPU compiler (the CUDA plugin) to compile for
        # NVIDIA GPUs from a CPU host, pinned likewise; its own environment
        # too, apart from [tpu].
        'gpu': ['jax[cuda12]==0.10.2'],
    },
)
