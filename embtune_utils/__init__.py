"""embtune_utils: the helper package of the embtune course (one module per step of the course)."""

import os
import warnings

# bm25s imports JAX where it is installed (Colab preinstalls it), and JAX's CUDA backend then preallocates 75% of the
# GPU (measured on an H200: 0.5 -> 105 GiB in use), leaving a T4 too little for training. JAX allocates on demand
# with this; set it before anything imports bm25s.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
# JAX, once imported, warns at every fork that forking a multithreaded process may deadlock. The course forks only
# DataLoader workers on GPUs, which tokenize and never touch JAX; the warning (with its file path) is noise there.
warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)

# transformers 5 draws a progress bar for every model it loads ("Loading weights") or saves ("Writing model
# shards"); in a notebook's committed outputs those are noise. They read this flag when first imported.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

__version__ = "0.1.0"
