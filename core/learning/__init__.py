"""Step 6: training an experience, its strategies, its loss, its epochs and retries."""
