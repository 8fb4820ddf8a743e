"""Steps 2-4: new data in, as items: sources read, cleaned, deduplicated, tokenized, held out."""
