// Every way a voice chat can fail, as one error type with a message a person can act on.

export class ChatError extends Error {
  /** @param {string} kind one of the keys of MESSAGES  @param {string} [detail] what the server or browser said */
  constructor(kind, detail = "") {
    super(MESSAGES[kind] ?? MESSAGES.unexpected);
    this.kind = kind;
    this.detail = detail;
  }
}

const MESSAGES = {
  "mic-denied": "Microphone access was denied. Allow the microphone for this site (the icon at the left of the "
    + "address bar), then press Talk again.",
  "mic-missing": "No microphone was found. Connect one or choose another input device, then press Talk again.",
  "mic-busy": "The microphone could not be started: another application may be using it.",
  "insecure-page": "The browser only lends the microphone to secure pages: open this page over https:// or on "
    + "localhost.",
  "no-audio-worklet": "This browser cannot process audio in real time (no AudioWorklet). Use a current Chrome, "
    + "Edge, Firefox or Safari.",
  unreachable: "Cannot reach the voice server. Check that it is running (higgs-agent serve) and that this "
    + "device can reach it.",
  "key-missing": "This server requires an API key. Enter it under Settings and press Talk again.",
  "key-refused": "The server refused the API key. Check the key under Settings and press Talk again.",
  "at-capacity": "The server is at capacity: every voice slot is busy. Try again in a moment.",
  "no-webrtc": "This server does not offer WebRTC calls. Choose WebSocket as the transport and press Talk again.",
  "webrtc-failed": "The audio connection could not be established (WebRTC negotiation failed). Try the "
    + "WebSocket transport.",
  "connection-lost": "The connection to the server was lost. Press Talk to start again.",
  refused: "The server refused the connection.",
  "server-error": "The server reported an error.",
  unexpected: "Something went wrong.",
};

/** The ChatError for a failed HTTP response (the WebRTC endpoints, the health probe). */
export async function errorFromResponse(response, hadKey) {
  let detail = "";
  try {
    const body = await response.text();
    detail = JSON.parse(body)?.error?.message ?? body;
  } catch {
    // no readable body: the status says enough
  }
  detail = `HTTP ${response.status}${detail ? `: ${detail}` : ""}`;
  if (response.status === 401 || response.status === 403) return new ChatError(hadKey ? "key-refused" : "key-missing", detail);
  // No such route: a 404, or a 405 from the static files mounted at "/" answering a POST.
  if (response.status === 404 || response.status === 405) return new ChatError("no-webrtc", detail);
  if (response.status === 503 || response.status === 429) return new ChatError("at-capacity", detail);
  return new ChatError("refused", detail);
}

/** getUserMedia's DOMException -> ChatError. */
export function microphoneError(exc) {
  const name = exc?.name ?? "";
  if (name === "NotAllowedError" || name === "SecurityError") return new ChatError("mic-denied", exc.message);
  if (name === "NotFoundError" || name === "OverconstrainedError") return new ChatError("mic-missing", exc.message);
  return new ChatError("mic-busy", exc?.message ?? String(exc));
}
