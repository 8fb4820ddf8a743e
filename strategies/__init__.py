"""Built-in anti-forgetting strategies, registered through the ``retain`` entry-point group."""
