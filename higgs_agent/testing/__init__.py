"""What tests and benchmarks share, kept apart from the agent: a local OpenAI-compatible chat server
(`fake_llm`), Twilio's side of a phone call (`phone_simulator`), and a real `serve` process started and waited
for (`serve_process`). Nothing here is used by the agent itself."""
