"""embtune_utils: the helper package of the embtune course (one module per step of the course)."""

import os

# bm25s imports JAX where it is installed (Colab preinstalls it), and JAX's CUDA backend then preallocates 75% of the
# GPU (measured on an H200: 0.5 -> 105 GiB in use), leaving a T4 too little for training. JAX allocates on demand
# with this; set it before anything imports bm25s.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

__version__ = "0.1.0"
