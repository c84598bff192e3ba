// The manifest (`src/manifest.rs`): how a document is cut, sealed and coded, decoded from
// its canonical postcard bytes and validated as `Manifest::decode` does, with the segment
// geometry the browser needs to cut the sealed stream back into segments.

import { FormatError } from "./bytes.js";
import { Reader } from "./postcard.js";

export const MANIFEST_VERSION = 1;
/** A document of separately sealed pieces (an S3 multipart upload). */
export const MANIFEST_VERSION_PIECES = 2;
const MAX_PIECES = 10000;
export const TAG_LEN = 16;
const MIN_SEGMENT_SIZE = 1 << 10;
const MAX_SEGMENT_SIZE = 16 << 20;
const MAX_SHARD_LEN = 64 * 2 ** 20;
const MAX_LABEL_LEN = 256;
const MAX_TOTAL_SHARDS = 256;
const MAX_SEGMENTS = 2 ** 32 - 1;

export function decodeManifest(bytes) {
  const r = new Reader(bytes, "manifest");
  const version = r.u16();
  if (version !== MANIFEST_VERSION && version !== MANIFEST_VERSION_PIECES) {
    throw new FormatError(
      `manifest format version ${version} is not supported (this page reads ${MANIFEST_VERSION} and ${MANIFEST_VERSION_PIECES})`,
    );
  }
  const suite = r.variant(1);
  const noncePrefix = version === MANIFEST_VERSION ? r.fixed(7) : null;
  const m = {
    version,
    suite,
    params: { k: r.u16(), m: r.u16(), segmentSize: r.u32(), segmentsPerStripe: r.u32() },
    shardLen: r.u32(),
    size: r.u64(),
    department: r.string(),
    documentType: r.string(),
    createdAtMs: r.u64(),
    pieces: null,
    stripes: null,
  };
  // Version 1 is one STREAM; version 2 lists its pieces, each its own STREAM.
  m.pieces = noncePrefix ? [{ noncePrefix, size: m.size }] : r.seq(() => ({ noncePrefix: r.fixed(7), size: r.u64() }));
  m.stripes = r.seq(() => r.seq(() => r.fixed(32)));
  r.end();
  validate(m);
  return m;
}

function validate(m) {
  const p = m.params;
  const bad = (msg) => {
    throw new FormatError(`the manifest is invalid: ${msg}`);
  };
  if (p.k === 0) bad("k must be at least 1");
  if (p.k + p.m > MAX_TOTAL_SHARDS) bad("k + m is over the limit");
  if (p.segmentSize < MIN_SEGMENT_SIZE || p.segmentSize > MAX_SEGMENT_SIZE) bad("segment size out of range");
  if (p.segmentsPerStripe === 0) bad("segments per stripe must be at least 1");
  const fullShard = Math.ceil((p.segmentsPerStripe * (p.segmentSize + TAG_LEN)) / p.k);
  if (fullShard > MAX_SHARD_LEN) bad("shard length over the limit");
  if (m.shardLen !== fullShard) bad("recorded shard length does not match its geometry");
  if (m.pieces.length === 0 || m.pieces.length > MAX_PIECES) bad("wrong number of pieces");
  let total = 0;
  let stripes = 0;
  for (const piece of m.pieces) {
    const segments = Math.max(1, Math.ceil(piece.size / p.segmentSize));
    if (segments > MAX_SEGMENTS) bad("too many segments for the STREAM counter");
    total += piece.size;
    stripes += Math.ceil(segments / p.segmentsPerStripe);
  }
  if (total !== m.size) bad("the pieces' sizes do not add up to the size");
  if (m.stripes.length !== stripes) bad("wrong number of stripes for its size");
  if (m.stripes.some((ids) => ids.length !== p.k + p.m)) bad("a stripe lists the wrong number of shard ids");
  if (new TextEncoder().encode(m.department).length > MAX_LABEL_LEN) bad("department label too long");
  if (new TextEncoder().encode(m.documentType).length > MAX_LABEL_LEN) bad("document type too long");
}

/** Sealed segments of the document, over all its pieces (an empty piece has one, empty). */
export function segmentCount(m) {
  return m.pieces.reduce((n, p) => n + Math.max(1, Math.ceil(p.size / m.params.segmentSize)), 0);
}

/**
 * Every sealed segment of the document in stream order: its piece's nonce prefix, its
 * STREAM counter within the piece, whether it is its piece's last, its ciphertext length
 * (plaintext then the 16-byte tag).
 */
export function* segments(m) {
  const s = m.params.segmentSize;
  for (const piece of m.pieces) {
    const count = Math.max(1, Math.ceil(piece.size / s));
    for (let i = 0; i < count; i++) {
      yield { noncePrefix: piece.noncePrefix, index: i, last: i === count - 1, len: Math.min(s, piece.size - i * s) + TAG_LEN };
    }
  }
}
