"""Built-in plugins: sources, preprocessors, dedupers, validators.

They register through the ``retain`` entry-point group, like third-party plugins.
"""
