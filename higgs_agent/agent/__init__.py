"""The realtime voice agent: sessions, turn detection, wire events."""
