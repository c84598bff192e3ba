// Self-contained checks of the library's pieces (no cluster needed).

import { test } from "node:test";
import assert from "node:assert/strict";
import {
  Reader,
  Identity,
  KeyFileError,
  fromBase64Url,
  toBase64Url,
  fromHex,
  openSegment,
  sealSegment,
  TamperError,
} from "../lib/index.js";
import { segmentNonce } from "../lib/stream.js";

test("postcard varints are read strictly", () => {
  assert.equal(new Reader(Uint8Array.of(0x7f)).u64(), 127);
  assert.equal(new Reader(Uint8Array.of(0x80, 0x01)).u64(), 128);
  assert.throws(() => new Reader(Uint8Array.of(0x80, 0x00)).u64(), /non-minimal/);
  assert.throws(() => new Reader(Uint8Array.of(0xff, 0xff, 0x7f)).u16(), /over 16 bits/);
  assert.throws(() => new Reader(Uint8Array.of(2)).bool(), /bad bool/);
  assert.throws(() => new Reader(Uint8Array.of(5, 1)).byteVec(), /expected 5 bytes/);
  assert.throws(() => new Reader(Uint8Array.of(2, 0xc3, 0x28)).string(), /UTF-8/);
});

test("STREAM nonces are prefix, big-endian counter, last flag", () => {
  const n = segmentNonce(Uint8Array.of(1, 2, 3, 4, 5, 6, 7), 0x01020304, true);
  assert.deepEqual([...n], [1, 2, 3, 4, 5, 6, 7, 1, 2, 3, 4, 1]);
});

test("a segment opens only at its position and with its flag", () => {
  const key = new Uint8Array(32).fill(9);
  const prefix = new Uint8Array(7).fill(4);
  const sealed = sealSegment(key, prefix, 5, false, new TextEncoder().encode("abc"));
  assert.deepEqual(new TextDecoder().decode(openSegment(key, prefix, 5, false, sealed)), "abc");
  assert.throws(() => openSegment(key, prefix, 6, false, sealed), TamperError);
  assert.throws(() => openSegment(key, prefix, 5, true, sealed), TamperError);
});

test("key files: the Rust layout loads, anything else is refused with a reason", () => {
  const secret = "11".repeat(32);
  const text = `# Dangan identity key.\nversion = 1\nrole = "citizen"\nsecret = "${secret}"\n`;
  const id = Identity.fromKeyFile(text);
  assert.ok(id.publicText().startsWith("dgn1"));
  const withPublic = text + `public = "${id.publicText()}"\n`;
  assert.equal(Identity.fromKeyFile(withPublic).publicText(), id.publicText());
  assert.throws(() => Identity.fromKeyFile(text.replace("version = 1", "version = 2")), /version 2/);
  assert.throws(() => Identity.fromKeyFile(text + `public = "dgn1${"00".repeat(32)}"\n`), /does not match/);
  assert.throws(() => Identity.fromKeyFile(text + "extra = 1\n"), /unknown field/);
  assert.throws(() => Identity.fromKeyFile("hello"), KeyFileError);
});

test("base64url round-trips", () => {
  const b = fromHex("00ff10fe7f", 5);
  assert.deepEqual(fromBase64Url(toBase64Url(b)), b);
});

test("manifests of both versions decode: version 2 lists its pieces, each its own STREAM", async () => {
  const { readFileSync } = await import("node:fs");
  const { decodeManifest, segments, segmentCount } = await import("../lib/index.js");
  const seed = (name) => new Uint8Array(readFileSync(new URL(`../../fuzz/seeds/manifest/${name}`, import.meta.url)));
  const one = decodeManifest(seed("small"));
  assert.equal(one.version, 1);
  assert.deepEqual(one.pieces.map((p) => p.size), [3000]);
  assert.equal(segmentCount(one), 3);
  // `it::fuzz_seeds` writes it: pieces of 3000, 0 and 700 bytes, 1 KiB segments.
  const m = decodeManifest(seed("pieces"));
  assert.equal(m.version, 2);
  assert.deepEqual(m.pieces.map((p) => p.size), [3000, 0, 700]);
  assert.deepEqual(m.pieces.map((p) => p.noncePrefix[0]), [0, 1, 2]);
  const segs = [...segments(m)].map((s) => [s.noncePrefix[0], s.index, s.last, s.len]);
  assert.deepEqual(segs, [
    [0, 0, false, 1040],
    [0, 1, false, 1040],
    [0, 2, true, 968],
    [1, 0, true, 16],
    [2, 0, true, 716],
  ]);
  // Cut short anywhere: refused.
  const bytes = seed("pieces");
  for (let n = 0; n < bytes.length; n++) assert.throws(() => decodeManifest(bytes.subarray(0, n)));
});
