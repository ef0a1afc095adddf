"""Chatrun: a real-time chat backend over LLM and agent runs."""

__version__ = "0.1.0"
