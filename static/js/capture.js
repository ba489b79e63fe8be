// The microphone: getUserMedia into an AudioWorklet (capture-worklet.js) that hands back
// 16 kHz mono 16-bit PCM chunks with their level; plus a pause detector and plain-words errors.

export const FORMAT = { encoding: "pcm_s16le", sample_rate: 16000, channels: 1 };
const WORKLET_URL = new URL("./capture-worklet.js", import.meta.url);

export class Microphone {
  /** Ask for the microphone and start capturing; `onChunk({pcm, rms, peak, dbfs})` gets 50 ms chunks. */
  static async open(onChunk) {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw Object.assign(new Error("no mediaDevices"), { name: "InsecureContextError" });
    }
    // Processing meant for calls changes the voice: a voiceprint wants the plain signal.
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
    });
    const context = new AudioContext();
    try {
      await context.audioWorklet.addModule(WORKLET_URL);
      const source = context.createMediaStreamSource(stream);
      const node = new AudioWorkletNode(context, "capture", { numberOfOutputs: 1 });
      const mute = context.createGain();
      mute.gain.value = 0;
      // Connected through a silent gain so the graph pulls the worklet without playing anything.
      source.connect(node).connect(mute).connect(context.destination);
      node.port.onmessage = ({ data }) => {
        onChunk({ ...data, dbfs: data.rms > 0 ? 20 * Math.log10(data.rms) : -100 });
      };
      await context.resume();
      return new Microphone(stream, context);
    } catch (error) {
      stream.getTracks().forEach((track) => track.stop());
      context.close();
      throw error;
    }
  }

  constructor(stream, context) {
    this.stream = stream;
    this.context = context;
  }

  /** Stop capturing and release the device (the browser's recording indicator goes off). */
  close() {
    this.stream.getTracks().forEach((track) => track.stop());
    this.context.close();
  }
}

/** Return a sentence for a failed getUserMedia (or worklet) that says what to do. */
export function microphoneProblem(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access is blocked. Allow this site to use the microphone (in the browser's address bar or site settings), then try again.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Connect a microphone or headset (or enable it in your system settings), then try again.";
    case "NotReadableError":
    case "AbortError":
      return "The microphone could not be started: another application may be using it. Close it, then try again.";
    case "InsecureContextError":
      return "The microphone is only available on a secure page: open this site over https (or on localhost).";
    default:
      return `The microphone could not be started (${error && error.message ? error.message : error}).`;
  }
}

/** Map a level in dBFS to a 0–100 meter position. */
export function meterPercent(dbfs) {
  return Math.round(Math.max(0, Math.min(1, (dbfs + 60) / 60)) * 100);
}

/** Notice the end of speech: some voiced audio, then `pauseSeconds` below the noise floor + margin. */
export class PauseDetector {
  constructor({ pauseSeconds = 1.2, minSpeechSeconds = 0.5 } = {}) {
    this.pauseSeconds = pauseSeconds;
    this.minSpeechSeconds = minSpeechSeconds;
    this.reset();
  }

  reset() {
    this.floor = -70;
    this.speech = 0;
    this.silence = 0;
  }

  /** Take one chunk's level; return true once a pause follows enough speech. */
  feed(dbfs, seconds) {
    const level = Math.max(-100, dbfs);
    // The floor follows quiet stretches at once and rises slowly through speech.
    this.floor = level < this.floor ? level : this.floor + 1.0 * seconds;
    const voiced = level > Math.max(this.floor + 12, -55);
    if (voiced) {
      this.speech += seconds;
      this.silence = 0;
    } else {
      this.silence += seconds;
    }
    return this.speech >= this.minSpeechSeconds && this.silence >= this.pauseSeconds;
  }
}

/** Draw a level on a meter element (`.level` with a `.level-bar` child and role=meter). */
export function showLevel(meter, dbfs) {
  const percent = meterPercent(dbfs);
  meter.querySelector(".level-bar").style.width = `${percent}%`;
  meter.setAttribute("aria-valuenow", String(percent));
  meter.classList.toggle("hot", dbfs > -3);
}
