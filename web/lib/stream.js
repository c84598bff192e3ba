// Document decryption in the browser: STREAM segments as `aead-stream` 0.6's
// `StreamBE32<ChaCha20Poly1305>` seals them (`src/crypto.rs`: nonce = 7-byte prefix ‖ u32
// big-endian segment counter ‖ last-segment flag byte, no aad), and the sealed response of
// `POST /portal/v1/documents/{id}/sealed`: `DGNSEAL1` ‖ u32 BE receipt length ‖ receipt ‖
// wrapped key `enc` (32) ‖ `sealed` (48) ‖ every sealed segment in order. A truncated,
// reordered or altered stream fails a tag check: the last segment's flag makes truncation
// visible even at a segment boundary.

import { FormatError, concatBytes, equalBytes, toHex, utf8 } from "./bytes.js";
import { decodeReceipt, verifyReceipt } from "./receipt.js";
import { segments } from "./manifest.js";
import { chacha20poly1305 } from "./primitives.js";

export const SEALED_MAGIC = utf8("DGNSEAL1");
const MAX_RECEIPT_BYTES = (64 << 20) + (1 << 20);

export class TamperError extends Error {
  constructor(segment) {
    super(`segment ${segment} failed authentication (wrong key, or the ciphertext was altered or cut short)`);
    this.name = "TamperError";
    this.code = "tampered";
    this.segment = segment;
  }
}

export function segmentNonce(prefix, index, last) {
  const nonce = new Uint8Array(12);
  nonce.set(prefix, 0);
  new DataView(nonce.buffer).setUint32(7, index);
  nonce[11] = last ? 1 : 0;
  return nonce;
}

/** Opens sealed segment `index` (ciphertext ‖ tag); throws TamperError. */
export function openSegment(key, prefix, index, last, sealed) {
  try {
    return chacha20poly1305(key, segmentNonce(prefix, index, last)).decrypt(sealed);
  } catch {
    throw new TamperError(index);
  }
}

/** Seals one segment (for tests and tools; the browser only opens). */
export function sealSegment(key, prefix, index, last, plain) {
  return chacha20poly1305(key, segmentNonce(prefix, index, last)).encrypt(plain);
}

/** Reads exact byte counts from a ReadableStream's reader, across chunk boundaries. */
export class ExactReader {
  constructor(reader) {
    this.reader = reader;
    this.chunks = [];
    this.buffered = 0;
    this.received = 0;
  }

  async fill(n) {
    while (this.buffered < n) {
      const { value, done } = await this.reader.read();
      if (done) return false;
      this.chunks.push(value);
      this.buffered += value.length;
      this.received += value.length;
    }
    return true;
  }

  /** Exactly `n` bytes, or null at a clean end of stream; throws when cut inside. */
  async read(n, what) {
    if (!(await this.fill(n))) {
      if (this.buffered === 0) return null;
      throw new FormatError(`the response ended inside ${what}`);
    }
    const out = new Uint8Array(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0];
      const take = Math.min(c.length, n - at);
      out.set(c.subarray(0, take), at);
      at += take;
      if (take === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(take);
    }
    this.buffered -= n;
    return out;
  }

  async atEnd() {
    return !(await this.fill(1));
  }
}

async function need(r, n, what) {
  const b = await r.read(n, what);
  if (b === null) throw new FormatError(`the response ended before ${what}`);
  return b;
}

/**
 * Opens a sealed document stream: checks the receipt against the trusted validators and
 * chain, unwraps the data key with `identity`, then decrypts segment by segment, handing each
 * plaintext segment to `sink(bytes)` (awaited, so a slow writer slows the download rather
 * than filling memory). `expected` is the document id (32 bytes) that was asked for.
 * Returns the verified receipt summary. Throws FormatError, ProofError, UnwrapError or
 * TamperError; the sink may have received a prefix of the document by then.
 */
export async function openSealedStream(readable, { identity, expected, validators, chain, sink, progress }) {
  const r = new ExactReader(readable.getReader());
  const magic = await need(r, 8, "the header");
  if (!equalBytes(magic, SEALED_MAGIC)) throw new FormatError("the response is not a sealed document (bad magic)");
  const lenBytes = await need(r, 4, "the receipt length");
  const len = new DataView(lenBytes.buffer).getUint32(0);
  if (len > MAX_RECEIPT_BYTES) throw new FormatError("the receipt is over the size limit");
  const receipt = decodeReceipt(await need(r, len, "the receipt"));
  if (expected && !equalBytes(receipt.document, expected)) {
    throw new FormatError(`the gateway sent document ${toHex(receipt.document)}, not the one asked for`);
  }
  const summary = verifyReceipt(receipt, validators, chain);
  const m = summary.manifest;
  const enc = await need(r, 32, "the wrapped key");
  const sealed = await need(r, 48, "the wrapped key");
  const key = await identity.unwrap(receipt.document, enc, sealed);
  try {
    let written = 0;
    let n = 0;
    // Piece after piece, each its own STREAM (one piece unless an S3 multipart upload).
    for (const s of segments(m)) {
      const seg = await r.read(s.len, `segment ${n}`);
      if (seg === null) throw new TamperError(n);
      n++;
      const plain = openSegment(key, s.noncePrefix, s.index, s.last, seg);
      await sink(plain);
      written += plain.length;
      if (progress) progress(written, m.size);
    }
    if (!(await r.atEnd())) throw new FormatError("the response has bytes after the last segment");
  } finally {
    key.fill(0);
  }
  return summary;
}

/** Splits a whole sealed body in memory (tests, small documents). */
export async function openSealedBytes(bytes, opts) {
  const parts = [];
  const readable = new ReadableStream({
    start(c) {
      // Odd-sized chunks, so chunk boundaries fall inside every field.
      for (let i = 0; i < bytes.length; i += 4093) c.enqueue(bytes.subarray(i, i + 4093));
      c.close();
    },
  });
  const summary = await openSealedStream(readable, { ...opts, sink: (p) => parts.push(p) });
  return { summary, plain: concatBytes(...parts) };
}
