// The manifest (`src/manifest.rs`): how a document is cut, sealed and coded, decoded from
// its canonical postcard bytes and validated as `Manifest::decode` does, with the segment
// geometry the browser needs to cut the sealed stream back into segments.

import { FormatError } from "./bytes.js";
import { Reader } from "./postcard.js";

export const MANIFEST_VERSION = 1;
export const TAG_LEN = 16;
const MIN_SEGMENT_SIZE = 1 << 10;
const MAX_SEGMENT_SIZE = 16 << 20;
const MAX_SHARD_LEN = 64 * 2 ** 20;
const MAX_LABEL_LEN = 256;
const MAX_TOTAL_SHARDS = 256;
const MAX_SEGMENTS = 2 ** 32 - 1;

export function decodeManifest(bytes) {
  const r = new Reader(bytes, "manifest");
  const m = {
    version: r.u16(),
    suite: r.variant(1),
    noncePrefix: r.fixed(7),
    params: { k: r.u16(), m: r.u16(), segmentSize: r.u32(), segmentsPerStripe: r.u32() },
    shardLen: r.u32(),
    size: r.u64(),
    department: r.string(),
    documentType: r.string(),
    createdAtMs: r.u64(),
    stripes: null,
  };
  if (m.version !== MANIFEST_VERSION) {
    throw new FormatError(`manifest format version ${m.version} is not supported (this page reads ${MANIFEST_VERSION})`);
  }
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
  const segments = segmentCount(m);
  if (segments > MAX_SEGMENTS) bad("too many segments for the STREAM counter");
  if (m.stripes.length !== Math.ceil(segments / p.segmentsPerStripe)) bad("wrong number of stripes for its size");
  if (m.stripes.some((ids) => ids.length !== p.k + p.m)) bad("a stripe lists the wrong number of shard ids");
  if (new TextEncoder().encode(m.department).length > MAX_LABEL_LEN) bad("department label too long");
  if (new TextEncoder().encode(m.documentType).length > MAX_LABEL_LEN) bad("document type too long");
}

/** Sealed segments of the document (an empty document has one, empty). */
export function segmentCount(m) {
  return Math.max(1, Math.ceil(m.size / m.params.segmentSize));
}

/** Ciphertext length (plaintext then the 16-byte tag) of sealed segment `i`. */
export function sealedSegmentLen(m, i) {
  const start = i * m.params.segmentSize;
  return Math.min(m.params.segmentSize, m.size - start) + TAG_LEN;
}
