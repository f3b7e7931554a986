// A streaming windowed-sinc resampler. The AudioContext runs at the device's rate (often 44.1 or
// 48 kHz) while the protocol speaks 24 kHz audio; a browser's own resampling of a MediaStream into a
// context of another rate is not portable (Firefox refuses it), so both directions resample here.

const PHASES = 256; // kernel table resolution per input sample; linear interpolation in between

export class Resampler {
  /**
   * @param {number} inRate input sample rate (Hz)
   * @param {number} outRate output sample rate (Hz)
   * @param {number} zeroCrossings kernel half-width in zero crossings of the low-pass sinc
   */
  constructor(inRate, outRate, zeroCrossings = 12) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.passthrough = inRate === outRate;
    this.step = inRate / outRate; // input samples per output sample
    // Low-pass below the lower Nyquist frequency (with a little room for the transition band).
    this.cutoff = Math.min(1, outRate / inRate) * 0.94;
    this.halfWidth = Math.ceil(zeroCrossings / this.cutoff); // in input samples
    this.table = this.#kernelTable();
    // History starts with silence so the first outputs have their past; this costs halfWidth
    // input samples of delay (under 1 ms at the rates used here).
    this.history = new Float32Array(this.halfWidth);
    this.time = this.halfWidth; // position of the next output, in input samples from history[0]
  }

  #kernelTable() {
    const n = this.halfWidth * PHASES + 2;
    const table = new Float32Array(n);
    const c = this.cutoff;
    for (let i = 0; i < n; i++) {
      const x = i / PHASES; // distance in input samples
      if (x >= this.halfWidth) break;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * c * x) / (Math.PI * c * x);
      // Blackman window over [-halfWidth, halfWidth]
      const w = 0.42 + 0.5 * Math.cos((Math.PI * x) / this.halfWidth) + 0.08 * Math.cos((2 * Math.PI * x) / this.halfWidth);
      table[i] = c * sinc * w;
    }
    return table;
  }

  /** Resample the next block of input; returns the output samples it completes (maybe none). */
  process(input) {
    if (this.passthrough) return Float32Array.from(input);
    const buf = new Float32Array(this.history.length + input.length);
    buf.set(this.history, 0);
    buf.set(input, this.history.length);
    const hw = this.halfWidth;
    const table = this.table;
    const maxOut = Math.max(0, Math.ceil((buf.length - hw - this.time) / this.step) + 1);
    const out = new Float32Array(maxOut);
    let n = 0;
    let t = this.time;
    while (t + hw < buf.length && n < maxOut) {
      const first = Math.ceil(t - hw);
      const last = Math.floor(t + hw);
      let acc = 0;
      for (let i = Math.max(0, first); i <= last; i++) {
        const pos = Math.abs(t - i) * PHASES;
        const k = pos | 0;
        const frac = pos - k;
        acc += buf[i] * (table[k] + (table[k + 1] - table[k]) * frac);
      }
      out[n++] = acc;
      t += this.step;
    }
    // Keep what the next outputs still need.
    const keepFrom = Math.max(0, Math.min(buf.length, Math.floor(t - hw)));
    this.history = buf.slice(keepFrom);
    this.time = t - keepFrom;
    return n === maxOut ? out : out.subarray(0, n);
  }
}
