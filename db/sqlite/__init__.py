"""What only SQLite does: a writer thread that commits a batch in one trip, multi-row
statements, a reader thread for the reads before a run, and message ids counted in process."""
