"""One WebRTC call: a peer connection (aiortc) around a transport-free `Session`, and the calls now live.

Where the caller's audio goes: the client's Opus track -> aiortc decodes it -> `Session.push_audio` at 48 kHz
(the session resamples it for the VAD and ASR). Where the reply's audio goes: the session -> `CallOutput` ->
the outgoing track, paced at real time (tracks.py). Client events arrive on the data channel (and from
sideband sockets) into one inbox that a single task hands to the session in arrival order.

A call ends, and with it its session (whose reply lets go of its engine slot at once), when the peer goes
away: the connection fails or closes (a page closed or reloaded closes it; a peer that vanished fails ICE's
consent checks), the event channel closes, no audio comes for `media_timeout_s`, the client never connects,
or someone hangs up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from aiortc import RTCDataChannel, RTCPeerConnection, RTCRtpSender, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from higgs_agent.agent.reply import OutputClosed
from higgs_agent.agent.services import AgentServices
from higgs_agent.agent.session import Session
from higgs_agent.protocol.errors import ProtocolError, new_id
from higgs_agent.transport.realtime_codec import deliver
from higgs_agent.transport.webrtc.ice import rtc_configuration
from higgs_agent.transport.webrtc.offer import ApiError
from higgs_agent.transport.webrtc.output import CallOutput, EventListener
from higgs_agent.transport.webrtc.settings import WebRTCSettings
from higgs_agent.transport.webrtc.tracks import ReplyAudioTrack, frame_to_mono

log = logging.getLogger(__name__)
PC_CLOSE_TIMEOUT_S = 5.0
MAX_INBOX = 256  # client events waiting for the session; past this the data channel's are dropped, and said so


class Call:
    def __init__(self, services: AgentServices, settings: WebRTCSettings, tenant: str) -> None:
        self.id = new_id("rtc")
        self.tenant = tenant
        self.services = services
        self.settings = settings
        end_soon = weakref.WeakMethod(self._end_soon)  # weakly: the output must not keep the call alive
        self.output = CallOutput(lambda reason: (method := end_soon()) is not None and method(reason),
                                 slow_client_timeout_s=services.slow_client_timeout_s,
                                 max_queued_audio_s=settings.max_queued_audio_s)
        self.track = ReplyAudioTrack(self.output)
        self.session = Session(services, self.output, tenant=tenant, transport="webrtc")  # its voices are the tenant's
        self.pc = RTCPeerConnection(rtc_configuration(settings.ice_servers))
        self.end_reason: str | None = None
        self.ended = asyncio.Event()
        self._connected = asyncio.Event()
        self._channel: RTCDataChannel | None = None
        self._inbox: asyncio.Queue[str | bytes] = asyncio.Queue(MAX_INBOX)
        self._dropped = 0  # data channel events dropped on a full inbox, not yet reported
        self._tasks: set[asyncio.Task] = set()
        self._ending: asyncio.Task | None = None
        self._on_end: list[Callable[[Call], None]] = []
        self._session_open = False

    # -- set-up -------------------------------------------------------------------------------------------

    async def start(self, offer_sdp: str, sessions: list[Mapping[str, Any]]) -> str:
        """Apply the session configs (a client secret's, then the request's), answer the offer, open the
        session; returns the SDP answer. ApiError (400) for a config or an offer that cannot be used."""
        notes = self._configure(sessions)
        self.pc.on("track", self._on_track)
        self.pc.on("datachannel", self._on_datachannel)
        self.pc.on("connectionstatechange", self._on_connection_state)
        # Made before the offer is read, so the offer's audio takes it, with Opus as its only codec.
        transceiver = self.pc.addTransceiver(self.track, direction="sendrecv")
        transceiver.setCodecPreferences([codec for codec in RTCRtpSender.getCapabilities("audio").codecs
                                         if codec.mimeType.lower() == "audio/opus"])
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        except Exception as exc:  # noqa: BLE001 - aiortc's parser raises many kinds; all mean a bad offer
            raise ApiError(400, f"the SDP offer could not be used: {exc or type(exc).__name__} (its audio must "
                           "offer Opus)", "invalid_offer", param="sdp") from None
        if transceiver.mid is None:
            raise ApiError(400, "the offer has no audio (m=audio): add a microphone track or a recvonly audio "
                           "transceiver", "invalid_offer", param="sdp")
        try:
            await self.pc.setLocalDescription(await self.pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - no common codec, no DTLS fingerprint, ...
            raise ApiError(400, f"the SDP offer could not be answered: {exc or type(exc).__name__}",
                           "invalid_offer", param="sdp") from None
        await self.session.open()
        self._session_open = True
        for note in notes:
            await self.session.report(note)
        self._spawn(self._handle_events(), "events")
        self._spawn(self._watch_connect(), "connect-timeout")
        log.info("call answered (%d ICE candidates offered)", self.pc.localDescription.sdp.count("a=candidate:"))
        return self.pc.localDescription.sdp

    def _configure(self, sessions: list[Mapping[str, Any]]) -> list[ProtocolError]:
        notes: list[ProtocolError] = []
        for raw in sessions:
            try:
                notes += self.session.configure(raw)
            except ProtocolError as exc:
                raise ApiError(400, exc.message, exc.code, param=exc.param) from None
        return notes

    # -- peer events --------------------------------------------------------------------------------------

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            self._spawn(self._pump_caller_audio(track), "caller-audio")

    def _on_datachannel(self, channel: RTCDataChannel) -> None:
        if self._channel is not None:
            log.info("ignoring a second data channel %r", channel.label)
            return
        self._channel = channel
        channel.on("message", self._on_message)
        channel.on("close", lambda: self._end_soon("the event channel closed"))
        self.output.attach_channel(channel)

    def _on_connection_state(self) -> None:
        state = self.pc.connectionState
        log.debug("connection %s", state)
        if state == "connected":
            self._connected.set()
        elif state in ("failed", "closed"):
            self._end_soon(f"the WebRTC connection {state}")

    def _on_message(self, message: str | bytes) -> None:
        try:
            self._inbox.put_nowait(message)
        except asyncio.QueueFull:
            self._dropped += 1

    # -- the call's work ----------------------------------------------------------------------------------

    async def submit(self, message: str | bytes) -> None:
        """A client event from a sideband socket (waits while the inbox is full)."""
        if self.end_reason is None:
            await self._inbox.put(message)

    async def _handle_events(self) -> None:
        try:
            while True:
                message = await self._inbox.get()
                if self._dropped:
                    dropped, self._dropped = self._dropped, 0
                    await self.session.report(ProtocolError(
                        "too_many_events", f"{dropped} events were dropped: they came faster than the session "
                        f"handles them ({MAX_INBOX} may wait)"))
                if isinstance(message, bytes):
                    await self.session.report(ProtocolError("invalid_event", "binary messages are not part of the "
                                                            "protocol; send JSON text, one event per message"))
                else:
                    await deliver(self.session, message)
        except OutputClosed as exc:
            self._end_soon(str(exc))

    async def _pump_caller_audio(self, track: MediaStreamTrack) -> None:
        await self._connected.wait()  # the media clock starts once there is a connection
        timeout = self.settings.media_timeout_s
        try:
            while True:
                # asyncio.timeout, not wait_for: wait_for runs recv() as a task of its own, whose stored exception
                # (a MediaStreamError when the track ends) and traceback made a cycle with this frame, and so
                # kept the call and its session alive until the cycle collector ran.
                async with asyncio.timeout(timeout):
                    frame = await track.recv()
                await self.session.push_audio(frame_to_mono(frame), frame.sample_rate)
        except TimeoutError:
            self._end_soon(f"no audio from the client for {timeout:g} s")
        except MediaStreamError:
            self._end_soon("the client's audio track ended")
        except OutputClosed as exc:
            self._end_soon(str(exc))
        except Exception:  # noqa: BLE001 - a bug in the audio path ends this call, not the server
            log.exception("the caller's audio could not be handled")
            self._end_soon("internal error on the caller's audio")

    async def _watch_connect(self) -> None:
        timeout = self.settings.connect_timeout_s
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            self._end_soon(f"the client did not connect within {timeout:g} s of the answer")

    def _spawn(self, work: Any, name: str) -> None:  # noqa: ANN401 - a coroutine
        task = asyncio.create_task(work, name=f"{self.id}-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- sideband listeners -------------------------------------------------------------------------------

    def attach(self, listener: EventListener) -> bool:
        """A sideband socket hears every event from now on; False when the call has ended."""
        if self.end_reason is not None:
            return False
        self.output.add_listener(listener)
        return True

    def detach(self, listener: EventListener) -> None:
        self.output.remove_listener(listener)

    # -- the end ------------------------------------------------------------------------------------------

    def on_end(self, callback: Callable[[Call], None]) -> None:
        self._on_end.append(callback)

    def _end_soon(self, reason: str) -> None:
        """End from a callback or one of the call's own tasks (which `end` cancels)."""
        if self._ending is None and self.end_reason is None:
            self._ending = asyncio.get_running_loop().create_task(self.end(reason), name=f"{self.id}-end")

    async def end(self, reason: str) -> None:
        """Close the session first (its reply's engine slot frees at once), then the peer connection."""
        if self.end_reason is not None:
            await self.ended.wait()
            return
        self.end_reason = reason
        log.info("call ended: %s", reason)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session_open:  # its reply is cancelled, as on any transport whose client left
            await self.session.close()
        await self.output.aclose(reason)
        self.track.stop()
        self.services.metrics.audio_seconds_out.inc(self.output.seconds_sent)
        for listener in self.output.listeners():
            listener.call_ended(reason)
        with contextlib.suppress(Exception):  # bounded: a peer that vanished must not hold the call open
            await asyncio.wait_for(self.pc.close(), PC_CLOSE_TIMEOUT_S)
        self._let_go()
        self.ended.set()
        for callback in self._on_end:
            callback(self)

    def _let_go(self) -> None:
        """Drop what refers back to this call: the peer connection's and the channel's handlers (bound to it)
        and its finished tasks (each holds its frames). Left alone, call -> pc -> handlers -> call keeps the
        session and its audio alive until a full collection, which a big process runs rarely (#20)."""
        self.pc.remove_all_listeners()
        if self._channel is not None:
            self._channel.remove_all_listeners()
        self._tasks.clear()


class CallRegistry:
    """The calls now live, by id; each leaves when it ends."""

    def __init__(self) -> None:
        self._calls: dict[str, Call] = {}

    def add(self, call: Call) -> None:
        self._calls[call.id] = call
        call.on_end(lambda ended: self._calls.pop(ended.id, None))

    def get(self, call_id: str, tenant: str) -> Call | None:
        """The call, if it is live and belongs to `tenant` (to anyone else it does not exist)."""
        call = self._calls.get(call_id)
        return call if call is not None and call.tenant == tenant and call.end_reason is None else None

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Call]:
        return iter(list(self._calls.values()))

    async def end_all(self, reason: str) -> None:
        await asyncio.gather(*(call.end(reason) for call in self), return_exceptions=True)
