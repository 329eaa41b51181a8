// The voice-chat page: one conversation with the agent over WebRTC or a WebSocket, both speaking the OpenAI
// Realtime protocol; or, in captions mode, a transcription session (live captions of what the microphone hears,
// no replies). This module owns the call's lifecycle and reacts to the server's events; audio.js moves
// the sound, the transport modules move the events, view.js draws.

import { AudioGraph, openMicrophone } from "./audio.js";
import { ChatError } from "./errors.js";
import { FALLBACK_VOICES, listVoices } from "./server.js";
import { decodeAudio, encodeAudio, WebSocketTransport } from "./transport-websocket.js";
import { WebRTCTransport } from "./transport-webrtc.js";
import { ChatView } from "./view.js";

const BASE_URL = location.origin;
const RECENT_SOUND_MS = 300; // output heard this recently counts as "the agent is talking" (barge-in)
const HISTORY_LIMIT = 2000; // output level reports kept for the page's own measurements (~100 s)

class VoiceChat {
  constructor(view) {
    this.view = view;
    this.transport = null;
    this.graph = null;
    this.microphone = null;
    this.reset();
  }

  reset() {
    this.mode = document.getElementById("mode").value; // "conversation" | "captions", fixed for the session
    this.response = null; // {id, itemId} of the reply in progress on the server
    this.queuedItems = new Set(); // WebSocket: reply items with audio queued or playing here
    this.interrupted = new Set(); // response ids cut off by a barge-in: their late audio is dropped
    this.turnClock = null; // {userItemId, stoppedAt, itemId}: the page's own time-to-first-audio
    this.lastReplyItem = null; // the latest reply item: the one a barge-in cuts
    this.userSpeaking = false;
    // What the page measured, for anyone who wants the numbers (tests read it through window.voiceChat):
    // reply audio received and played per item (ms), truncates sent, barge-ins, time to first audio per user
    // turn, the output meter's cumulative ms of sound over time, responses, errors, the session's voice.
    this.stats = { receivedMs: {}, playedMs: {}, truncates: [], bargeIns: [], firstAudioMs: {}, output: [],
                   lastSoundAt: 0, responses: [], serverCuts: [], errors: [], voice: null, transport: null,
                   callId: null, sessionType: null, deltas: 0 };
  }

  get live() {
    return this.transport !== null;
  }

  // --- lifecycle ---------------------------------------------------------------------------------------

  async start() {
    this.view.clearError();
    this.reset();
    this.view.status("connecting", "Starting the microphone…");
    try {
      this.microphone = await openMicrophone();
      this.graph = await AudioGraph.create(this.microphone);
      this.#wireAudio();
      this.view.status("connecting", "Connecting…");
      this.transport = await this.#connect(document.getElementById("transport").value);
      this.stats.transport = this.transport.kind;
      this.stats.callId = this.transport.callId ?? null;
      this.#configureSession();
      if (this.transport.kind === "websocket") {
        this.graph.captureMicrophone((pcm) => this.send({ type: "input_audio_buffer.append", audio: encodeAudio(pcm) }));
      }
      this.view.status("listening", "Listening");
    } catch (exc) {
      await this.stop(exc instanceof ChatError ? exc : new ChatError("unexpected", String(exc)));
    }
  }

  async stop(error = null) {
    const { transport, graph, microphone } = this;
    this.transport = this.graph = this.microphone = null;
    transport?.close();
    microphone?.getTracks().forEach((track) => track.stop());
    await graph?.close();
    if (error) {
      this.stats.errors.push({ kind: error.kind, detail: error.detail });
      this.view.error(error);
      this.view.status("error", "Stopped");
    } else {
      this.view.status("idle", "Ready");
    }
    this.view.levels(0, 0);
  }

  send(event) {
    this.transport?.send(event);
  }

  async #connect(choice) {
    const options = {
      baseUrl: BASE_URL, apiKey: document.getElementById("api-key").value.trim(),
      intent: this.mode === "captions" ? "transcription" : null,
      onEvent: (event) => this.handle(event), onClose: (error) => this.stop(error),
    };
    if (choice === "websocket") return WebSocketTransport.connect(options);
    try {
      return await WebRTCTransport.connect({ ...options, microphone: this.microphone,
                                              onRemoteStream: (stream) => this.graph?.playRemoteStream(stream) });
    } catch (exc) {
      // "auto": a server without WebRTC, or a network where it cannot connect, still gets a call.
      if (choice !== "auto" || !(exc instanceof ChatError) || !["no-webrtc", "webrtc-failed"].includes(exc.kind)) throw exc;
      return WebSocketTransport.connect(options);
    }
  }

  #configureSession() {
    if (this.mode === "captions") {
      const input = { turn_detection: { type: "server_vad" } };
      if (this.transport.kind === "websocket") input.format = { type: "audio/pcm", rate: 24000 };
      this.send({ type: "session.update", session: { type: "transcription", audio: { input } } });
      return;
    }
    const voice = document.getElementById("voice").value || "default";
    const audio = { output: { voice } };
    if (this.transport.kind === "websocket") {
      audio.input = { format: { type: "audio/pcm", rate: 24000 } };
      audio.output.format = { type: "audio/pcm", rate: 24000 };
    }
    // `higgs`: opt in to the server's extension events (latency stages, who is speaking).
    this.send({ type: "session.update", session: { type: "realtime", audio, higgs: { extension_events: true } } });
  }

  #wireAudio() {
    const graph = this.graph;
    graph.onInputLevel = ({ peak }) => this.view.levels(peak, undefined);
    graph.onOutputLevel = (level) => {
      this.view.levels(undefined, level.peak);
      if (level.peak > 1e-3) this.stats.lastSoundAt = level.at;
      this.stats.output.push({ at: level.at, audibleMs: (level.audibleSamples / level.rate) * 1000 });
      if (this.stats.output.length > HISTORY_LIMIT) this.stats.output.shift();
      if (this.live) this.#showActivity();
    };
    graph.onOnset = (at) => this.#firstAudioHeard(at);
    graph.onPlaybackFinished = (itemId, playedMs) => {
      this.queuedItems.delete(itemId);
      this.stats.playedMs[itemId] = playedMs;
    };
  }

  #showActivity() {
    if (this.userSpeaking) this.view.status("hearing", "Hearing you");
    else if (performance.now() - this.stats.lastSoundAt < RECENT_SOUND_MS) this.view.status("speaking", "Agent speaking");
    else if (this.turnClock && this.turnClock.heardAt === undefined && this.mode !== "captions") {
      this.view.status("thinking", "Thinking…");
    }
    else this.view.status("listening", "Listening");
  }

  // --- server events -----------------------------------------------------------------------------------

  handle(event) {
    switch (event.type) {
      case "session.created":
      case "session.updated":
        this.stats.voice = event.session?.audio?.output?.voice ?? null;
        this.stats.sessionType = event.session?.type ?? null; // "transcription" in captions mode
        break;
      case "input_audio_buffer.speech_started":
        this.userSpeaking = true;
        this.view.userTurn(event.item_id);
        this.#bargeIn();
        break;
      case "input_audio_buffer.speech_stopped":
        this.userSpeaking = false;
        this.turnClock = { userItemId: event.item_id, stoppedAt: performance.now(), itemId: null };
        this.graph?.armOnset();
        break;
      case "conversation.item.input_audio_transcription.delta":
        this.stats.deltas += 1;
        this.view.userPartial(event.item_id, event.delta);
        break;
      case "conversation.item.input_audio_transcription.completed":
        this.view.userText(event.item_id, event.transcript);
        break;
      case "conversation.item.input_audio_transcription.failed":
        this.view.userText(event.item_id, "(could not transcribe)");
        break;
      case "response.created":
        this.response = { id: event.response.id, itemId: null };
        this.stats.responses.push({ id: event.response.id, at: performance.now() });
        this.graph?.unmute(); // a new reply: whatever the barge-in silenced is gone by now
        break;
      case "output_audio_buffer.cleared": // WebRTC: the server dropped the reply audio it still held
        this.graph?.unmute();
        break;
      case "response.output_item.added":
        this.#replyItem(event.response_id, event.item.id);
        break;
      case "response.output_audio_transcript.delta":
        this.#replyItem(event.response_id, event.item_id);
        this.view.assistantText(event.item_id, event.delta);
        break;
      case "response.output_audio.delta":
        this.#replyAudio(event);
        break;
      case "response.output_audio.done":
        this.graph?.endItem(event.item_id);
        break;
      case "response.done":
        this.#responseDone(event.response);
        break;
      case "conversation.item.truncated":
        this.stats.serverCuts.push(event.item_id);
        this.view.assistantStatus(event.item_id, `interrupted at ${(event.audio_end_ms / 1000).toFixed(1)} s`, "interrupted");
        break;
      case "higgs.turn.latency":
        this.view.stages(event.latency_ms);
        break;
      case "higgs.input.context":
        this.view.context(event.item_id, event);
        break;
      case "error":
        this.#serverError(event.error ?? {});
        break;
      default:
        break;
    }
  }

  #replyItem(responseId, itemId) {
    this.view.assistantTurn(itemId, responseId);
    this.lastReplyItem = itemId;
    if (this.response?.id === responseId) this.response.itemId = itemId;
    if (this.turnClock && !this.turnClock.itemId) this.turnClock.itemId = itemId;
    if (this.turnClock?.heardAt !== undefined && this.turnClock.itemId === itemId) {
      this.view.firstAudio(itemId, this.turnClock.heardAt - this.turnClock.stoppedAt);
    }
  }

  #replyAudio(event) {
    if (this.interrupted.has(event.response_id) || !this.graph) return; // cut off: the listener moved on
    const pcm = decodeAudio(event.delta);
    this.stats.receivedMs[event.item_id] = (this.stats.receivedMs[event.item_id] ?? 0) + pcm.byteLength / 48;
    this.queuedItems.add(event.item_id);
    this.graph.enqueue(event.item_id, pcm);
  }

  #responseDone(response) {
    const itemId = response.output?.[0]?.id;
    const record = this.stats.responses.find((entry) => entry.id === response.id);
    if (record) Object.assign(record, { doneAt: performance.now(), status: response.status });
    if (this.response?.id === response.id) this.response = null;
    if (response.status === "cancelled" && itemId) {
      this.stats.serverCuts.push(itemId);
      this.view.assistantStatus(itemId, "interrupted", "interrupted", { keepDetail: true });
    }
    const error = response.status_details?.error;
    if (response.status === "failed" && error) this.#serverError(error);
  }

  #serverError(error) {
    const detail = [error.code, error.message].filter(Boolean).join(": ");
    this.view.error(new ChatError(error.code === "at_capacity" ? "at-capacity" : "server-error", detail));
    this.stats.errors.push({ kind: error.code, detail });
  }

  /** The user started talking: if the agent is talking, stop its audio here at once and tell the server
   * how much of it was heard (WebSocket; over WebRTC the server knows what it sent). */
  async #bargeIn() {
    const talking = this.response !== null || this.queuedItems.size > 0
      || performance.now() - this.stats.lastSoundAt < RECENT_SOUND_MS;
    if (!talking || !this.graph) return;
    const response = this.response;
    if (response) this.interrupted.add(response.id);
    this.graph.mute();
    const cut = response?.itemId ?? this.lastReplyItem;
    this.stats.bargeIns.push({ at: performance.now(), responseId: response?.id ?? null, itemId: cut });
    if (cut) this.view.assistantStatus(cut, "interrupted", "interrupted", { keepDetail: true });
    this.turnClock = null;
    // WebRTC: the gate stays shut until the next reply, as the server may still be sending this one.
    if (this.transport?.kind !== "websocket") return;
    const flushed = await this.graph.flush();
    this.graph?.unmute(); // the queue is empty and the cut reply's late audio is dropped on arrival
    this.queuedItems.clear();
    // The item that was playing (or queued) is cut where playback stood; a reply with no audio here yet is
    // cut at 0; a reply that had finished playing was heard whole and is left alone.
    let itemId = flushed.itemId;
    let heardMs = flushed.playedMs;
    if (!itemId && response?.itemId && !this.stats.receivedMs[response.itemId]) [itemId, heardMs] = [response.itemId, 0];
    if (!itemId) return;
    const truncate = { type: "conversation.item.truncate", item_id: itemId, content_index: 0,
                       audio_end_ms: Math.floor(heardMs) };
    this.stats.truncates.push({ ...truncate, droppedMs: flushed.droppedMs });
    this.stats.playedMs[itemId] = truncate.audio_end_ms;
    this.send(truncate);
  }

  #firstAudioHeard(at) {
    const clock = this.turnClock;
    if (!clock || clock.heardAt !== undefined) return;
    clock.heardAt = at;
    const ms = at - clock.stoppedAt;
    this.stats.firstAudioMs[clock.userItemId] = ms;
    if (clock.itemId) this.view.firstAudio(clock.itemId, ms);
    else this.view.firstAudio(null, ms);
  }
}

// --- page wiring -------------------------------------------------------------------------------------------

const view = new ChatView();
const chat = new VoiceChat(view);
window.voiceChat = chat; // for the console and the page's browser tests

const remembered = (id, storage, fallback) => {
  const element = document.getElementById(id);
  element.value = storage.getItem(`higgs.${id}`) ?? fallback;
  element.addEventListener("change", () => storage.setItem(`higgs.${id}`, element.value));
  return element;
};

remembered("transport", localStorage, "auto");
const modeSelect = remembered("mode", localStorage, "conversation");
const showMode = () => { document.body.dataset.mode = modeSelect.value; };
showMode();
modeSelect.addEventListener("change", showMode); // a live session keeps its own mode until the next Talk
remembered("api-key", sessionStorage, "");

const voiceSelect = document.getElementById("voice");
view.voices(FALLBACK_VOICES, "default");
async function loadVoices() {
  const voices = await listVoices(BASE_URL, document.getElementById("api-key").value.trim());
  view.voices(voices, localStorage.getItem("higgs.voice") ?? "default");
  if (!voiceSelect.value) voiceSelect.selectedIndex = 0;
  document.body.dataset.voicesLoaded = "true";
}
loadVoices();
document.getElementById("api-key").addEventListener("change", loadVoices); // a key may unlock its own voices
voiceSelect.addEventListener("change", () => {
  localStorage.setItem("higgs.voice", voiceSelect.value);
  if (chat.live && chat.mode === "conversation") {
    chat.send({ type: "session.update", session: { type: "realtime", audio: { output: { voice: voiceSelect.value } } } });
  }
});

document.getElementById("settings").addEventListener("submit", (event) => event.preventDefault());

let starting = false;
document.getElementById("talk").addEventListener("click", async () => {
  if (starting) return; // a second press while connecting would open a second call
  if (chat.live) return chat.stop();
  starting = true;
  try {
    await chat.start();
  } finally {
    starting = false;
  }
});
document.body.dataset.ready = "true";
