"""``retain update --auto``: a budgeted search over the update's recipe (Optuna), judged by the gate.

Built on core like ``retain compare``: ``search.auto_update`` runs it,
``space`` says what is searched and where it starts, ``trial`` runs one
candidate in a process of its own. Optuna is the optional ``auto`` extra
(``pip install 'retain[auto]'``).
"""

from .search import auto_update, default_executor

__all__ = ["auto_update", "default_executor"]
