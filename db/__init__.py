"""Chatrun's database layer: models, engine and the store that owns all database access."""
