// The conversation's plumbing, without any UI: microphone -> Opus (WebCodecs) -> Ogg -> WebSocket,
// and WebSocket -> Ogg -> Opus -> jitter buffer -> speakers, plus the protocol's text and JSON events.
// Speaks the protocol of src/kame/server/protocol.py (Moshi's binary framing + KAME's events).

import { OggOpusDemuxer, OggOpusMuxer, opusPacketSamples } from "./ogg.js";
import { Resampler } from "./resampler.js";

export const KIND = { handshake: 0x00, audio: 0x01, text: 0x02, metadata: 0x04, error: 0x05 };
export const WIRE_RATE = 24000; // what the protocol carries both ways
const OPUS_RATE = 48000; // Opus decodes natively at 48 kHz
const FADE_SAMPLES = 240; // 10 ms at 24 kHz: the talk gate ramps instead of clicking

/** Which of the browser features the client needs are missing (empty when all are there). */
export async function missingFeatures() {
  const missing = [];
  if (!window.isSecureContext) missing.push("a secure context (open the page over HTTPS or from localhost)");
  if (!("WebSocket" in window)) missing.push("WebSocket");
  if (!window.AudioContext || !window.AudioWorkletNode) missing.push("Web Audio AudioWorklet");
  if (!navigator.mediaDevices?.getUserMedia) missing.push("microphone access (getUserMedia)");
  if (!window.AudioEncoder) missing.push("WebCodecs AudioEncoder");
  else if (!(await supported(AudioEncoder, { codec: "opus", sampleRate: WIRE_RATE, numberOfChannels: 1 })))
    missing.push("an Opus encoder in WebCodecs (AudioEncoder with codec 'opus')");
  if (!window.AudioDecoder) missing.push("WebCodecs AudioDecoder");
  else if (!(await supported(AudioDecoder, { codec: "opus", sampleRate: OPUS_RATE, numberOfChannels: 1 })))
    missing.push("an Opus decoder in WebCodecs (AudioDecoder with codec 'opus')");
  return missing;
}

async function supported(codecClass, config) {
  try {
    return (await codecClass.isConfigSupported(config)).supported === true;
  } catch {
    return false;
  }
}

/**
 * One conversation with the server. Events (subscribe with `on(type, fn)`):
 *  state {state, detail}  — connecting | queued | live | closed | full | unauthorized | error
 *  event {…}              — every 0x04 metadata object (session, partial, final, oracle_*, assistant, metrics…)
 *  text {piece}           — a 0x02 inner-monologue piece
 *  level {input, output}  — microphone (after the talk gate) and reply loudness, 0..1
 *  playback {…}           — jitter buffer statistics
 */
export class KameClient {
  constructor({ url, token = null, pipeline, prefillSeconds = 0.1, maxLatencySeconds = 0.5 } = {}) {
    // Relative to the page, so that the client also works behind a reverse proxy under a path prefix.
    const ws = new URL("api/chat?events=1", location.href);
    if (pipeline) ws.searchParams.set("pipeline", pipeline); // kame or cascade; the server's default if unset
    this.pipeline = pipeline ?? null;
    ws.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    this.token = token;
    this.url = url ?? ws.href;
    this.playbackOptions = { prefillSeconds, maxLatencySeconds, capacitySeconds: 4 };
    this.listeners = new Map();
    this.talking = false;
    this.state = "idle";
    this.stats = {
      sentPackets: 0,
      sentBytes: 0,
      receivedBytes: 0,
      receivedPackets: 0,
      decodedSamples: 0, // reply samples decoded (at the device's rate)
      playedSamples: 0, // reply samples the audio thread has played
      playbackBufferedMs: 0,
      playbackUnderruns: 0,
      playbackDropped: 0,
      replyPeak: 0, // loudest reply sample played so far
      crcErrors: 0,
      micDenied: false,
      sampleRate: null, // the audio device's rate, which the counters above use
    };
    this.gain = 0; // the talk gate, ramped per sample
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type).delete(fn);
  }

  #emit(type, detail) {
    for (const fn of this.listeners.get(type) ?? []) {
      try {
        fn(detail);
      } catch (err) {
        console.error(err);
      }
    }
  }

  #setState(state, detail = "") {
    this.state = state;
    this.#emit("state", { state, detail });
  }

  /** Ask for the microphone, start the audio graph and open the WebSocket. Call from a user gesture. */
  async start() {
    this.#setState("connecting", "Starting audio…");
    // The AudioContext must be created in the gesture for autoplay rules; the microphone prompt follows.
    this.ctx = new AudioContext({ latencyHint: "interactive" });
    const workletUrl = new URL("./worklets.js", import.meta.url);
    const moduleReady = this.ctx.audioWorklet.addModule(workletUrl);
    try {
      this.mic = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
      });
    } catch (err) {
      // Without a microphone the conversation still runs (silence in, the reply out): say so.
      this.mic = null;
      this.stats.micDenied = true;
      this.#emit("warning", `Microphone unavailable (${err.name}): you can listen, but not talk.`);
    }
    await moduleReady;
    if (this.closingReason !== undefined) {
      this.#teardown(); // hung up while the microphone prompt was open: release what it granted
      return;
    }
    await this.ctx.resume();
    this.stats.sampleRate = this.ctx.sampleRate;
    this.#startPlayback();
    this.#startEncoder();
    this.#startCapture();
    this.#openSocket();
  }

  setTalking(on) {
    this.talking = Boolean(on);
  }

  /** Hang up: closes the socket and releases the microphone and the audio device. */
  stop(reason = "You ended the conversation.") {
    this.closingReason = reason;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "bye");
    this.#teardown();
    if (this.state !== "closed") this.#setState("closed", reason);
  }

  #teardown() {
    this.mic?.getTracks().forEach((t) => t.stop());
    this.mic = null;
    for (const codec of [this.encoder, this.decoder]) {
      if (codec && codec.state !== "closed") {
        try {
          codec.close();
        } catch {
          /* already closed by an error */
        }
      }
    }
    this.encoder = this.decoder = null;
    if (this.ctx && this.ctx.state !== "closed") this.ctx.close().catch(() => {});
    this.ctx = null;
  }

  // -- sending: microphone -> 24 kHz -> talk gate -> Opus -> Ogg -> socket ------------------------
  #startCapture() {
    const ctx = this.ctx;
    this.captureNode = new AudioWorkletNode(ctx, "kame-capture", { numberOfInputs: 1, numberOfOutputs: 0 });
    if (this.mic) ctx.createMediaStreamSource(this.mic).connect(this.captureNode);
    this.toWire = new Resampler(ctx.sampleRate, WIRE_RATE);
    this.captureNode.port.onmessage = (event) => this.#onCapture(event.data);
  }

  #onCapture(block) {
    const pcm = this.toWire.process(block);
    const target = this.talking ? 1 : 0;
    const stepGain = 1 / FADE_SAMPLES;
    let sumSquares = 0;
    for (let i = 0; i < pcm.length; i++) {
      if (this.gain !== target) this.gain = target > this.gain ? Math.min(1, this.gain + stepGain) : Math.max(0, this.gain - stepGain);
      pcm[i] *= this.gain;
      sumSquares += pcm[i] * pcm[i];
    }
    // The loudest block since the last meter update, so short words still move the meter.
    if (pcm.length) this.inputLevel = Math.max(this.inputLevel ?? 0, Math.sqrt(sumSquares / pcm.length));
    // Audio flows only once the session is ready: before the handshake the server is not reading.
    if (this.state !== "live" || !this.encoder || this.encoder.state !== "configured" || !pcm.length) return;
    this.encoder.encode(
      new AudioData({
        format: "f32-planar",
        sampleRate: WIRE_RATE,
        numberOfFrames: pcm.length,
        numberOfChannels: 1,
        timestamp: Math.round((this.encodedSamples / WIRE_RATE) * 1e6),
        data: pcm,
      }),
    );
    this.encodedSamples += pcm.length;
  }

  #startEncoder() {
    this.encodedSamples = 0;
    this.muxer = new OggOpusMuxer({ inputSampleRate: WIRE_RATE });
    this.encoder = new AudioEncoder({
      output: (chunk, metadata) => this.#onEncoded(chunk, metadata),
      error: (err) => this.#fail(`The Opus encoder failed: ${err.message}`),
    });
    this.encoder.configure({
      codec: "opus",
      sampleRate: WIRE_RATE,
      numberOfChannels: 1,
      bitrate: 32000,
      opus: { frameDuration: 20000 }, // 20 ms packets: low latency at a few % of overhead
    });
  }

  #onEncoded(chunk, metadata) {
    const description = metadata?.decoderConfig?.description;
    if (description && !this.muxer.started) {
      // Chrome's encoder reports its real pre-skip in an OpusHead; use it when there is one.
      const head = new Uint8Array(description instanceof ArrayBuffer ? description : description.buffer);
      if (head.length >= 19 && String.fromCharCode(...head.subarray(0, 8)) === "OpusHead")
        this.muxer.head.preSkip = head[10] | (head[11] << 8);
    }
    const packet = new Uint8Array(chunk.byteLength);
    chunk.copyTo(packet);
    const samples48k = chunk.duration ? Math.round((chunk.duration * OPUS_RATE) / 1e6) : undefined;
    const pages = this.muxer.push(packet, samples48k);
    if (this.ws?.readyState !== WebSocket.OPEN) return;
    const message = new Uint8Array(1 + pages.length);
    message[0] = KIND.audio;
    message.set(pages, 1);
    this.ws.send(message);
    this.stats.sentPackets++;
    this.stats.sentBytes += message.length;
  }

  // -- receiving: socket -> Ogg -> Opus -> device rate -> jitter buffer ---------------------------
  #startPlayback() {
    this.playbackNode = new AudioWorkletNode(this.ctx, "kame-playback", {
      numberOfInputs: 0,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: this.playbackOptions,
    });
    this.playbackNode.connect(this.ctx.destination);
    this.playbackNode.port.onmessage = (event) => this.#onPlayback(event.data);
    this.fromOpus = null; // made for the decoder's actual output rate
    this.demuxer = new OggOpusDemuxer();
    this.decodedTimestamp = 0;
    this.decoder = new AudioDecoder({
      output: (data) => this.#onDecoded(data),
      error: (err) => this.#fail(`The Opus decoder failed: ${err.message}`),
    });
    this.decoder.configure({ codec: "opus", sampleRate: OPUS_RATE, numberOfChannels: 1 });
  }

  #onAudio(bytes) {
    this.stats.receivedBytes += bytes.length;
    const packets = this.demuxer.push(bytes);
    this.stats.crcErrors = this.demuxer.crcErrors;
    if (!this.decoder || this.decoder.state !== "configured") return;
    for (const { packet } of packets) {
      this.stats.receivedPackets++;
      this.decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: this.decodedTimestamp, data: packet }));
      this.decodedTimestamp += Math.round((opusPacketSamples(packet) / OPUS_RATE) * 1e6);
    }
  }

  #onDecoded(data) {
    try {
      const pcm = new Float32Array(data.numberOfFrames);
      data.copyTo(pcm, { planeIndex: 0, format: "f32-planar" });
      if (!this.fromOpus || this.fromOpus.inRate !== data.sampleRate)
        this.fromOpus = new Resampler(data.sampleRate, this.stats.sampleRate);
      const out = this.fromOpus.process(pcm);
      this.stats.decodedSamples += out.length;
      if (out.length) this.playbackNode.port.postMessage(out, [out.buffer]);
    } finally {
      data.close();
    }
  }

  #onPlayback(report) {
    const s = this.stats;
    s.playedSamples = report.played;
    s.playbackBufferedMs = (report.buffered / s.sampleRate) * 1000;
    s.playbackUnderruns = report.underruns;
    s.playbackDropped = report.dropped;
    s.replyPeak = Math.max(s.replyPeak, report.peak);
    this.#emit("playback", s);
    this.#emit("level", { input: this.inputLevel ?? 0, output: report.rms });
    this.inputLevel = 0;
  }

  // -- the socket ----------------------------------------------------------------------------------
  #openSocket() {
    this.#setState("connecting", "Connecting to the server…");
    // A browser cannot set headers on a WebSocket, and prints the URL of one that fails in its
    // console: the token rides in a subprotocol ("kame.token." + its UTF-8 in hex), never in a URL.
    const protocols = ["kame"];
    if (this.token) {
      const hex = Array.from(new TextEncoder().encode(this.token), (b) => b.toString(16).padStart(2, "0")).join("");
      protocols.push(`kame.token.${hex}`);
    }
    const ws = new WebSocket(this.url, protocols);
    ws.binaryType = "arraybuffer";
    this.ws = ws;
    this.opened = false;
    ws.onopen = () => {
      this.opened = true;
      this.#setState("connecting", "Connected; waiting for the session to start…");
    };
    ws.onmessage = (event) => this.#onMessage(new Uint8Array(event.data));
    ws.onerror = () => {}; // the close event that follows carries what we can know
    ws.onclose = (event) => this.#onClose(event);
  }

  #onMessage(bytes) {
    if (!bytes.length) return;
    const kind = bytes[0];
    const payload = bytes.subarray(1);
    switch (kind) {
      case KIND.handshake:
        this.#setState("live", "");
        break;
      case KIND.audio:
        this.#onAudio(payload);
        break;
      case KIND.text:
        this.#emit("text", { piece: new TextDecoder().decode(payload) });
        break;
      case KIND.metadata: {
        let event;
        try {
          event = JSON.parse(new TextDecoder().decode(payload));
        } catch {
          return;
        }
        if (event.type === "queued") this.#setState("queued", `Waiting for a free session: you are number ${event.position} in line.`);
        // The cascade stopped its reply for the user: drop what this page still buffers of it too.
        if (event.type === "barge_in") this.playbackNode?.port.postMessage("flush");
        this.#emit("event", event);
        break;
      }
      case KIND.error:
        this.serverError = new TextDecoder().decode(payload);
        this.#emit("server-error", this.serverError);
        break;
      default:
        break; // kinds this client does not use (Moshi's control and ping)
    }
  }

  async #onClose(event) {
    const wasStopped = this.closingReason !== undefined;
    this.#teardown();
    if (wasStopped) return;
    if (!this.opened) {
      // A refused upgrade (401 no token, 403 foreign page, 503 full) looks like any failed connection
      // to a page; a plain request to the same endpoint and the health endpoint tell which it was.
      const refusal = await this.#refusal();
      if (refusal) {
        this.#setState(refusal.state, refusal.detail);
        return;
      }
      const full = await this.#serverIsFull();
      if (full) {
        this.#setState("full", full);
        return;
      }
      this.#setState("error", "Could not reach the kame server. Is it running?");
      return;
    }
    const why = this.serverError ?? (event.reason || `the connection closed (code ${event.code})`);
    this.#setState("closed", `The session ended: ${why}`);
  }

  async #refusal() {
    try {
      const headers = this.token ? { Authorization: `Bearer ${this.token}` } : {};
      const response = await fetch(new URL("api/chat", location.href), { cache: "no-store", headers });
      if (response.status === 401)
        return {
          state: "unauthorized",
          detail: this.token ? "The server did not accept this access token." : "This server needs an access token.",
        };
      if (response.status === 403) return { state: "error", detail: "The server does not accept sessions from this page's origin (HTTP 403)." };
      if (response.status === 429) return { state: "error", detail: "Too many connections from this address (HTTP 429). Close another tab and try again." };
    } catch {
      /* unreachable: said below */
    }
    return null;
  }

  async #serverIsFull() {
    try {
      const response = await fetch(new URL("healthz", location.href), { cache: "no-store" });
      if (!response.ok) return null;
      const health = await response.json();
      const cascade = (this.pipeline ?? health.pipelines?.[0]) === "cascade";
      const [used, capacity] = cascade
        ? [health.cascade_sessions, health.cascade_capacity]
        : [health.sessions - (health.cascade_sessions ?? 0), health.capacity];
      if (used >= capacity)
        return `The server is full: all ${capacity} ${cascade ? "cascade " : ""}sessions are in use (HTTP 503). Try again in a minute.`;
    } catch {
      /* unreachable: not a full server */
    }
    return null;
  }

  #fail(message) {
    if (this.state === "closed" || this.state === "error") return;
    this.closingReason = message;
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, "client error");
    this.#teardown();
    this.#setState("error", message);
  }
}
