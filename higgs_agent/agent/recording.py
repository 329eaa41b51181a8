"""A session on record: its observer turns the domain events (agent/events.py) into the records' writes.

Events carry live items, so each write copies the fields it needs at once. The writes go to the records'
writer thread (records/writer.py) without waiting: recording costs the event loop a few dict copies per event,
and a slow or absent database costs it nothing.
"""

from __future__ import annotations

import time
from typing import Any

from higgs_agent.agent.conversation import ConversationItem, ToolCall
from higgs_agent.agent.events import (
    CallerUnderstood,
    DomainEvent,
    ItemAdded,
    ItemDeleted,
    ItemFinished,
    ReplyCut,
    ReplyFinished,
    ReplyItemAdded,
    ReplyItemDone,
    SessionOpened,
    TurnTimed,
    UserTranscribed,
)
from higgs_agent.records.store import ItemWrite, LatencyWrite, SessionEnded, SessionStarted, Write
from higgs_agent.records.writer import RecordWriter


class SessionRecorder:
    """One session's record: `observe` is its observer (`Session.observe`), `end` marks it over."""

    def __init__(self, writer: RecordWriter, session_id: str, tenant: str, transport: str) -> None:
        self.writer = writer
        self.session_id = session_id
        self.tenant = tenant
        self.transport = transport
        self._seq: dict[str, int] = {}  # item id -> its place in the record

    def observe(self, event: DomainEvent) -> None:
        match event:
            case SessionOpened(config):
                self._put(SessionStarted(self.session_id, self.tenant, self.transport, config.model, time.time()))
            case ItemAdded(item) | ItemFinished(item):
                self._item(item.id, _snapshot(item))
            case ReplyItemAdded(place, item) | ReplyItemDone(place, item):
                self._item(item.id, {**_snapshot(item), "response_id": place.response_id})
            case UserTranscribed(item_id, text, language):
                self._item(item_id, {"text": text, **({"language": language} if language else {})})
            case CallerUnderstood(item_id, context):
                self._item(item_id, {"context": context.to_event_fields()})
            case ReplyFinished(response_id, _, item_id, text) if item_id is not None:
                self._item(item_id, {"text": text, "response_id": response_id})
            case ReplyCut(item_id, heard_ms):
                self._item(item_id, {"truncated": True, "heard_ms": round(heard_ms, 1)})
            case ItemDeleted(item_id):
                self._item(item_id, {"deleted": True})
            case TurnTimed(response_id, user_item_id, reply_item_id, stages_ms):
                self._put(LatencyWrite(self.session_id, response_id, user_item_id, reply_item_id, time.time(),
                                       dict(stages_ms)))

    def end(self) -> None:
        self._put(SessionEnded(self.session_id, time.time()))

    def _item(self, item_id: str, fields: dict[str, Any]) -> None:
        seq = self._seq.setdefault(item_id, len(self._seq))
        self._put(ItemWrite(self.session_id, item_id, seq, time.time(), fields))

    def _put(self, write: Write) -> None:
        self.writer.put(write)


def _snapshot(item: ConversationItem) -> dict[str, Any]:
    """The item's fields as they stand now (words left out while there are none yet: a later write has them)."""
    fields: dict[str, Any] = {"role": item.role, "kind": item.kind, "content_type": item.content_type,
                              "status": item.status}
    if item.text is not None:
        fields["text"] = item.text
    if item.language:
        fields["language"] = item.language
    if item.context is not None:
        fields["context"] = item.context.to_event_fields()
    if item.call is not None:
        fields["call"] = _call(item.call)
    return fields


def _call(call: ToolCall) -> dict[str, Any]:
    found = {"call_id": call.call_id, "name": call.name, "arguments": call.arguments,
             "server_label": call.server_label, "output": call.output, "error": call.error,
             "approval_request_id": call.approval_request_id, "approve": call.approve, "reason": call.reason}
    return {name: value for name, value in found.items() if value not in (None, "")}
