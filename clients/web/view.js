// What the page shows: the conversation as text, the last turn's latency, who is speaking, status and errors.
// It only renders; app.js decides what happened.

const $ = (id) => document.getElementById(id);

export class ChatView {
  constructor() {
    this.transcript = $("transcript");
    this.turns = new Map(); // item id -> <li>
  }

  // --- status, errors, controls ----------------------------------------------------------------------

  status(state, text) {
    const status = $("status");
    status.dataset.state = state;
    status.textContent = text;
    const live = state !== "idle" && state !== "error";
    $("talk").setAttribute("aria-pressed", String(live));
    $("talk").dataset.live = String(live);
    $("talk-label").textContent = live ? "Stop" : "Talk";
  }

  error(chatError) {
    const banner = $("error");
    banner.replaceChildren();
    const message = document.createElement("p");
    message.textContent = chatError.message;
    banner.append(message);
    if (chatError.detail) {
      const detail = document.createElement("p");
      detail.className = "detail";
      detail.textContent = chatError.detail;
      banner.append(detail);
    }
    banner.dataset.kind = chatError.kind;
    banner.hidden = false;
  }

  clearError() {
    $("error").hidden = true;
    delete $("error").dataset.kind;
  }

  levels(micPeak, agentPeak) {
    for (const [id, peak] of [["mic-level", micPeak], ["agent-level", agentPeak]]) {
      if (peak === undefined) continue;
      const db = 20 * Math.log10(Math.max(peak, 1e-4)); // -80 .. 0 dBFS
      $(id).style.setProperty("--level", String(Math.max(0, Math.min(1, (db + 60) / 60))));
    }
  }

  voices(voices, selected) {
    const select = $("voice");
    select.replaceChildren(...voices.map((voice) => {
      const option = new Option(voice.name, voice.id, false, voice.id === selected);
      if (voice.description) option.title = voice.description;
      return option;
    }));
  }

  // --- the conversation --------------------------------------------------------------------------------

  userTurn(itemId) {
    return this.#turn(itemId, "user", "…");
  }

  /** Words of a turn still being spoken (deltas two readings agreed on), until its transcript replaces them. */
  userPartial(itemId, delta) {
    const turn = this.userTurn(itemId);
    if (!turn.classList.contains("pending")) return;
    turn.dataset.partial = (turn.dataset.partial ?? "") + delta;
    turn.querySelector(".text").textContent = `${turn.dataset.partial} …`;
  }

  userText(itemId, text) {
    const turn = this.userTurn(itemId);
    turn.querySelector(".text").textContent = text || "(nothing understood)";
    turn.classList.remove("pending");
  }

  assistantTurn(itemId, responseId) {
    const turn = this.#turn(itemId, "assistant", "");
    if (responseId) turn.dataset.responseId = responseId;
    return turn;
  }

  assistantText(itemId, delta) {
    const turn = this.assistantTurn(itemId);
    turn.querySelector(".text").textContent += delta;
    turn.classList.remove("pending");
    this.#scroll();
  }

  /** Mark a reply (e.g. interrupted); `keepDetail` leaves a note already there (the server's exact cut). */
  assistantStatus(itemId, note, cls, { keepDetail = false } = {}) {
    const turn = this.turns.get(itemId);
    if (!turn) return;
    turn.classList.add(cls);
    const element = turn.querySelector(".note");
    if (!keepDetail || !element.textContent) element.textContent = note;
  }

  /** The server's `higgs.input.context` for a user turn: chips under the bubble, and the side card. */
  context(itemId, { speaker, emotion, language }) {
    const match = typeof speaker?.similarity === "number" ? `${Math.round(speaker.similarity * 100)}% match` : "";
    const who = speaker?.id ? (speaker.is_new ? `new speaker ${speaker.id}` : speaker.id) : "";
    const chips = [speaker?.is_new ? who : [who, match].filter(Boolean).join(" · "), emotion?.state, language]
      .filter(Boolean);
    const turn = this.userTurn(itemId);
    turn.querySelector(".chips").replaceChildren(...chips.map((chip) => Object.assign(
      document.createElement("span"), { className: "chip", textContent: chip })));
    $("context-card").hidden = false;
    const fields = { speaker: who, match: speaker?.is_new ? "" : match, emotion: emotion?.state, language };
    for (const row of $("context").children) row.querySelector("dd").textContent = fields[row.dataset.field] || "–";
  }

  /** Time to first audio heard in the page (ms), on the reply's bubble and in the side card. */
  firstAudio(itemId, ms) {
    $("ttfa").textContent = `${(ms / 1000).toFixed(2)} s`;
    $("ttfa").dataset.ms = String(Math.round(ms));
    const turn = this.turns.get(itemId);
    if (turn) turn.querySelector(".latency").textContent = `${(ms / 1000).toFixed(2)} s to first audio`;
  }

  /** The server's `higgs.turn.latency` stages (ms). */
  stages(latencyMs) {
    for (const row of $("stages").children) {
      const value = latencyMs?.[row.dataset.stage];
      row.querySelector("dd").textContent = typeof value === "number" ? `${Math.round(value)} ms` : "–";
      row.dataset.ms = typeof value === "number" ? String(Math.round(value)) : "";
    }
  }

  #turn(itemId, role, placeholder) {
    let turn = this.turns.get(itemId);
    if (turn) return turn;
    turn = document.createElement("li");
    turn.className = `turn ${role} pending`;
    turn.dataset.itemId = itemId;
    turn.innerHTML = `<span class="who">${role === "user" ? "You" : "Agent"}</span>`
      + '<div class="bubble"><p class="text"></p><p class="note"></p></div>'
      + '<div class="meta"><span class="chips"></span><span class="latency"></span></div>';
    turn.querySelector(".text").textContent = placeholder;
    this.turns.set(itemId, turn);
    this.transcript.append(turn);
    $("empty-hint").hidden = true;
    this.#scroll();
    return turn;
  }

  #scroll() {
    this.transcript.lastElementChild?.scrollIntoView({ block: "end", behavior: "smooth" });
  }
}
