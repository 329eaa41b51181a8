"""The OpenAI Realtime (GA) wire protocol as types, both ways: what clients send (`client_events`), what the
server sends (`server_events`), the `session` object (`session_fields`), and the error every client mistake
becomes (`errors`). Transports and the session build and read events only through these types."""
