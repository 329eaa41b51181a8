// Audio-thread processors of the voice-chat page (one module, loaded once with audioWorklet.addModule):
//   pcm-capture   microphone -> PCM16 24 kHz chunks (the WebSocket transport's input_audio_buffer.append)
//   pcm-playback  PCM16 24 kHz reply audio -> speaker, through a small jitter buffer, counting what was played
//   level-meter   a pass-through probe that measures what is really played (or heard from the mic)
// Written by hand: the browser has no built-in node that encodes, buffers or counts PCM.

const WIRE_RATE = 24000;
const AUDIBLE = 1e-3; // |sample| above -60 dBFS counts as sound; digital silence and dither stay below

// Linear interpolation from `fromRate` to `toRate`, carrying its phase across calls. In Chrome the page runs
// its AudioContext at 24 kHz, so the ratio is 1 and the browser's own resampler does the real work; this is
// the fallback for browsers that run the context at the device rate.
class LinearResampler {
  constructor(fromRate, toRate) {
    this.step = fromRate / toRate;
    this.position = 0; // in input samples, relative to the start of the pending input
    this.previous = 0;
  }

  push(input) {
    if (this.step === 1) return input;
    const out = [];
    while (this.position < input.length) {
      const index = Math.floor(this.position);
      const frac = this.position - index;
      const a = index === 0 ? this.previous : input[index - 1];
      const b = input[index];
      out.push(a + (b - a) * frac);
      this.position += this.step;
    }
    this.position -= input.length;
    this.previous = input[input.length - 1];
    return Float32Array.from(out);
  }
}

class PcmCapture extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const chunkMs = options.processorOptions?.chunkMs ?? 40;
    this.chunk = new Int16Array((WIRE_RATE * chunkMs) / 1000);
    this.filled = 0;
    this.resampler = new LinearResampler(sampleRate, WIRE_RATE);
    this.peak = 0;
  }

  process(inputs) {
    const channel = inputs[0]?.[0];
    if (!channel) return true; // no mic frames yet
    for (const sample of this.resampler.push(channel)) {
      const clamped = Math.max(-1, Math.min(1, sample));
      this.peak = Math.max(this.peak, Math.abs(clamped));
      this.chunk[this.filled++] = clamped < 0 ? clamped * 0x8000 : clamped * 0x7fff;
      if (this.filled === this.chunk.length) {
        const pcm = this.chunk.slice();
        this.port.postMessage({ type: "chunk", pcm: pcm.buffer, peak: this.peak }, [pcm.buffer]);
        this.filled = 0;
        this.peak = 0;
      }
    }
    return true;
  }
}

// Reply audio arrives faster than real time and in bursts; it is played from a queue. An item starts once
// `prebufferMs` of it is queued (or its end has arrived), and a queue that runs dry re-fills that much before
// going on, so network jitter becomes a short gap instead of crackle. `flush` (barge-in) drops the queue and
// answers how much of the item was actually played: the number conversation.item.truncate needs.
class PcmPlayback extends AudioWorkletProcessor {
  constructor(options) {
    super();
    this.prebuffer = (WIRE_RATE * (options.processorOptions?.prebufferMs ?? 80)) / 1000;
    this.queue = []; // {itemId, samples: Float32Array at the context rate, offset}
    this.queued = 0;
    this.ended = new Set(); // items whose last chunk has arrived
    this.waiting = true; // prebuffering
    this.current = null; // item being played
    this.played = new Map(); // itemId -> wire-rate samples played
    this.resamplers = new Map();
    this.ratio = sampleRate / WIRE_RATE;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    if (message.type === "audio") {
      let resampler = this.resamplers.get(message.itemId);
      if (!resampler) this.resamplers.set(message.itemId, (resampler = new LinearResampler(WIRE_RATE, sampleRate)));
      const wire = new Int16Array(message.pcm);
      const floats = new Float32Array(wire.length);
      for (let i = 0; i < wire.length; i++) floats[i] = wire[i] / 0x8000;
      const samples = resampler.push(floats);
      this.queue.push({ itemId: message.itemId, samples, offset: 0 });
      this.queued += samples.length;
    } else if (message.type === "end") {
      this.ended.add(message.itemId);
    } else if (message.type === "flush") {
      const itemId = this.current ?? this.queue[0]?.itemId ?? null;
      const dropped = this.queued / this.ratio;
      this.queue = [];
      this.queued = 0;
      this.waiting = true;
      this.port.postMessage({ type: "flushed", itemId, playedSamples: itemId ? this.played.get(itemId) ?? 0 : 0,
                              droppedSamples: Math.round(dropped) });
      this.current = null;
    }
  }

  finish(itemId) {
    this.port.postMessage({ type: "finished", itemId, playedSamples: this.played.get(itemId) ?? 0 });
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    out.fill(0);
    const head = this.queue[0];
    if (this.waiting && head) {
      const enough = this.queued >= this.prebuffer * this.ratio;
      if (enough || this.ended.has(head.itemId)) this.waiting = false;
    }
    let written = 0;
    while (!this.waiting && written < out.length && this.queue.length) {
      const chunk = this.queue[0];
      if (chunk.itemId !== this.current) {
        if (this.current !== null) this.finish(this.current);
        this.current = chunk.itemId;
      }
      const n = Math.min(out.length - written, chunk.samples.length - chunk.offset);
      out.set(chunk.samples.subarray(chunk.offset, chunk.offset + n), written);
      chunk.offset += n;
      written += n;
      this.queued -= n;
      this.played.set(chunk.itemId, (this.played.get(chunk.itemId) ?? 0) + n / this.ratio);
      if (chunk.offset === chunk.samples.length) this.queue.shift();
    }
    if (!this.queue.length && this.current !== null) {
      if (this.ended.has(this.current)) {
        this.finish(this.current);
        this.current = null;
      }
      this.waiting = true; // dry: re-fill before going on
    }
    for (let i = 1; i < outputs[0].length; i++) outputs[0][i].set(out);
    return true;
  }
}

// A passive probe that passes its input on and counts what comes through: samples with sound (cumulative),
// the peak level for the UI, and, once armed, when sound first comes out (the page's time to first audio).
// It sits last before the speaker, after the barge-in gate, so it measures what is really played.
class LevelMeter extends AudioWorkletProcessor {
  constructor() {
    super();
    this.audible = 0;
    this.armed = false;
    this.peak = 0;
    this.sinceReport = 0;
    this.port.onmessage = ({ data }) => {
      if (data.type === "arm") this.armed = true;
    };
  }

  process(inputs, outputs) {
    const input = inputs[0]?.[0];
    const output = outputs[0]?.[0];
    if (input) {
      let firstLoud = -1;
      for (let i = 0; i < input.length; i++) {
        const level = Math.abs(input[i]);
        if (level > AUDIBLE) {
          this.audible++;
          if (firstLoud < 0) firstLoud = i;
        }
        if (level > this.peak) this.peak = level;
      }
      if (this.armed && firstLoud >= 0) {
        this.armed = false;
        this.port.postMessage({ type: "onset", contextTime: currentTime + firstLoud / sampleRate });
      }
      if (output) output.set(input);
    } else if (output) {
      output.fill(0);
    }
    this.sinceReport += (output ?? input)?.length ?? 128;
    if (this.sinceReport >= sampleRate / 20) {
      this.port.postMessage({ type: "level", peak: this.peak, audibleSamples: this.audible, rate: sampleRate,
                              contextTime: currentTime });
      this.sinceReport = 0;
      this.peak = 0;
    }
    return true;
  }
}

registerProcessor("pcm-capture", PcmCapture);
registerProcessor("pcm-playback", PcmPlayback);
registerProcessor("level-meter", LevelMeter);
