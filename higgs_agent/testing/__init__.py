"""Offline stand-ins that the tests and benchmarks share: a local OpenAI-compatible chat server (`fake_llm`).
Nothing here is used by the agent itself."""
