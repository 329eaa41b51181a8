// The page's audio: the microphone, and the output path every reply plays through:
//   reply source (PCM playback worklet | WebRTC remote track) -> barge-in gate (GainNode) -> level meter -> speaker

import { ChatError, microphoneError } from "./errors.js";

export const WIRE_RATE = 24000; // PCM16 on the WebSocket, both ways

/** The microphone with the browser's echo cancellation, noise suppression and automatic gain on. */
export async function openMicrophone() {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) throw new ChatError("insecure-page");
  try {
    return await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  } catch (exc) {
    throw microphoneError(exc);
  }
}

export class AudioGraph {
  /** @param {MediaStream} microphone */
  static async create(microphone) {
    if (typeof AudioWorkletNode === "undefined") throw new ChatError("no-audio-worklet");
    // 24 kHz, the wire rate: the browser then resamples the mic and the speaker with its own filters. Some
    // browsers refuse a mic at another rate than its context; they get the device rate and the worklets
    // resample.
    let context = new AudioContext({ sampleRate: WIRE_RATE, latencyHint: "interactive" });
    let micSource;
    try {
      micSource = context.createMediaStreamSource(microphone);
    } catch {
      await context.close();
      context = new AudioContext({ latencyHint: "interactive" });
      micSource = context.createMediaStreamSource(microphone);
    }
    await context.audioWorklet.addModule(new URL("./pcm-worklet.js", import.meta.url));
    await context.resume();
    return new AudioGraph(context, micSource);
  }

  constructor(context, micSource) {
    this.context = context;
    this.micSource = micSource;
    this.gate = new GainNode(context);
    this.meter = new AudioWorkletNode(context, "level-meter");
    this.gate.connect(this.meter).connect(context.destination);
    this.micMeter = new AudioWorkletNode(context, "level-meter", { numberOfOutputs: 0 });
    micSource.connect(this.micMeter);
    this.playback = null; // the WebSocket transport's PCM player, made on first use
    this.remote = null; // the WebRTC transport's remote audio
    this.onOnset = () => {}; // (performance.now()-based time the first armed sound was played)
    this.onOutputLevel = () => {}; // ({peak, audibleSamples, rate, at})
    this.onInputLevel = () => {}; // ({peak})
    this.onPlaybackFinished = () => {}; // (itemId, playedMs)
    this.meter.port.onmessage = ({ data }) => {
      if (data.type === "onset") this.onOnset(this.performanceTime(data.contextTime));
      if (data.type === "level") this.onOutputLevel({ ...data, at: this.performanceTime(data.contextTime) });
    };
    this.micMeter.port.onmessage = ({ data }) => {
      if (data.type === "level") this.onInputLevel(data);
    };
    this.pendingFlush = null;
  }

  /** A context time (seconds) as a performance.now() time (ms): when that sample reaches the speaker. */
  performanceTime(contextTime) {
    const stamp = this.context.getOutputTimestamp?.();
    if (!stamp?.performanceTime) return performance.now();
    return stamp.performanceTime + (contextTime - stamp.contextTime) * 1000;
  }

  // --- microphone -> PCM16 chunks (WebSocket transport) ------------------------------------------------

  /** Calls onChunk(ArrayBuffer of PCM16 24 kHz little-endian) every `chunkMs` of microphone audio. */
  captureMicrophone(onChunk, chunkMs = 40) {
    const capture = new AudioWorkletNode(this.context, "pcm-capture", {
      numberOfOutputs: 0, processorOptions: { chunkMs },
    });
    capture.port.onmessage = ({ data }) => onChunk(data.pcm);
    this.micSource.connect(capture);
    this.capture = capture;
  }

  // --- reply audio ---------------------------------------------------------------------------------------

  /** Queue one chunk of an item's PCM16 24 kHz audio (WebSocket transport). */
  enqueue(itemId, pcm) {
    this.#playbackNode().port.postMessage({ type: "audio", itemId, pcm }, [pcm]);
  }

  /** The item's last chunk has arrived: play out what is queued even if it is shorter than the prebuffer. */
  endItem(itemId) {
    this.playback?.port.postMessage({ type: "end", itemId });
  }

  /** Drop queued reply audio at once -> {itemId, playedMs, droppedMs} of the item that was playing. */
  flush() {
    if (!this.playback) return Promise.resolve({ itemId: null, playedMs: 0, droppedMs: 0 });
    return new Promise((resolve) => {
      this.pendingFlush = resolve;
      this.playback.port.postMessage({ type: "flush" });
    });
  }

  /** Play the WebRTC call's remote audio through the gate and meter. */
  playRemoteStream(stream) {
    // Chrome only feeds a remote WebRTC stream into Web Audio while a media element also holds it.
    const holder = new Audio();
    holder.muted = true;
    holder.srcObject = stream;
    holder.play().catch(() => {});
    const source = this.context.createMediaStreamSource(stream);
    source.connect(this.gate);
    this.remote = { holder, source };
  }

  /** Barge-in: silence the output now (WebRTC audio keeps arriving until the server stops sending). */
  mute() {
    this.gate.gain.setValueAtTime(0, this.context.currentTime);
  }

  unmute() {
    this.gate.gain.setValueAtTime(1, this.context.currentTime);
  }

  /** The next sound that comes out is reported through onOnset. */
  armOnset() {
    this.meter.port.postMessage({ type: "arm" });
  }

  async close() {
    this.capture?.disconnect();
    this.micSource.disconnect();
    if (this.remote) this.remote.holder.srcObject = null;
    await this.context.close().catch(() => {});
  }

  #playbackNode() {
    if (!this.playback) {
      this.playback = new AudioWorkletNode(this.context, "pcm-playback", {
        numberOfInputs: 0, outputChannelCount: [1], processorOptions: { prebufferMs: 80 },
      });
      this.playback.connect(this.gate);
      this.playback.port.onmessage = ({ data }) => {
        if (data.type === "finished") this.onPlaybackFinished(data.itemId, data.playedSamples / (WIRE_RATE / 1000));
        if (data.type === "flushed" && this.pendingFlush) {
          this.pendingFlush({ itemId: data.itemId, playedMs: data.playedSamples / (WIRE_RATE / 1000),
                              droppedMs: data.droppedSamples / (WIRE_RATE / 1000) });
          this.pendingFlush = null;
        }
      };
    }
    return this.playback;
  }
}
