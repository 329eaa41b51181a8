"""Streaming pieces of the voice agent: incremental codec decoding and friends."""
