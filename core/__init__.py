"""The update cycle and nothing else.

At the top, what every part shares: ``cycle.py`` (the stages, top to bottom), ``engine.py``
(the commands' options over them), ``run.py``, ``hookspecs.py``, ``pluginmanager.py``,
``contracts.py``, ``config.py``, ``errors.py``, ``loggers.py``. Then one subpackage per part:
``data`` (items in, shards), ``learning`` (training an experience), ``storage`` (the model
directory and its versions), ``quality`` (evaluation, the gate, drift, the retrain advice),
``runtime`` (processes, Ctrl-C, precision).
"""
