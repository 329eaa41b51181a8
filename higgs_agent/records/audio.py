"""A session's audio on record, put back together from its chunks (store.py's `record_audio` rows).

The caller's track is everything the server heard, at 16 kHz (the rate the turn detector and transcriber hear:
a phone's 8 kHz and WebRTC's 48 kHz both arrive there), on the session's input clock; a chunk lost to a slow
database is silence. The agent's audio is each reply item's, at 24 kHz (the model's rate), cut where a barge-in
cut it (the item's `heard_ms`): what the listener heard, not what was made. The whole call is one stereo WAV at
24 kHz on the caller's clock, caller left and agent right: each reply where its first audio went out, or after
the reply before it if that was still playing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from higgs_agent.audio import resample
from higgs_agent.records.audio_codec import decode_flac
from higgs_agent.records.store import SessionAudio

CALLER_RATE = 16_000
AGENT_RATE = 24_000
CALL_RATE = AGENT_RATE


@dataclass(frozen=True)
class Sound:
    samples: np.ndarray  # int16: (n,) mono, or (n, 2)
    rate: int


def _laid_out(rows: list[dict], first: int = 0, end: int | None = None) -> np.ndarray:
    """Chunks placed at their `start`, from sample `first` to `end` (default: the last chunk's end); gaps silent."""
    stop = max((row["start"] + row["samples"] for row in rows), default=first) if end is None else end
    out = np.zeros(max(stop - first, 0), dtype=np.int16)
    for row in rows:
        lo, hi = max(row["start"], first), min(row["start"] + row["samples"], stop)
        if hi > lo:
            samples = decode_flac(row["data"])
            out[lo - first:hi - first] = samples[lo - row["start"]:hi - row["start"]]
    return out


def _track(rows: list[dict], track: str, item_id: str | None = None) -> list[dict]:
    return [row for row in rows if row["track"] == track and (item_id is None or row["item_id"] == item_id)
            and row["data"] is not None]


def _agent_item(rows: list[dict], item: dict | None) -> np.ndarray:
    samples = _laid_out(rows)
    if item is not None and item["truncated"] and item["heard_ms"] is not None:
        samples = samples[:int(round(item["heard_ms"] * AGENT_RATE / 1000))]
    return samples


def item_sound(found: SessionAudio, item_id: str) -> Sound | None:
    """One item's audio: a user turn's span of the caller track (16 kHz), the audio of an item the client
    created, or a reply's as heard (24 kHz); None when it has none on record."""
    rows = found.rows
    item = next((row for row in found.items if row["item_id"] == item_id), None)
    if spans := [row for row in rows if row["track"] == "turn" and row["item_id"] == item_id]:
        span = spans[-1]
        return Sound(_laid_out(_track(rows, "caller"), span["start"], span["start"] + span["samples"]), span["rate"])
    if created := _track(rows, "item", item_id):
        return Sound(_laid_out(created), created[0]["rate"])
    if said := _track(rows, "agent", item_id):
        return Sound(_agent_item(said, item), said[0]["rate"])
    return None


def call_sound(found: SessionAudio, side: str | None = None) -> Sound:
    """The whole call on the caller's clock: stereo at 24 kHz, the caller left and the agent right; or one side
    alone (`side`: caller, at 16 kHz as stored; agent, at 24 kHz)."""
    caller = _laid_out(_track(found.rows, "caller"))
    if side == "caller":
        return Sound(caller, CALLER_RATE)
    agent = _agent_side(found)
    if side == "agent":
        return Sound(agent, AGENT_RATE)
    left = resample(caller.astype(np.float32) / 32768.0, CALLER_RATE, CALL_RATE) if len(caller) else caller
    out = np.zeros((max(len(left), len(agent)), 2), dtype=np.int16)
    out[:len(left), 0] = np.clip(np.round(np.asarray(left) * 32768.0), -32768, 32767) if len(caller) else 0
    out[:len(agent), 1] = agent
    return Sound(out, CALL_RATE)


def _agent_side(found: SessionAudio) -> np.ndarray:
    """Each reply item's audio as heard, where its first audio went out on the caller's clock, or after the
    reply before it if that was still playing."""
    order = {row["item_id"]: row["seq"] for row in found.items}
    by_item: dict[str, list[dict]] = {}
    for row in _track(found.rows, "agent"):
        by_item.setdefault(row["item_id"], []).append(row)
    placed, end = [], 0
    for item_id, rows in sorted(by_item.items(), key=lambda pair: (pair[1][0]["at_ms"] or 0.0,
                                                                    order.get(pair[0], 0))):
        item = next((row for row in found.items if row["item_id"] == item_id), None)
        samples = _agent_item(rows, item)
        start = max(int(round((rows[0]["at_ms"] or 0.0) * AGENT_RATE / 1000)), end)
        placed.append((start, samples))
        end = start + len(samples)
    out = np.zeros(end, dtype=np.int16)
    for start, samples in placed:
        out[start:start + len(samples)] = samples
    return out
