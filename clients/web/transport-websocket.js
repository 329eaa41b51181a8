// The Realtime protocol over a WebSocket (`/v1/realtime`): JSON events both ways, audio inside them as base64
// PCM16 24 kHz. A browser cannot set headers on a WebSocket, so a key travels as the subprotocol
// `openai-insecure-api-key.KEY`, as OpenAI's browser SDK sends it.

import { ChatError } from "./errors.js";
import { probeServer } from "./server.js";

const KEY_PROTOCOL = "openai-insecure-api-key.";

export class WebSocketTransport {
  /** Resolves once the server's session.created has arrived; rejects with a ChatError. `intent`:
   * "transcription" opens a transcription session (captions, no replies), as OpenAI's `?intent=` does. */
  static connect({ baseUrl, apiKey, onEvent, onClose, intent = null }) {
    const query = intent ? `?intent=${encodeURIComponent(intent)}` : "";
    const url = `${baseUrl.replace(/^http/, "ws")}/v1/realtime${query}`;
    const protocols = ["realtime"];
    if (apiKey) protocols.push(KEY_PROTOCOL + apiKey);
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(url, protocols);
      } catch {
        // a key with characters a subprotocol cannot carry: the query parameter the server also accepts
        socket = new WebSocket(`${url}${query ? "&" : "?"}api_key=${encodeURIComponent(apiKey)}`, ["realtime"]);
      }
      const transport = new WebSocketTransport(socket);
      let opened = false;
      socket.onmessage = (message) => {
        const event = JSON.parse(message.data);
        if (!opened && event.type === "session.created") {
          opened = true;
          resolve(transport);
        }
        onEvent(event);
      };
      socket.onclose = async (close) => {
        if (transport.closedByUs) return;
        if (!opened) {
          // A refused handshake reaches the page as a bare 1006; ask the server over HTTP why.
          reject(await diagnose(close, baseUrl, apiKey));
          return;
        }
        onClose(closeError(close));
      };
    });
  }

  constructor(socket) {
    this.socket = socket;
    this.closedByUs = false;
  }

  get kind() {
    return "websocket";
  }

  send(event) {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(event));
  }

  close() {
    this.closedByUs = true;
    this.socket.close(1000, "user hung up");
  }
}

function closeError(close) {
  const detail = `WebSocket closed (code ${close.code}${close.reason ? `: ${close.reason}` : ""})`;
  if (close.code === 1008 && /key/i.test(close.reason)) return new ChatError("key-refused", detail);
  if (close.code === 1013) return new ChatError("at-capacity", detail); // "try again later"
  return new ChatError("connection-lost", detail);
}

async function diagnose(close, baseUrl, apiKey) {
  if (close.code !== 1006) return closeError(close);
  const probe = await probeServer(baseUrl, apiKey);
  return probe ?? new ChatError("refused", `WebSocket handshake refused (code ${close.code})`);
}

/** ArrayBuffer -> base64 (input_audio_buffer.append's `audio`). */
export function encodeAudio(buffer) {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

/** base64 (response.output_audio.delta's `delta`) -> ArrayBuffer. */
export function decodeAudio(base64) {
  const text = atob(base64);
  const bytes = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
  return bytes.buffer;
}
