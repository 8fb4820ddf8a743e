"""``retain compare``: anti-forgetting strategies side by side (see ``compare/run.py``)."""

from retain.compare.run import CompareRequest, run_compare

__all__ = ["CompareRequest", "run_compare"]
