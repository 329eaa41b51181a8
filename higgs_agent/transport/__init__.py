"""Transports: move bytes between clients and the agent; they know nothing of tokens."""
