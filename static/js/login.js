// Voice login: one utterance over a verify session (two when the server asks `again`); on accept,
// the page hands the signed token to POST /session, which checks it and signs the user in.
import { FORMAT, Microphone, PauseDetector, microphoneProblem, showLevel } from "./capture.js";
import { VoiceSocket, csrfToken, explainError, say } from "./voice-socket.js";

const root = document.getElementById("login");
const form = document.getElementById("login-form");
const userInput = document.getElementById("user");
const talk = document.getElementById("talk");
const autoStop = document.getElementById("auto-stop");
const meter = document.getElementById("level");
const status = document.getElementById("status");
const problem = document.getElementById("problem");
const problemText = document.getElementById("problem-text");
const retry = document.getElementById("retry");
const decision = document.getElementById("decision");
const MAX_SECONDS = 25; // under the server's 30 s per utterance

let mic = null;
let socket = null;
let recording = false;
let seconds = 0;
let pending = null; // chunks captured while the session opens
const pause = new PauseDetector({ pauseSeconds: 1.2 });

function showProblem(text, retryLabel = "") {
  say(problemText, text);
  problem.hidden = false;
  retry.textContent = retryLabel;
  retry.hidden = !retryLabel;
}

function showDecision(kind, title, text) {
  decision.className = `card notice notice-${kind}`;
  document.getElementById("decision-title").textContent = title;
  document.getElementById("decision-text").textContent = text;
  decision.hidden = false;
}

function release() {
  if (mic) mic.close();
  mic = null;
  recording = false;
  pending = null;
  showLevel(meter, -100);
  talk.textContent = "Press to talk";
  talk.classList.remove("recording");
  talk.disabled = false;
  userInput.disabled = false;
}

async function start() {
  problem.hidden = true;
  decision.hidden = true;
  talk.disabled = true;
  userInput.disabled = true;
  // The microphone first: its permission prompt may take a while, and the server waits only 15 s.
  pending = [];
  try {
    mic = await Microphone.open(onChunk);
  } catch (error) {
    release();
    showProblem(microphoneProblem(error), "Try again");
    say(status, "The microphone is not available.", "bad");
    return;
  }
  const name = userInput.value.trim();
  // second_chance: a near miss or too little speech is answered `again`, and one more try decides on both.
  const message = { type: "start", mode: "verify", format: FORMAT, second_chance: true };
  if (name) message.user = name;
  say(status, "Connecting…");
  pause.reset();
  seconds = 0;
  recording = true;
  socket = new VoiceSocket(message, { onMessage, onClose });
  try {
    await socket.open();
  } catch (outcome) {
    socket = null;
    release();
    if (outcome.error) showProblem(explainError(outcome.error));
    else showProblem("Cannot reach the server. Check your connection and try again.", "Reconnect");
    say(status, "");
    return;
  }
  showChallenge(socket.challenge);
  // What was said while connecting is part of the utterance.
  pending.forEach((pcm) => socket.sendAudio(pcm));
  pending = null;
  showListening();
}

/** Turn the button into Stop and say the page is listening. */
function showListening() {
  talk.textContent = "Stop";
  talk.classList.add("recording");
  talk.disabled = false;
  talk.focus();
  say(status, "Listening… speak now.", "rec");
}

function stop() {
  if (!recording || pending) return;
  recording = false;
  talk.disabled = true;
  socket.stop();
  // The microphone stays open, unheard, until the answer: if it is `again`, the next try starts at once.
  showLevel(meter, -100);
  say(status, "Checking your voice…");
}

function onChunk(chunk) {
  if (!recording) return;
  showLevel(meter, chunk.dbfs);
  if (pending) pending.push(chunk.pcm);
  else socket.sendAudio(chunk.pcm);
  const length = chunk.pcm.byteLength / 2 / FORMAT.sample_rate;
  seconds += length;
  if ((pause.feed(chunk.dbfs, length) && autoStop.checked) || seconds >= MAX_SECONDS) stop();
}

// The server shows scores only on an accept (the user's own) and to admins.
// The decision is on a calibrated score (docs/threshold.md): the raw score alone, no raw "needs".
const score = (result) => (typeof result.score === "number" ? ` (score ${result.score.toFixed(2)})` : "");

const challengeBox = document.getElementById("challenge");

/** Show the digits to read aloud large, or hide the box when the server asks for none. */
function showChallenge(challenge) {
  challengeBox.hidden = !challenge;
  if (!challenge) return;
  challengeBox.querySelector(".digits").textContent = challenge.text;
  const sentence = document.getElementById("read-aloud");
  if (sentence) sentence.hidden = true; // the digits are what to say now
}

/** Listen for one more try on the same session: the server asked `again` (it decides on both tries). */
function listenAgain(message) {
  const nearly = message.reason === "near_miss";
  showDecision("warn", nearly ? "Nearly: once more" : "Too little speech: once more",
    nearly ? "Your voice came close. Say the new digits, and both tries are decided together."
      : `We heard ${message.speech_seconds ?? 0} s of speech. Say it again, in full.`);
  pause.reset();
  seconds = 0;
  recording = true;
  showListening();
}

async function onMessage(result) {
  if (result.type === "challenge") showChallenge(result);
  if (result.type === "again") listenAgain(result);
  if (result.type !== "result") return;
  challengeBox.hidden = true;
  release();
  say(status, "");
  if (result.state === "accept") {
    showDecision("ok", `Accepted: welcome, ${result.user}`, `Your voice matched${score(result)}. Signing you in…`);
    const response = await fetch(root.dataset.session, {
      method: "POST",
      headers: { "Content-Type": "application/json", "X-CSRFToken": csrfToken() },
      body: JSON.stringify({ token: result.token }),
      credentials: "same-origin",
    });
    if (response.ok) {
      const body = await response.json();
      document.getElementById("decision-text").textContent = `Your voice matched${score(result)}. You are signed in.`;
      setTimeout(() => location.assign(body.next), 1500);
    } else {
      showDecision("bad", "Could not sign you in", "The server did not accept the sign-in. Try again.");
    }
  } else if (result.state === "reject") {
    const who = result.user ? "that name" : "anyone enrolled";
    showDecision("bad", "Not recognised",
      `Your voice did not match ${who}${score(result)}. You are not signed in. Try again, speaking naturally.`);
  } else if (result.state === "challenge_failed") {
    showDecision("bad", "Wrong digits", "We did not hear the digits shown. You are not signed in. Try again and read the new digits aloud.");
  } else if (result.state === "challenge_expired") {
    showDecision("bad", "Too slow", "The digits expired after a minute. Try again with new ones.");
  } else if (result.state === "replay") {
    showDecision("bad", "Not signed in", "This sounds like a recording of an earlier sign-in. Speak live and try again.");
  } else if (result.state === "locked") {
    showDecision("bad", "Too many failed attempts",
      `Too many failed voice attempts from your address. Try again in ${result.retry_after} s.`);
  } else if (result.state === "no_speech" || result.state === "not_enough_speech") {
    showDecision("warn", "Too little speech", `We heard ${result.speech_seconds ?? 0} s of speech: say a full sentence or two, then try again. Nothing was counted.`);
  } else {
    showDecision("bad", "Cannot log in", result.message || result.state);
  }
  decision.focus();
}

function onClose(outcome) {
  if (outcome.finished) return;
  release();
  say(status, "");
  if (outcome.error) showProblem(explainError(outcome.error));
  else showProblem("The connection to the server was lost before a decision. Nothing was decided.", "Reconnect and try again");
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  if (recording) stop();
  else if (!talk.disabled) start();
});

retry.addEventListener("click", () => {
  problem.hidden = true;
  start();
});

window.addEventListener("pagehide", release);
