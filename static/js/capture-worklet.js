// AudioWorklet processor: mixes the microphone down to mono, resamples it to 16 kHz with a
// windowed-sinc low-pass, and posts 50 ms chunks of 16-bit PCM with their level.
// Runs on the audio thread; `sampleRate` is the AudioContext's rate (often 44100 or 48000).
// Each chunk also says how much audio has been lost since capture began (`lost`, seconds): the
// stalls of the audio thread (starved, or its context stopped) while the microphone went on.
// A stall is a wait between two calls well past the audio the first one carried; a slow drift
// of the audio clock is no stall, and frames that come late and are caught up are not lost.
const STALL = 0.1; // seconds; render calls come in bursts a few hundredths of a second apart

const OUT_RATE = 16000;
const CHUNK = 800; // samples at 16 kHz: 50 ms
const ZERO_CROSSINGS = 16; // kernel half-width, in output samples
const TABLE_STEPS = 64; // kernel table entries per input sample

class Resampler {
  constructor(inRate, outRate) {
    this.step = inRate / outRate;
    // Cut off a little below the output's Nyquist frequency so nothing aliases.
    const cutoff = 0.5 * Math.min(1, outRate / inRate) * 0.92; // cycles per input sample
    this.half = Math.ceil(ZERO_CROSSINGS * Math.max(1, this.step));
    const size = this.half * TABLE_STEPS + 2;
    this.table = new Float32Array(size);
    for (let i = 0; i < size; i++) {
      const t = i / TABLE_STEPS;
      const x = 2 * cutoff * t;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = Math.min(1, t / this.half);
      const blackman = 0.42 + 0.5 * Math.cos(Math.PI * w) + 0.08 * Math.cos(2 * Math.PI * w);
      this.table[i] = 2 * cutoff * sinc * blackman;
    }
    this.buffer = new Float32Array(4096);
    this.length = this.half; // starts with half a kernel of silence
    this.pos = this.half; // input position of the next output sample
  }

  kernel(distance) {
    const at = Math.abs(distance) * TABLE_STEPS;
    const i = Math.floor(at);
    if (i + 1 >= this.table.length) return 0;
    const frac = at - i;
    return this.table[i] + (this.table[i + 1] - this.table[i]) * frac;
  }

  push(input, emit) {
    if (this.length + input.length > this.buffer.length) {
      const bigger = new Float32Array(Math.max(this.buffer.length * 2, this.length + input.length));
      bigger.set(this.buffer.subarray(0, this.length));
      this.buffer = bigger;
    }
    this.buffer.set(input, this.length);
    this.length += input.length;
    while (Math.floor(this.pos) + this.half < this.length) {
      const centre = Math.floor(this.pos);
      let sum = 0;
      for (let k = centre - this.half + 1; k <= centre + this.half; k++) {
        sum += this.buffer[k] * this.kernel(k - this.pos);
      }
      emit(sum);
      this.pos += this.step;
    }
    // Keep only the input the next outputs still need.
    const drop = Math.floor(this.pos) - this.half;
    if (drop > 0) {
      this.buffer.copyWithin(0, drop, this.length);
      this.length -= drop;
      this.pos -= drop;
    }
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, OUT_RATE);
    this.chunk = new Int16Array(CHUNK);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.mono = new Float32Array(128);
    this.startedAt = null; // wall clock (ms) of the first call
    this.frames = 0; // input frames processed since then
    this.lastCall = null; // wall clock (ms) of the previous call, and its frames
    this.lastFrames = 0;
    this.stalled = 0; // seconds of stalls
    this.emit = (value) => {
      const clamped = Math.max(-1, Math.min(1, value));
      this.sumSquares += clamped * clamped;
      this.peak = Math.max(this.peak, Math.abs(clamped));
      this.chunk[this.filled++] = clamped < 0 ? clamped * 32768 : clamped * 32767;
      if (this.filled === CHUNK) this.post();
    };
  }

  post() {
    const pcm = this.chunk.buffer;
    this.port.postMessage({ pcm, rms: Math.sqrt(this.sumSquares / CHUNK), peak: this.peak, lost: this.lost() }, [pcm]);
    this.chunk = new Int16Array(CHUNK);
    this.filled = 0;
    this.sumSquares = 0;
    this.peak = 0;
  }

  /** Count one call's frames, and a stall since the previous call. */
  tick(frames) {
    const now = Date.now();
    if (this.lastCall === null) {
      this.startedAt = now;
    } else {
      const excess = (now - this.lastCall) / 1000 - this.lastFrames / sampleRate;
      if (excess > STALL) this.stalled += excess;
    }
    this.lastCall = now;
    this.lastFrames = frames;
    this.frames += frames;
  }

  /** Return the seconds lost to stalls, less any the thread has caught up since. */
  lost() {
    const behind = (Date.now() - this.startedAt) / 1000 - this.frames / sampleRate;
    return Math.max(0, Math.min(this.stalled, behind));
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length) {
      const frames = channels[0].length;
      this.tick(frames);
      if (this.mono.length !== frames) this.mono = new Float32Array(frames);
      this.mono.fill(0);
      for (const channel of channels) {
        for (let i = 0; i < frames; i++) this.mono[i] += channel[i] / channels.length;
      }
      this.resampler.push(this.mono, this.emit);
    }
    return true;
  }
}

registerProcessor("capture", CaptureProcessor);
