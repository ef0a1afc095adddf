"""Several nodes on one PostgreSQL database and one Redis: session ownership, the shared event
log, and commands between nodes."""
