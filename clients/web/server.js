// Plain HTTP questions to the voice server: is it there and does it take this key; which voices it offers.

import { ChatError, errorFromResponse } from "./errors.js";

export const FALLBACK_VOICES = [
  { id: "default", name: "Default voice" },
  { id: "caller", name: "Your own voice (cloned from your turn)" },
];

export function authHeaders(apiKey) {
  return apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
}

/** Why a connection failed, asked over HTTP: a ChatError, or null when nothing looks wrong. Every `/v1/`
 * path checks the key before anything else, so a GET of the voice list also says whether the key is good. */
export async function probeServer(baseUrl, apiKey) {
  let response;
  try {
    response = await fetch(`${baseUrl}/v1/voices`, { headers: authHeaders(apiKey), cache: "no-store" });
  } catch (exc) {
    return new ChatError("unreachable", String(exc));
  }
  if ([401, 403, 429, 503].includes(response.status)) return errorFromResponse(response, Boolean(apiKey));
  return null;
}

/** The voices to offer: the two every server has ("default", "caller"), then the server's own from
 * `GET /v1/voices` ({data: [{id, name, ...}]}) when it lists any. A voice is chosen by its name. */
export async function listVoices(baseUrl, apiKey) {
  let listed = [];
  try {
    const response = await fetch(`${baseUrl}/v1/voices`, { headers: authHeaders(apiKey) });
    if (response.ok) {
      const body = await response.json();
      const entries = Array.isArray(body) ? body : body.data ?? body.voices ?? [];
      listed = entries.map((entry) => (typeof entry === "string"
        ? { id: entry, name: entry }
        : { id: entry.name ?? entry.id, name: entry.name ?? entry.id, description: entry.transcript ?? "" }));
    }
  } catch {
    // no list: the two built-in choices still work
  }
  const known = new Set(FALLBACK_VOICES.map((voice) => voice.id));
  return [...FALLBACK_VOICES, ...listed.filter((voice) => voice.id && !known.has(voice.id))];
}
