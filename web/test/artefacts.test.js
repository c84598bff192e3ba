// The library against real artefacts of a real cluster, written by the Rust integration test
// `it::browser::the_browser_library_reads_what_the_cluster_wrote` into $DANGAN_ARTEFACTS
// (run it with `cargo test --test it browser::`). It writes back the delegation and listing
// request it signed, which the Rust side then verifies.

import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  Identity,
  decodeReceipt,
  verifyReceipt,
  openSealedBytes,
  fromHex,
  toHex,
  parsePublicId,
  signReadDelegation,
  signListRequest,
  TamperError,
  UnwrapError,
  ProofError,
  FormatError,
} from "../lib/index.js";

const dir = process.env.DANGAN_ARTEFACTS;
if (!dir) {
  throw new Error("DANGAN_ARTEFACTS is not set: run these through `cargo test --test it browser::`");
}
const file = (name) => new Uint8Array(readFileSync(join(dir, name)));
const ctx = JSON.parse(readFileSync(join(dir, "context.json"), "utf8"));
const validators = ctx.validators.map((v) => parsePublicId(v));
const chain = fromHex(ctx.chain, 32);
const documentId = fromHex(ctx.document, 32);
const citizen = Identity.fromKeyFile(readFileSync(join(dir, "citizen.key"), "utf8"));
const stranger = Identity.fromKeyFile(readFileSync(join(dir, "stranger.key"), "utf8"));
const opts = (identity) => ({ identity, expected: documentId, validators, chain });

test("the key file loads: public id and grant address as the Rust side derives them", async () => {
  assert.equal(citizen.publicText(), ctx.citizen);
  assert.equal(await citizen.grantAddress(), ctx.grant_address);
});

test("the receipt verifies against the genesis validators and chain", () => {
  const s = verifyReceipt(decodeReceipt(file("receipt.bin")), validators, chain);
  assert.equal(s.document, ctx.document);
  assert.equal(s.department, ctx.department);
  assert.equal(s.documentType, ctx.document_type);
  assert.equal(s.size, ctx.size);
  assert.ok(s.signers.length * 2 > validators.length);
});

test("the receipt of an object stored with its name (S3's PutName) verifies too", () => {
  const s = verifyReceipt(decodeReceipt(file("receipt-named.bin")), validators, chain);
  assert.equal(s.document, ctx.named_document);
  assert.ok(s.signers.length * 2 > validators.length);
});

test("a receipt with any flipped byte is refused", () => {
  const bytes = file("receipt.bin");
  let refused = 0;
  for (let i = 0; i < bytes.length; i++) {
    const bad = Uint8Array.from(bytes);
    bad[i] ^= 0x01;
    assert.throws(
      () => verifyReceipt(decodeReceipt(bad), validators, chain),
      (e) => e instanceof ProofError || e instanceof FormatError,
      `flipped byte ${i} still verifies`,
    );
    refused++;
  }
  assert.equal(refused, bytes.length);
});

test("a receipt is refused on another chain or with other validators", () => {
  const r = decodeReceipt(file("receipt.bin"));
  const other = Uint8Array.from(chain);
  other[0] ^= 1;
  assert.throws(() => verifyReceipt(r, validators, other), { code: "other_chain" });
  const stranger32 = [stranger.public];
  assert.throws(() => verifyReceipt(r, stranger32, chain), { code: "not_validator" });
});

test("the sealed stream decrypts byte-identical", async () => {
  const { plain, summary } = await openSealedBytes(file("sealed.bin"), opts(citizen));
  assert.equal(summary.document, ctx.document);
  assert.deepEqual(plain, file("plain.bin"));
});

test("another citizen's key does not open the wrapped key", async () => {
  await assert.rejects(openSealedBytes(file("sealed.bin"), opts(stranger)), UnwrapError);
});

test("a flipped byte in any segment, or a cut stream, is refused", async () => {
  const sealed = file("sealed.bin");
  const receiptLen = new DataView(sealed.buffer).getUint32(8);
  const segStart = 12 + receiptLen + 32 + 48;
  const size = ctx.size;
  // One byte in each segment (every 64 KiB + 16 of sealed bytes), and the very last tag byte.
  const positions = [];
  for (let at = segStart + 7; at < sealed.length; at += 65536 + 16) positions.push(at);
  positions.push(sealed.length - 1);
  assert.ok(positions.length >= Math.ceil(size / 65536));
  for (const at of positions) {
    const bad = Uint8Array.from(sealed);
    bad[at] ^= 0x20;
    await assert.rejects(openSealedBytes(bad, opts(citizen)), TamperError, `byte ${at}`);
  }
  // Cut at a segment boundary: the last-segment flag catches it.
  const cut = sealed.subarray(0, segStart + 65536 + 16);
  await assert.rejects(openSealedBytes(cut, opts(citizen)), TamperError);
  // Bytes after the last segment are refused too.
  const longer = new Uint8Array(sealed.length + 1);
  longer.set(sealed);
  await assert.rejects(openSealedBytes(longer, opts(citizen)), FormatError);
  // A flipped byte in the wrapped key.
  const badKey = Uint8Array.from(sealed);
  badKey[12 + receiptLen + 40] ^= 1;
  await assert.rejects(openSealedBytes(badKey, opts(citizen)), UnwrapError);
});

test("a stream of another document than the one asked for is refused", async () => {
  const other = Uint8Array.from(documentId);
  other[5] ^= 1;
  await assert.rejects(
    openSealedBytes(file("sealed.bin"), { ...opts(citizen), expected: other }),
    FormatError,
  );
});

test("delegation and listing request are signed for the Rust side to check", () => {
  const gateway = parsePublicId(process.env.DANGAN_GATEWAY);
  const d = signReadDelegation(citizen, { chain, gateway, document: documentId });
  assert.equal(d.document, ctx.document);
  writeFileSync(join(dir, "delegation.json"), JSON.stringify(d));
  const l = signListRequest(citizen, { chain, gateway });
  assert.equal(l.document, undefined);
  writeFileSync(join(dir, "listing.json"), JSON.stringify(l));
  assert.equal(toHex(gateway).length, 64);
});
