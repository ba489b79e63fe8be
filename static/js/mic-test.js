// Microphone test: a live level meter, then a server-side speech check of a few seconds.
// No voice session is opened: nothing is decided, counted or kept.
import { Microphone, PauseDetector, microphoneProblem, showLevel } from "./capture.js";
import { csrfToken, say } from "./voice-socket.js";

const root = document.getElementById("mic-test");
const button = document.getElementById("test-button");
const meter = document.getElementById("level");
const status = document.getElementById("status");
const problem = document.getElementById("problem");
const problemText = document.getElementById("problem-text");
const result = document.getElementById("mic-result");
const maxSeconds = Number(root.dataset.seconds) - 0.5;
const pause = new PauseDetector({ pauseSeconds: 1.2 });

let mic = null;
let chunks = [];
let seconds = 0;
let peak = -100;

function show(kind, title, text) {
  result.className = `card notice notice-${kind}`;
  document.getElementById("mic-result-title").textContent = title;
  document.getElementById("mic-result-text").textContent = text;
  result.hidden = false;
  result.focus();
}

function release() {
  if (mic) mic.close();
  mic = null;
  showLevel(meter, -100);
  button.textContent = "Test again";
  button.classList.remove("recording");
}

async function start() {
  problem.hidden = true;
  result.hidden = true;
  chunks = [];
  seconds = 0;
  peak = -100;
  pause.reset();
  try {
    mic = await Microphone.open(onChunk);
  } catch (error) {
    release();
    say(problemText, microphoneProblem(error));
    problem.hidden = false;
    return;
  }
  button.textContent = "Stop";
  button.classList.add("recording");
  say(status, "Listening… read the sentence aloud.", "rec");
}

function onChunk(chunk) {
  showLevel(meter, chunk.dbfs);
  if (!mic) return;
  chunks.push(new Uint8Array(chunk.pcm));
  const length = chunk.pcm.byteLength / 2 / 16000;
  seconds += length;
  peak = Math.max(peak, chunk.dbfs);
  if (pause.feed(chunk.dbfs, length) || seconds >= maxSeconds) check();
}

async function check() {
  if (!mic) return;
  release();
  button.disabled = true;
  say(status, "Checking what the microphone heard…", "busy");
  const body = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const c of chunks) { body.set(c, offset); offset += c.length; }
  chunks = [];
  try {
    const response = await fetch(root.dataset.url, {
      method: "POST", body, credentials: "same-origin",
      headers: { "Content-Type": "application/octet-stream", "X-CSRFToken": csrfToken() },
    });
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error ? answer.error.message : response.status);
    say(status, "");
    explain(answer);
  } catch (error) {
    say(status, "");
    show("bad", "The check did not work", `The server could not check the recording (${error.message}). Try again.`);
  } finally {
    button.disabled = false;
  }
}

function explain(answer) {
  const heard = `We heard ${answer.speech_seconds.toFixed(1)} s of speech`;
  switch (answer.problem) {
    case null:
      show("ok", "Your microphone works", `${heard} at a good level (${answer.level_dbfs} dBFS). You are ready to enroll or log in.`);
      break;
    case "no_speech":
      show("bad", "No speech heard", peak < -50
        ? "The microphone picked up almost nothing. Check that the right microphone is chosen and not muted."
        : "There was sound, but no speech. Read the whole sentence aloud, a little closer to the microphone.");
      break;
    case "too_quiet":
      show("warn", "Too quiet", `${heard}, but quietly (${answer.level_dbfs} dBFS). Move closer to the microphone or speak up.`);
      break;
    case "clipped":
      show("warn", "Too loud", `${heard}, but the sound was distorted. Move back a little or turn the input volume down.`);
      break;
    default:
      show("warn", "A little more, please", `${heard}. Read the whole sentence before stopping.`);
  }
}

button.addEventListener("click", () => {
  if (mic) check();
  else start();
});

window.addEventListener("pagehide", () => { if (mic) mic.close(); });
