"""One migration per schema change, applied in order at start."""
