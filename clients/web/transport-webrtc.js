// The Realtime protocol over WebRTC, as OpenAI's browser flow: the page POSTs its SDP offer to
// `/v1/realtime/calls` and gets the answer; the microphone goes out and the reply comes back as Opus tracks,
// and the JSON events flow on a data channel named `oai-events`. A real API key never goes to the call
// endpoint: with one, the page first mints a short-lived `ek_...` client secret and calls with that. A
// transcription session (captions) is asked for both ways OpenAI knows: the secret's session type, and
// `?intent=transcription` on the call.

import { ChatError, errorFromResponse } from "./errors.js";
import { authHeaders } from "./server.js";

const SECRET_LIFETIME_S = 600;
const ICE_GATHERING_WAIT_MS = 2000;
const CHANNEL_OPEN_TIMEOUT_MS = 15000;
const DISCONNECTED_GRACE_MS = 4000; // ICE "disconnected" often recovers by itself

export class WebRTCTransport {
  /** Resolves once the data channel is open; rejects with a ChatError. */
  static async connect({ baseUrl, apiKey, microphone, onEvent, onClose, onRemoteStream, intent = null }) {
    if (typeof RTCPeerConnection === "undefined") throw new ChatError("webrtc-failed", "no RTCPeerConnection");
    const token = apiKey ? await mintClientSecret(baseUrl, apiKey, intent ?? "realtime") : null;
    const peer = new RTCPeerConnection();
    const transport = new WebRTCTransport(peer, peer.createDataChannel("oai-events"));
    try {
      const [track] = microphone.getAudioTracks();
      peer.addTrack(track, microphone);
      peer.ontrack = (event) => onRemoteStream(event.streams[0] ?? new MediaStream([event.track]));
      transport.channel.onmessage = (message) => onEvent(JSON.parse(message.data));

      await peer.setLocalDescription(await peer.createOffer());
      await iceGatheringDone(peer); // the offer then carries our candidates: no trickle ICE needed
      const answer = await postOffer(baseUrl, token, peer.localDescription.sdp, intent);
      transport.callId = answer.callId;
      await peer.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      await channelOpen(transport.channel, peer);
    } catch (exc) {
      transport.close();
      throw exc instanceof ChatError ? exc : new ChatError("webrtc-failed", String(exc));
    }
    transport.watch(onClose);
    return transport;
  }

  constructor(peer, channel) {
    this.peer = peer;
    this.channel = channel;
    this.callId = null;
    this.closedByUs = false;
  }

  get kind() {
    return "webrtc";
  }

  send(event) {
    if (this.channel.readyState === "open") this.channel.send(JSON.stringify(event));
  }

  close() {
    this.closedByUs = true;
    this.channel.close();
    this.peer.close();
  }

  watch(onClose) {
    let grace = null;
    const lost = (why) => {
      if (this.closedByUs) return;
      this.closedByUs = true; // report once
      onClose(new ChatError("connection-lost", why));
    };
    this.channel.onclose = () => lost("the event channel closed");
    this.peer.onconnectionstatechange = () => {
      const state = this.peer.connectionState;
      clearTimeout(grace);
      if (state === "failed" || state === "closed") lost(`WebRTC connection ${state}`);
      if (state === "disconnected") grace = setTimeout(() => lost("WebRTC connection disconnected"), DISCONNECTED_GRACE_MS);
    };
  }
}

async function mintClientSecret(baseUrl, apiKey, sessionType) {
  const response = await request(`${baseUrl}/v1/realtime/client_secrets`, {
    method: "POST",
    headers: { ...authHeaders(apiKey), "Content-Type": "application/json" },
    body: JSON.stringify({ expires_after: { anchor: "created_at", seconds: SECRET_LIFETIME_S },
                           session: { type: sessionType } }),
  });
  if (!response.ok) throw await errorFromResponse(response, true);
  const secret = await response.json();
  if (!secret?.value) throw new ChatError("refused", "client_secrets answered without a value");
  return secret.value;
}

async function postOffer(baseUrl, token, sdp, intent) {
  const query = intent ? `?intent=${encodeURIComponent(intent)}` : "";
  const response = await request(`${baseUrl}/v1/realtime/calls${query}`, {
    method: "POST", body: sdp, headers: { ...authHeaders(token), "Content-Type": "application/sdp" },
  });
  if (!response.ok) throw await errorFromResponse(response, Boolean(token));
  const callId = response.headers.get("Location")?.split("/").pop() ?? null;
  return { sdp: await response.text(), callId };
}

async function request(url, init) {
  try {
    return await fetch(url, init);
  } catch (exc) {
    throw new ChatError("unreachable", String(exc));
  }
}

function iceGatheringDone(peer) {
  if (peer.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (peer.iceGatheringState !== "complete") return;
      peer.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    peer.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, ICE_GATHERING_WAIT_MS); // enough candidates by now; the rest would trickle unused
  });
}

function channelOpen(channel, peer) {
  if (channel.readyState === "open") return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new ChatError("webrtc-failed", `no connection after ${CHANNEL_OPEN_TIMEOUT_MS / 1000} s `
      + `(ICE ${peer.iceConnectionState})`)), CHANNEL_OPEN_TIMEOUT_MS);
    channel.addEventListener("open", () => { clearTimeout(timer); resolve(); }, { once: true });
    peer.addEventListener("connectionstatechange", () => {
      if (peer.connectionState === "failed") {
        clearTimeout(timer);
        reject(new ChatError("webrtc-failed", "ICE failed"));
      }
    });
  });
}
