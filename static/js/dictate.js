// Dictation: stream the microphone over a dictate session; partials show live, finals are
// written into the text box, and an utterance in another voice gets a notice and no text.
import { FORMAT, Microphone, microphoneProblem, showLevel } from "./capture.js";
import { VoiceSocket, explainError, say } from "./voice-socket.js";

const root = document.getElementById("dictate");
const toggle = document.getElementById("toggle");
const copy = document.getElementById("copy");
const clear = document.getElementById("clear");
const transcript = document.getElementById("transcript");
const partial = document.getElementById("partial");
const utterances = document.getElementById("utterances");
const summary = document.getElementById("summary");
const meter = document.getElementById("level");
const status = document.getElementById("status");
const problem = document.getElementById("problem");
const problemText = document.getElementById("problem-text");
const retry = document.getElementById("retry");
const RECONNECT_DELAYS = [500, 1000, 2000, 4000, 8000, 8000]; // about 24 s in all
// Audio the server has not yet given a final for is kept (at most HOLD_SECONDS, about 2 MB), and
// so is what the microphone hears while a dropped connection is remade: the new connection gets
// it all first, so an utterance cut by the drop, and words spoken meanwhile, are still written.
const HOLD_SECONDS = 60;
const BYTES_PER_SECOND = FORMAT.sample_rate * 2;

let mic = null;
let socket = null;
let running = false; // the person wants to dictate
let stopping = false;
let unsettled = []; // audio sent on this connection after its last final: [{offset, pcm}]
let sentBytes = 0; // audio sent on this connection
let held = null; // audio kept while reconnecting (oldest first), or null when connected or stopped
let heldBytes = 0;
let heldOverflow = false;

/** Send a chunk on the open connection, keeping it until a final covers it. */
function transmit(pcm) {
  socket.sendAudio(pcm);
  unsettled.push({ offset: sentBytes, pcm });
  sentBytes += pcm.byteLength;
  while (sentBytes - unsettled[0].offset > HOLD_SECONDS * BYTES_PER_SECOND) unsettled.shift();
}

/** Forget the audio a final has covered (`end`, seconds of this connection's stream). */
function settle(end) {
  const settled = Math.floor(end * FORMAT.sample_rate) * 2;
  while (unsettled.length && unsettled[0].offset + unsettled[0].pcm.byteLength <= settled) unsettled.shift();
  if (unsettled.length && unsettled[0].offset < settled) {
    const first = unsettled[0];
    unsettled[0] = { offset: settled, pcm: first.pcm.slice(settled - first.offset) };
  }
}

function hold(pcm) {
  if (heldBytes + pcm.byteLength > HOLD_SECONDS * BYTES_PER_SECOND) {
    heldOverflow = true;
    return;
  }
  held.push(pcm);
  heldBytes += pcm.byteLength;
}

/** On a new connection: send what was kept, oldest first; return whether some had to be let go. */
function sendHeld() {
  for (const pcm of held || []) transmit(pcm);
  const overflowed = heldOverflow;
  held = null;
  heldOverflow = false;
  return overflowed;
}

function showProblem(text, retryLabel = "") {
  say(problemText, text);
  problem.hidden = false;
  retry.textContent = retryLabel;
  retry.hidden = !retryLabel;
}

function setRunning(value) {
  running = value;
  toggle.textContent = value ? "Stop" : "Start dictating";
  toggle.classList.toggle("recording", value);
}

function note(kind, text) {
  const item = document.createElement("li");
  item.className = `utterance is-${kind}`;
  item.textContent = text;
  utterances.appendChild(item);
  document.getElementById("heard").hidden = false;
}

// The decision is on a calibrated score (docs/threshold.md): the raw score alone, no raw "needs".
// Scores come only to the signed-in user and to admins; a missing one shows nothing.
const score = (message) => (typeof message.score === "number" ? ` (score ${message.score.toFixed(2)})` : "");

function onMessage(message) {
  if (message.type === "partial") {
    partial.textContent = message.text;
  } else if (message.type === "final") {
    partial.textContent = "";
    settle(message.end);
    if (message.state === "accept") {
      const text = message.text.trim();
      if (text) {
        transcript.value = transcript.value ? `${transcript.value.trimEnd()} ${text}` : text;
        transcript.scrollTop = transcript.scrollHeight;
      }
      note("ok", `Verified${score(message)}: ${text || "(no words)"}`);
    } else if (message.state === "reject") {
      note("bad", `Not verified — nothing was transcribed${score(message)}.`);
    } else {
      note("warn", "Too short to check your voice — nothing was transcribed.");
    }
  } else if (message.type === "result") {
    summary.textContent = `${message.utterances} utterance${message.utterances === 1 ? "" : "s"}: `
      + `${message.accepted} written, ${message.rejected} not verified, ${message.unverified} too short to check.`;
  }
}

async function connect() {
  const start = { type: "start", mode: "dictate", user: root.dataset.user, format: FORMAT };
  for (const delay of [0, ...RECONNECT_DELAYS]) {
    if (!running) return false;
    if (delay) await new Promise((resolve) => setTimeout(resolve, delay));
    const candidate = new VoiceSocket(start, { onMessage, onClose });
    try {
      await candidate.open();
      socket = candidate;
      sentBytes = 0;
      unsettled = [];
      return true;
    } catch (outcome) {
      if (outcome.error) {
        showProblem(explainError(outcome.error));
        return false;
      }
    }
  }
  showProblem("Cannot reach the server. Check your connection, then reconnect.", "Reconnect");
  return false;
}

function onClose(outcome) {
  socket = null;
  if (stopping || outcome.finished) {
    finish();
    return;
  }
  if (outcome.error) {
    showProblem(explainError(outcome.error));
    finish("Dictation ended.");
    return;
  }
  // Dropped: keep the microphone and reconnect, holding what the server had not finished and
  // what is said meanwhile, to send first when the connection is back.
  partial.textContent = "";
  held = unsettled.map((chunk) => chunk.pcm);
  heldBytes = held.reduce((sum, pcm) => sum + pcm.byteLength, 0);
  unsettled = [];
  say(status, "The connection was lost: reconnecting…", "warn");
  showProblem("The connection to the server was lost. Reconnecting… (keep talking: what you say is kept and sent when it is back).");
  connect().then((ok) => {
    if (ok) {
      const overflowed = sendHeld();
      problem.hidden = !overflowed;
      if (overflowed) showProblem(`Reconnected, but not all that was said while the connection was down could be kept (${HOLD_SECONDS} s at most).`);
      say(status, "Reconnected. Listening…", "rec");
    } else {
      held = null;
      finish("Not connected.");
    }
  });
}

function finish(statusText = "Stopped.") {
  held = null;
  unsettled = [];
  if (mic) mic.close();
  mic = null;
  stopping = false;
  setRunning(false);
  toggle.disabled = false;
  showLevel(meter, -100);
  partial.textContent = "";
  say(status, statusText);
}

async function begin() {
  problem.hidden = true;
  summary.textContent = "";
  toggle.disabled = true;
  try {
    mic = await Microphone.open((chunk) => {
      showLevel(meter, chunk.dbfs);
      if (socket && !stopping) transmit(chunk.pcm);
      else if (held && !stopping) hold(chunk.pcm);
    });
  } catch (error) {
    toggle.disabled = false;
    showProblem(microphoneProblem(error), "Try again");
    say(status, "The microphone is not available.", "bad");
    return;
  }
  setRunning(true);
  say(status, "Connecting…");
  if (await connect()) {
    say(status, "Listening… speak now.", "rec");
    toggle.disabled = false;
    toggle.focus();
  } else {
    finish("Not connected.");
  }
}

function end() {
  stopping = true;
  toggle.disabled = true;
  say(status, "Finishing the last words…");
  if (socket) socket.stop();
  else finish();
}

toggle.addEventListener("click", () => (running ? end() : begin()));

retry.addEventListener("click", () => {
  problem.hidden = true;
  if (running && !socket) {
    connect().then((ok) => say(status, ok ? "Listening… speak now." : "Not connected.", ok ? "rec" : "bad"));
  } else if (!running) {
    begin();
  }
});

copy.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(transcript.value);
  } catch {
    transcript.select();
    document.execCommand("copy");
  }
  say(status, transcript.value ? "Copied the text to the clipboard." : "There is no text to copy yet.", "ok");
});

clear.addEventListener("click", () => {
  transcript.value = "";
  utterances.replaceChildren();
  document.getElementById("heard").hidden = true;
  summary.textContent = "";
  transcript.focus();
});

window.addEventListener("pagehide", () => {
  stopping = true;
  if (socket) socket.close();
  if (mic) mic.close();
});
