// Enrollment page: record one clip per passage over one enrollment session, say how each
// clip went, and show progress until the server stores the voiceprint.
import { FORMAT, Microphone, PauseDetector, microphoneProblem, showLevel } from "./capture.js";
import { VoiceSocket, explainError, say } from "./voice-socket.js";

const root = document.getElementById("enroll");
const clips = document.getElementById("clips");
const passages = JSON.parse(document.getElementById("passages").textContent);
const meter = document.getElementById("level");
const status = document.getElementById("status");
const problem = document.getElementById("problem");
const problemText = document.getElementById("problem-text");
const retry = document.getElementById("retry");
const progress = document.getElementById("progress");
const progressText = document.getElementById("progress-text");
const autoStop = document.getElementById("auto-stop");
const minClipSpeech = Number(root.dataset.minClipSpeech);
const maxClipSeconds = Number(root.dataset.maxClipSeconds);
const KEEPALIVE_MS = 5000; // well inside the server's 15 s idle limit

let mic = null;
let socket = null;
let recording = false;
let recorded = 0; // seconds in the current clip
let lostSoFar = 0; // audio lost since the microphone opened (the worklet's count), at the latest chunk
let lostAtStart = null; // ... at the clip's first chunk
let checking = false;
let finished = false;
let keepalive = null;
const pause = new PauseDetector({ pauseSeconds: 1.5 });

const secs = (value) => `${Number(value).toFixed(1)} s`;

function reasonText(clip) {
  switch (clip.reason) {
    case "broken_audio":
      return (clip.lost_seconds >= 0.25
        ? `The recording arrived broken: ${secs(clip.lost_seconds)} of audio was lost on the way`
        : `The recording arrived late and in pieces (it stalled for ${secs(clip.longest_gap_seconds)})`)
        + ", because the browser or the computer was too busy, not because of your voice. "
        + "Close other tabs or programs if you can, then record again.";
    case "no_speech":
      return "We heard no speech. Check that the level bar moves when you talk, then record again.";
    case "too_short":
      return `Too little speech (${secs(clip.speech_seconds)}; at least ${secs(minClipSpeech)}). Read the whole passage before stopping, then record again.`;
    case "too_quiet":
      return `Your voice was too quiet (${clip.level_dbfs} dBFS). Move closer to the microphone or speak up, then record again.`;
    case "clipped":
      return "The recording was distorted because it was too loud. Move back a little or turn the input volume down, then record again.";
    case "inconsistent_voice":
      return `This clip does not sound like your earlier ones (similarity ${clip.consistency}). Make sure only you are speaking, in your usual voice, then record again.`;
    default:
      return `This clip was not accepted (${clip.reason}). Record it again.`;
  }
}

function currentClip() {
  return clips.querySelector("li.clip:not(.accepted)");
}

function setButtons() {
  const current = currentClip();
  for (const item of clips.querySelectorAll("li.clip")) {
    const button = item.querySelector("button.record");
    const isCurrent = item === current;
    item.classList.toggle("current", isCurrent && !finished);
    button.disabled = finished || !isCurrent || checking;
    if (item.classList.contains("accepted")) button.textContent = "Accepted";
    else if (isCurrent && recording) button.textContent = "Stop";
    else if (isCurrent && checking) button.textContent = "Checking…";
    else if (item.classList.contains("refused")) button.textContent = "Record again";
    else button.textContent = `Record ${item.querySelector("h2").textContent.toLowerCase()}`;
    button.classList.toggle("recording", isCurrent && recording);
  }
}

function addClip() {
  const count = clips.children.length;
  const item = document.getElementById("clip-template").content.firstElementChild.cloneNode(true);
  item.querySelector("h2").textContent = `Clip ${count + 1}`;
  item.querySelector(".passage").textContent = passages[count % passages.length];
  clips.appendChild(item);
}

function showProblem(text, canReconnect) {
  say(problemText, text);
  problem.hidden = false;
  retry.textContent = "Reconnect";
  retry.hidden = !canReconnect;
}

function clearProblem() {
  problem.hidden = true;
}

function resetProgress() {
  for (const item of clips.querySelectorAll("li.clip")) {
    item.classList.remove("accepted", "refused");
    say(item.querySelector(".clip-result"), "");
  }
  progress.value = 0;
  progressText.textContent = "Starting again from the first clip.";
}

async function ensureMicrophone() {
  if (mic) return true;
  try {
    mic = await Microphone.open(onChunk);
    return true;
  } catch (error) {
    showProblem(microphoneProblem(error), false);
    say(status, "The microphone is not available.", "bad");
    return false;
  }
}

async function ensureSession() {
  if (socket && socket.isOpen) return true;
  say(status, "Connecting…", "busy");
  const start = { type: "start", mode: "enroll", invite: root.dataset.invite, format: FORMAT };
  for (let attempt = 0; attempt < 3; attempt++) {
    socket = new VoiceSocket(start, { onMessage, onClose });
    try {
      await socket.open();
      clearInterval(keepalive);
      keepalive = setInterval(() => { if (!recording) socket.sendAudio(new ArrayBuffer(0)); }, KEEPALIVE_MS);
      return true;
    } catch (outcome) {
      socket = null;
      if (outcome.error) {
        const fatal = ["bad_invite", "invite_used", "disabled"].includes(outcome.error.code);
        showProblem(explainError(outcome.error), !fatal);
        say(status, "Enrollment could not start.", "bad");
        return false;
      }
      await new Promise((resolve) => setTimeout(resolve, 1000 * 2 ** attempt));
    }
  }
  showProblem("Cannot reach the server. Check your connection, then reconnect.", true);
  say(status, "Not connected.", "bad");
  return false;
}

async function startClip() {
  clearProblem();
  if (!(await ensureMicrophone()) || !(await ensureSession())) {
    setButtons();
    return;
  }
  pause.reset();
  recorded = 0;
  lostAtStart = null;
  recording = true;
  const item = currentClip();
  say(item.querySelector(".clip-result"), "");
  say(status, `Recording ${item.querySelector("h2").textContent.toLowerCase()}: read the passage aloud.`, "rec");
  setButtons();
  item.querySelector("button.record").focus();
}

function stopClip() {
  if (!recording) return;
  recording = false;
  checking = true;
  const lostInClip = lostAtStart === null ? 0 : Math.max(0, lostSoFar - lostAtStart);
  socket.stop({ lost_seconds: Math.round(lostInClip * 100) / 100 });
  say(status, "Checking the clip…", "busy");
  setButtons();
}

function onChunk(chunk) {
  showLevel(meter, chunk.dbfs);
  lostSoFar = chunk.lost;
  if (!recording) return;
  if (lostAtStart === null) lostAtStart = chunk.lost;
  socket.sendAudio(chunk.pcm);
  const seconds = chunk.pcm.byteLength / 2 / FORMAT.sample_rate;
  recorded += seconds;
  const paused = pause.feed(chunk.dbfs, seconds);
  if ((paused && autoStop.checked) || recorded >= maxClipSeconds - 1) stopClip();
}

function onMessage(message) {
  if (message.type === "progress") {
    checking = false;
    const item = currentClip();
    const result = item.querySelector(".clip-result");
    if (message.clip.accepted) {
      item.classList.remove("refused");
      item.classList.add("accepted");
      say(result, `Accepted: ${secs(message.clip.speech_seconds)} of speech.`, "ok");
    } else {
      item.classList.add("refused");
      say(result, `Not accepted. ${reasonText(message.clip)}`, "bad");
    }
    progress.value = message.percent;
    progress.textContent = `${message.percent} %`;
    progressText.textContent = `${message.clips_accepted} of ${message.clips_required} clips, `
      + `${Math.min(message.speech_seconds, message.speech_required).toFixed(0)} of ${message.speech_required.toFixed(0)} seconds of speech`;
    if (message.percent < 100 && !currentClip()) addClip();
    if (message.percent < 100) say(status, message.clip.accepted ? "Press Record on the next clip when you are ready." : "Press Record again when you are ready.");
    setButtons();
    // The next passage comes up under the panel (which stays in view), ready to read.
    // Keyboard users land on the next Record button.
    if (message.clip.accepted && message.percent < 100) {
      currentClip().scrollIntoView({ block: "start" });
      currentClip().querySelector("button.record").focus({ preventScroll: true });
    }
  } else if (message.type === "result" && message.state === "enrolled") {
    finished = true;
    clearInterval(keepalive);
    mic.close();
    mic = null;
    showLevel(meter, -100);
    say(status, "Enrollment complete.", "ok");
    document.getElementById("done-text").textContent =
      `${message.clips} clips with ${secs(message.speech_seconds)} of speech make up your voiceprint. You can now log in by voice.`;
    autoStop.closest(".auto-stop").hidden = true;
    const done = document.getElementById("done");
    done.hidden = false;
    setButtons();
    done.focus();
  }
}

function onClose(outcome) {
  clearInterval(keepalive);
  if (finished) return;
  recording = false;
  checking = false;
  socket = null;
  const lost = "The clips of this session were not kept: you will start again from the first clip.";
  if (outcome.error) {
    const fatal = ["bad_invite", "invite_used", "disabled"].includes(outcome.error.code);
    showProblem(`${explainError(outcome.error)} ${fatal ? "" : lost}`, !fatal);
  } else {
    showProblem(`The connection to the server was lost. ${lost}`, true);
  }
  say(status, "Not connected.", "bad");
  resetProgress();
  setButtons();
}

clips.addEventListener("click", (event) => {
  const button = event.target.closest("button.record");
  if (!button || button.disabled) return;
  if (recording) stopClip();
  else startClip();
});

retry.addEventListener("click", async () => {
  clearProblem();
  if (await ensureSession()) say(status, "Connected. Press Record on the first clip.", "ok");
  setButtons();
});

window.addEventListener("pagehide", () => {
  if (mic) mic.close();
  if (socket) socket.close();
});

setButtons();
