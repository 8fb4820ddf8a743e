"""What a run's process needs: its world of processes, Ctrl-C, precision, early imports."""
