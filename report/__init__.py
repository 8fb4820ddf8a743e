"""What a person looks at after updates: ``retain history --plot`` (``plots.py``) and the
HTML page of one update, ``retain report`` and ``retain update --report`` (``page.py``).

Read from a model directory through the store's API, never from a run in memory, so any
version written so far can be drawn; matplotlib (Agg) is imported when a picture is drawn.
"""
