// Ogg encapsulation of Opus (RFC 3533, RFC 7845), just what Moshi's protocol needs: the server's
// sphn.OpusStreamWriter sends one Opus packet per page after an OpusHead and an OpusTags page, and its
// reader expects the same from us. WebCodecs gives raw Opus packets, so the framing is ours.

const CRC_TABLE = (() => {
  // Ogg's CRC-32: polynomial 0x04c11db7, not reflected, initial value 0, no final xor.
  const table = new Uint32Array(256);
  for (let i = 0; i < 256; i++) {
    let r = i << 24;
    for (let j = 0; j < 8; j++) r = r & 0x80000000 ? (r << 1) ^ 0x04c11db7 : r << 1;
    table[i] = r >>> 0;
  }
  return table;
})();

export function oggCrc32(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ bytes[i]) & 0xff]) >>> 0;
  return crc;
}

const CAPTURE = [0x4f, 0x67, 0x67, 0x53]; // "OggS"
const HEADER_BYTES = 27;
const MAX_PACKET_BYTES = 255 * 255 - 1; // one page's lacing table; Opus packets are far smaller
const ascii = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0));
const startsWith = (bytes, prefix) => bytes.length >= prefix.length && prefix.every((b, i) => bytes[i] === b);
const OPUS_HEAD = [...ascii("OpusHead")];
const OPUS_TAGS = [...ascii("OpusTags")];

export const HEADER_TYPE = { continued: 1, first: 2, last: 4 };

/** Samples (at 48 kHz, Opus's clock) in one Opus packet, from its TOC byte (RFC 6716 section 3.1). */
export function opusPacketSamples(packet) {
  if (!packet.length) return 0;
  const toc = packet[0];
  const config = toc >> 3;
  let frameSamples;
  if (config < 12) frameSamples = [480, 960, 1920, 2880][config & 3]; // SILK: 10, 20, 40, 60 ms
  else if (config < 16) frameSamples = config & 1 ? 960 : 480; // hybrid: 10, 20 ms
  else frameSamples = [120, 240, 480, 960][config & 3]; // CELT: 2.5, 5, 10, 20 ms
  const code = toc & 3;
  const frames = code === 0 ? 1 : code === 3 ? (packet.length > 1 ? packet[1] & 0x3f : 0) : 2;
  return frames * frameSamples;
}

export function opusHead({ channels = 1, preSkip = 312, inputSampleRate = 24000 } = {}) {
  const head = new Uint8Array(19);
  const view = new DataView(head.buffer);
  head.set(OPUS_HEAD, 0);
  head[8] = 1; // version
  head[9] = channels;
  view.setUint16(10, preSkip, true);
  view.setUint32(12, inputSampleRate, true);
  view.setInt16(16, 0, true); // output gain
  head[18] = 0; // channel mapping family 0: mono or stereo
  return head;
}

export function parseOpusHead(packet) {
  if (!startsWith(packet, OPUS_HEAD) || packet.length < 19) return null;
  const view = new DataView(packet.buffer, packet.byteOffset, packet.byteLength);
  return { channels: packet[9], preSkip: view.getUint16(10, true), inputSampleRate: view.getUint32(12, true) };
}

export function opusTags(vendor = "kame web client") {
  const v = new TextEncoder().encode(vendor);
  const tags = new Uint8Array(8 + 4 + v.length + 4);
  const view = new DataView(tags.buffer);
  tags.set(OPUS_TAGS, 0);
  view.setUint32(8, v.length, true);
  tags.set(v, 12);
  view.setUint32(12 + v.length, 0, true); // no user comments
  return tags;
}

/** One Ogg page holding one whole packet. */
export function oggPage(packet, { serial, sequence, granule, headerType = 0 }) {
  if (packet.length > MAX_PACKET_BYTES) throw new RangeError(`an Ogg page holds at most ${MAX_PACKET_BYTES} bytes`);
  const lacing = [];
  for (let left = packet.length; ; left -= 255) {
    if (left < 255) {
      lacing.push(left); // a value under 255 ends the packet (0 when its length is a multiple of 255)
      break;
    }
    lacing.push(255);
  }
  const page = new Uint8Array(HEADER_BYTES + lacing.length + packet.length);
  const view = new DataView(page.buffer);
  page.set(CAPTURE, 0);
  page[4] = 0; // version
  page[5] = headerType;
  view.setBigInt64(6, BigInt(granule), true);
  view.setUint32(14, serial >>> 0, true);
  view.setUint32(18, sequence >>> 0, true);
  page[26] = lacing.length;
  page.set(lacing, HEADER_BYTES);
  page.set(packet, HEADER_BYTES + lacing.length);
  view.setUint32(22, oggCrc32(page), true); // computed with the CRC field still zero
  return page;
}

/** Opus packets in, Ogg pages out; the first call also returns the OpusHead and OpusTags pages. */
export class OggOpusMuxer {
  constructor({ channels = 1, preSkip = 312, inputSampleRate = 24000, serial } = {}) {
    this.head = { channels, preSkip, inputSampleRate };
    this.serial = serial ?? (Math.random() * 0x100000000) >>> 0;
    this.sequence = 0;
    this.granule = 0; // 48 kHz samples up to the end of the last packet, pre-skip included
    this.started = false;
  }

  /** The bytes to send for one packet: one page, preceded by the two header pages the first time. */
  push(packet, samples48k = opusPacketSamples(packet)) {
    const pages = [];
    if (!this.started) {
      this.started = true;
      pages.push(this.#page(opusHead(this.head), 0, HEADER_TYPE.first));
      pages.push(this.#page(opusTags(), 0));
    }
    this.granule += samples48k;
    pages.push(this.#page(packet, this.granule));
    return concatBytes(pages);
  }

  #page(packet, granule, headerType = 0) {
    return oggPage(packet, { serial: this.serial, sequence: this.sequence++, granule, headerType });
  }
}

/**
 * Bytes in (any split: a message may hold several pages or part of one), Opus packets out.
 * Pages with a bad CRC are dropped and counted; the OpusHead is parsed, OpusTags skipped.
 */
export class OggOpusDemuxer {
  constructor() {
    this.buffer = new Uint8Array(0);
    this.partial = []; // pieces of a packet continued on the next page
    this.head = null;
    this.pages = 0;
    this.crcErrors = 0;
    this.skippedBytes = 0;
  }

  /** Returns [{packet: Uint8Array, granule: number|null}] for every packet completed by these bytes. */
  push(bytes) {
    this.buffer = this.buffer.length ? concatBytes([this.buffer, bytes]) : new Uint8Array(bytes);
    const packets = [];
    let pos = 0;
    const buf = this.buffer;
    while (buf.length - pos >= HEADER_BYTES) {
      if (!(buf[pos] === 0x4f && buf[pos + 1] === 0x67 && buf[pos + 2] === 0x67 && buf[pos + 3] === 0x53)) {
        pos++; // lost sync: look for the next capture pattern
        this.skippedBytes++;
        continue;
      }
      const segments = buf[pos + 26];
      if (buf.length - pos < HEADER_BYTES + segments) break;
      const lacing = buf.subarray(pos + HEADER_BYTES, pos + HEADER_BYTES + segments);
      let bodyBytes = 0;
      for (const l of lacing) bodyBytes += l;
      const end = pos + HEADER_BYTES + segments + bodyBytes;
      if (end > buf.length) break;
      const page = buf.slice(pos, end);
      pos = end;
      const view = new DataView(page.buffer);
      const crc = view.getUint32(22, true);
      view.setUint32(22, 0, true);
      if (oggCrc32(page) !== crc) {
        this.crcErrors++;
        this.partial = [];
        continue;
      }
      this.pages++;
      const headerType = page[5];
      const granuleRaw = view.getBigInt64(6, true);
      const granule = granuleRaw < 0n ? null : Number(granuleRaw);
      if (headerType & HEADER_TYPE.first) {
        this.partial = []; // a new stream begins
        this.head = null;
      } else if (!(headerType & HEADER_TYPE.continued)) {
        this.partial = []; // a continuation we expected never came
      }
      let offset = HEADER_BYTES + segments;
      let pieceStart = offset;
      for (let i = 0; i < segments; i++) {
        offset += lacing[i];
        if (lacing[i] < 255) {
          this.partial.push(page.subarray(pieceStart, offset));
          const packet = concatBytes(this.partial);
          this.partial = [];
          pieceStart = offset;
          this.#emit(packet, i === segments - 1 ? granule : null, packets);
        }
      }
      if (pieceStart < offset) this.partial.push(page.subarray(pieceStart, offset));
    }
    this.buffer = buf.slice(pos);
    return packets;
  }

  #emit(packet, granule, packets) {
    if (!this.head) {
      const head = parseOpusHead(packet);
      if (head) {
        this.head = head;
        return;
      }
    }
    if (startsWith(packet, OPUS_TAGS)) return;
    if (!packet.length) return;
    packets.push({ packet, granule });
  }
}

export function concatBytes(parts) {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
