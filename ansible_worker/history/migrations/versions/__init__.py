"""One module per schema version; each names the one before it."""
