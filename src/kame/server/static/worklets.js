// Audio-thread halves of the client: capture hands the microphone to the page in 20 ms blocks, and
// playback plays decoded reply audio from a small jitter buffer. Both run on the audio rendering
// thread, so a busy page (layout, decoding) never makes the audio stutter.

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = Math.round(sampleRate * 0.02);
    this.buffer = new Float32Array(this.block);
    this.filled = 0;
  }

  process(inputs) {
    // No input (no microphone, or a muted track) still produces frames: silence keeps the clock going.
    const channel = inputs[0] && inputs[0][0];
    const frames = channel ? channel.length : 128;
    for (let i = 0; i < frames; i++) {
      this.buffer[this.filled++] = channel ? channel[i] : 0;
      if (this.filled === this.block) {
        const pcm = this.buffer;
        this.port.postMessage(pcm, [pcm.buffer]);
        this.buffer = new Float32Array(this.block);
        this.filled = 0;
      }
    }
    return true;
  }
}

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.ring = new Float32Array(Math.round(sampleRate * (opts.capacitySeconds || 4)));
    this.read = 0;
    this.write = 0;
    this.size = 0;
    // Start (and restart after an underrun) once this much is buffered; beyond maxLatency the oldest
    // audio is dropped so that a burst after a network stall does not delay every later word.
    this.prefill = Math.round(sampleRate * (opts.prefillSeconds || 0.1));
    this.maxBuffered = Math.round(sampleRate * (opts.maxLatencySeconds || 0.5));
    this.playing = false;
    this.played = 0;
    this.underruns = 0;
    this.dropped = 0;
    this.peak = 0;
    this.sumSquares = 0;
    this.levelFrames = 0;
    this.reportEvery = Math.round(sampleRate * 0.05);
    this.sinceReport = 0;
    this.port.onmessage = (event) => {
      if (event.data === "flush") {
        this.read = this.write = this.size = 0;
        this.playing = false;
      } else {
        this.enqueue(event.data);
      }
    };
  }

  enqueue(pcm) {
    const cap = this.ring.length;
    for (let i = 0; i < pcm.length; i++) {
      this.ring[this.write] = pcm[i];
      this.write = (this.write + 1) % cap;
    }
    this.size += pcm.length;
    if (this.size > cap) {
      this.dropped += this.size - cap;
      this.read = this.write;
      this.size = cap;
    }
    if (this.size > this.maxBuffered) {
      // Catch up to halfway between prefill and the limit: enough cushion for the next burst.
      const drop = this.size - Math.round((this.prefill + this.maxBuffered) / 2);
      this.read = (this.read + drop) % cap;
      this.size -= drop;
      this.dropped += drop;
    }
    if (!this.playing && this.size >= this.prefill) this.playing = true;
  }

  process(_inputs, outputs) {
    const out = outputs[0][0];
    const cap = this.ring.length;
    let i = 0;
    if (this.playing) {
      const n = Math.min(out.length, this.size);
      for (; i < n; i++) {
        const s = this.ring[this.read];
        out[i] = s;
        this.read = (this.read + 1) % cap;
        this.sumSquares += s * s;
        const a = s < 0 ? -s : s;
        if (a > this.peak) this.peak = a;
      }
      this.size -= n;
      this.played += n;
      if (n < out.length) {
        this.underruns++;
        this.playing = false;
      }
    }
    for (; i < out.length; i++) out[i] = 0;
    for (let c = 1; c < outputs[0].length; c++) outputs[0][c].set(out);
    this.levelFrames += out.length;
    this.sinceReport += out.length;
    if (this.sinceReport >= this.reportEvery) {
      this.port.postMessage({
        played: this.played,
        buffered: this.size,
        underruns: this.underruns,
        dropped: this.dropped,
        rms: Math.sqrt(this.sumSquares / this.levelFrames),
        peak: this.peak,
      });
      this.sinceReport = 0;
      this.sumSquares = 0;
      this.levelFrames = 0;
      this.peak = 0;
    }
    return true;
  }
}

registerProcessor("kame-capture", CaptureProcessor);
registerProcessor("kame-playback", PlaybackProcessor);
