"""A session's context: token counts, fitting the history into the model's window
(compression), reading an oversize message in parts, and compaction on request."""
