// Meeting: stream the microphone over a meeting session for the chosen roster; each line shows
// its time, who said it and what, an unverified speaker's lines are marked and carry no text,
// partials show the line in progress. The page holds the transcript and builds its exports.
import { FORMAT, Microphone, microphoneProblem, showLevel } from "./capture.js";
import { VoiceSocket, explainError, say } from "./voice-socket.js";

const root = document.getElementById("meeting");
const toggle = document.getElementById("toggle");
const clear = document.getElementById("clear");
const list = document.getElementById("lines");
const partial = document.getElementById("partial");
const summary = document.getElementById("summary");
const meter = document.getElementById("level");
const status = document.getElementById("status");
const problem = document.getElementById("problem");
const problemText = document.getElementById("problem-text");
const retry = document.getElementById("retry");
const UNVERIFIED = "Unverified speaker";

let mic = null;
let socket = null;
let running = false;
let stopping = false;
let roster = [];
const lines = []; // every line of this page's meetings: {speaker, name, start, end, text, state}

function showProblem(text, retryLabel = "") {
  say(problemText, text);
  problem.hidden = false;
  retry.textContent = retryLabel;
  retry.hidden = !retryLabel;
}

function setRunning(value) {
  running = value;
  toggle.textContent = value ? "Stop" : "Start meeting";
  toggle.classList.toggle("recording", value);
  document.querySelectorAll("#roster input").forEach((box) => {
    box.disabled = value || box.value === root.dataset.me;
  });
}

function chosen() {
  return [...document.querySelectorAll("#roster input")]
    .filter((box) => box.checked)
    .map((box) => ({ user: box.value, name: box.dataset.name }));
}

/** Return seconds as m:ss (h:mm:ss past the hour). */
function clock(seconds) {
  const total = Math.floor(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = String(total % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${s}` : `${m}:${s}`;
}

function show(line) {
  const item = document.createElement("li");
  const unverified = !line.speaker;
  item.className = unverified ? "line is-unverified" : "line";
  item.dataset.speaker = line.speaker || "";
  const when = document.createElement("span");
  when.className = "when";
  when.textContent = `${clock(line.start)}–${clock(line.end)}`;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = unverified ? UNVERIFIED : line.name;
  const what = document.createElement("span");
  what.className = "what";
  what.textContent = unverified ? "— not transcribed" : (line.text || "").trim() || "(no words)";
  item.append(when, " ", who, " ", what);
  list.appendChild(item);
}

function onMessage(message) {
  if (message.type === "partial") {
    partial.textContent = `${message.name}: ${message.text}`;
  } else if (message.type === "line") {
    partial.textContent = "";
    if (message.state === "not_enough_speech") return; // too short to name anyone, and no text
    const line = { speaker: message.speaker, name: message.speaker ? message.name : UNVERIFIED,
      start: message.start, end: message.end, text: message.speaker ? (message.text || "").trim() : null,
      state: message.state };
    lines.push(line);
    show(line);
  } else if (message.type === "result") {
    summary.textContent = `${message.lines} line${message.lines === 1 ? "" : "s"}: `
      + `${message.attributed} named, ${message.unverified} by an unverified speaker.`;
  }
}

function onClose(outcome) {
  socket = null;
  if (outcome.error && !stopping) showProblem(explainError(outcome.error));
  else if (outcome.dropped && !stopping) showProblem("The connection to the server was lost; the meeting ended.", "Start again");
  finish(outcome.finished ? "The meeting has ended." : "Stopped.");
}

function finish(statusText) {
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
  roster = chosen();
  const min = Number(root.dataset.min);
  const max = Number(root.dataset.max);
  if (roster.length < min || roster.length > max) {
    showProblem(`Choose ${min} to ${max} people for the meeting.`);
    return;
  }
  toggle.disabled = true;
  const pending = []; // audio captured while the session opens: sent once it is ready
  try {
    mic = await Microphone.open((chunk) => {
      showLevel(meter, chunk.dbfs);
      if (socket && !stopping) socket.sendAudio(chunk.pcm);
      else if (!socket && running) pending.push(chunk.pcm);
    });
  } catch (error) {
    toggle.disabled = false;
    showProblem(microphoneProblem(error), "Try again");
    say(status, "The microphone is not available.", "bad");
    return;
  }
  setRunning(true);
  say(status, "Connecting…");
  const start = { type: "start", mode: "meeting", roster: roster.map((member) => member.user), format: FORMAT };
  const candidate = new VoiceSocket(start, { onMessage, onClose });
  try {
    await candidate.open();
  } catch (outcome) {
    showProblem(outcome.error ? explainError(outcome.error) : "Cannot reach the server. Check your connection.", "Try again");
    finish("Not connected.");
    return;
  }
  socket = candidate;
  pending.splice(0).forEach((pcm) => socket.sendAudio(pcm));
  say(status, "Listening… the meeting is being transcribed.", "rec");
  toggle.disabled = false;
  toggle.focus();
}

function end() {
  stopping = true;
  toggle.disabled = true;
  say(status, "Finishing the last words…");
  if (socket) socket.stop();
  else finish("Stopped.");
}

// ---- exports, built from the lines this page holds (the server keeps none)

function stamp(seconds, separator) {
  const millis = Math.round(seconds * 1000);
  const h = Math.floor(millis / 3600000);
  const m = Math.floor((millis % 3600000) / 60000);
  const s = Math.floor((millis % 60000) / 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(h)}:${pad(m)}:${pad(s)}${separator}${pad(millis % 1000, 3)}`;
}

const oneLine = (text) => (text || "").split(/\s+/).filter(Boolean).join(" ");
const escapeVtt = (text) => text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function toVtt() {
  const out = ["WEBVTT", ""];
  lines.forEach((line, index) => {
    const text = line.speaker ? escapeVtt(oneLine(line.text)) : "[not transcribed]";
    out.push(String(index + 1), `${stamp(line.start, ".")} --> ${stamp(line.end, ".")}`,
      `<v ${escapeVtt(oneLine(line.name))}>${text || " "}`, "");
  });
  return out.join("\n");
}

function toSrt() {
  const out = [];
  lines.forEach((line, index) => {
    const text = line.speaker ? oneLine(line.text) : "[not transcribed]";
    out.push(String(index + 1), `${stamp(line.start, ",")} --> ${stamp(line.end, ",")}`, `${oneLine(line.name)}: ${text}`.trimEnd(), "");
  });
  return out.join("\n");
}

function toJson() {
  return `${JSON.stringify({ roster, lines }, null, 1)}\n`;
}

const EXPORTS = {
  vtt: [toVtt, "text/vtt"],
  srt: [toSrt, "application/x-subrip"],
  json: [toJson, "application/json"],
};

document.querySelectorAll("[data-export]").forEach((button) => {
  button.addEventListener("click", () => {
    if (!lines.length) {
      say(status, "There is nothing to export yet.", "warn");
      return;
    }
    const [build, type] = EXPORTS[button.dataset.export];
    const url = URL.createObjectURL(new Blob([build()], { type }));
    const link = document.createElement("a");
    link.href = url;
    link.download = `meeting-${new Date().toISOString().slice(0, 16).replace(/[:T]/g, "-")}.${button.dataset.export}`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 1000);
  });
});

toggle.addEventListener("click", () => (running ? end() : begin()));
retry.addEventListener("click", () => {
  problem.hidden = true;
  if (!running) begin();
});
clear.addEventListener("click", () => {
  lines.length = 0;
  list.replaceChildren();
  summary.textContent = "";
});
window.addEventListener("pagehide", () => {
  stopping = true;
  if (socket) socket.close();
  if (mic) mic.close();
});
