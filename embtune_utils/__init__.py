"""embtune_utils: the helper package of the embtune course (one module per step of the course)."""

__version__ = "0.1.0"
