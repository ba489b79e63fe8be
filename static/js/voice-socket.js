// One session on the voice WebSocket (/ws/voice, docs/protocol.md), and plain-words errors.

const ERRORS = {
  unknown_user: "There is no user by that name. Check the spelling, or leave the name empty.",
  not_enrolled: "This user has not enrolled a voice yet. Ask your administrator for an enrollment link.",
  disabled: "This account is disabled. Ask your administrator.",
  locked: "Voice login is locked for a few minutes after several voices that did not match. Try again later.",
  bad_invite: "This enrollment link cannot be used: it is unknown, used or expired. Ask for a new one.",
  invite_used: "This enrollment link was used up while you were recording. Ask for a new one.",
  idle_timeout: "The session ended because nothing was sent for a while.",
  busy: "The server is busy right now. Try again in a moment.",
  too_long: "That was longer than the server accepts in one go.",
  bad_token: "Your sign-in is no longer valid. Log in again.",
  token_expired: "Your sign-in has expired. Log in again.",
  internal: "The server failed to handle this. Try again.",
};

/** Return a sentence for a server `error` message. */
export function explainError(message) {
  return ERRORS[message.code] || `The server refused: ${message.message || message.code}.`;
}

export function voiceSocketUrl() {
  return `${location.protocol === "https:" ? "wss:" : "ws:"}//${location.host}/ws/voice`;
}

/**
 * A voice session. `onMessage(message)` gets every server message after `ready`;
 * `onClose({error, finished, dropped})` is called once: `error` is the server's error message,
 * `finished` says a `result` arrived, `dropped` that the connection broke without either.
 */
export class VoiceSocket {
  constructor(start, { onMessage = () => {}, onClose = () => {} } = {}) {
    this.start = start;
    this.onMessage = onMessage;
    this.onClose = onClose;
    this.ws = null;
    this.error = null;
    this.finished = false;
    this.closed = false;
    this.challenge = null; // a voice login's spoken challenge, sent before ready: {text, expires_in}
  }

  /** Connect and send `start`; resolve on `ready`, reject with {error} or {dropped}. */
  open() {
    return new Promise((resolve, reject) => {
      let ready = false;
      const ws = new WebSocket(voiceSocketUrl());
      ws.binaryType = "arraybuffer";
      this.ws = ws;
      ws.onopen = () => ws.send(JSON.stringify(this.start));
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        const message = JSON.parse(event.data);
        if (message.type === "error") this.error = message;
        if (message.type === "result") this.finished = true;
        if (message.type === "challenge") this.challenge = message;
        if (!ready) {
          if (message.type === "ready") {
            ready = true;
            resolve(message);
          }
          return; // an error before ready rejects in onclose
        }
        this.onMessage(message);
      };
      ws.onclose = (event) => {
        this.closed = true;
        const outcome = { error: this.error, finished: this.finished, dropped: !this.error && !this.finished, code: event.code };
        if (!ready) reject(outcome);
        else this.onClose(outcome);
      };
    });
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  /** Send a chunk of audio (an ArrayBuffer); an empty one only says "still here". */
  sendAudio(buffer) {
    if (this.isOpen) this.ws.send(buffer);
  }

  /** End the clip; `capture` may say how much audio was lost capturing it ({lost_seconds}). */
  stop(capture) {
    if (this.isOpen) this.ws.send(JSON.stringify(capture ? { type: "stop", capture } : { type: "stop" }));
  }

  /** Close without waiting for anything (the server stores nothing unfinished). */
  close() {
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000);
  }
}

/** Read the page's CSRF token (for fetch POSTs). */
export function csrfToken() {
  return document.querySelector('meta[name="csrf-token"]').content;
}

/** Put `text` in a status element, with a kind (ok, bad, warn) for its colour. */
export function say(element, text, kind = "") {
  element.textContent = text;
  element.className = element.className.replace(/\bis-\w+\b/g, "").trim();
  if (kind) element.classList.add(`is-${kind}`);
  element.hidden = !text;
}
