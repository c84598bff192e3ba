// Receipts (`src/receipt.rs`): decode a receipt file and verify it with no network, exactly as
// `Receipt::verify_on`: the manifest hashes to the document id (BLAKE3), the transaction that
// registered the id is in its block (Merkle path), a majority of the validators in force at
// that height signed the block (strict Ed25519), those validators proven from the trusted
// (genesis) set through the set changes the receipt carries, all on one chain.

import { FormatError, equalBytes, toHex, utf8 } from "./bytes.js";
import { ProofError, proveHistory, readInclusion, verifyInclusion } from "./chain.js";
import { decodeManifest } from "./manifest.js";
import { Reader } from "./postcard.js";
import { hash } from "./primitives.js";

export const MAGIC = utf8("DGNRCPT1");
export const MAGIC_WITH_CHANGES = utf8("DGNRCPT2");
export const MAX_RECEIPT_BYTES = (64 << 20) + (1 << 20);

export function decodeReceipt(bytes) {
  if (bytes.length > MAX_RECEIPT_BYTES) throw new FormatError(`receipt is ${bytes.length} bytes, over the limit`);
  const magic = bytes.subarray(0, 8);
  const withChanges = equalBytes(magic, MAGIC_WITH_CHANGES);
  if (!withChanges && !equalBytes(magic, MAGIC)) throw new FormatError("not a Dangan receipt (bad magic)");
  const r = new Reader(bytes.subarray(8), "receipt");
  const document = r.fixed(32);
  const manifest = r.byteVec();
  const registration = readInclusion(r);
  const validatorChanges = withChanges ? r.seq(() => readInclusion(r)) : [];
  r.end();
  if (withChanges && validatorChanges.length === 0) throw new FormatError("receipt bytes are not in canonical form");
  return { document, manifest, registration, validatorChanges, bytes };
}

/**
 * Verifies a decoded receipt against the trusted validators (32-byte keys) and, when given,
 * the chain key. Returns what a reader wants to see; throws ProofError or FormatError.
 */
export function verifyReceipt(receipt, validators, chain) {
  const reg = receipt.registration;
  const found = reg.header.header.chain;
  if (chain && !equalBytes(found, chain)) {
    throw new ProofError("other_chain", `the receipt is of chain ${toHex(found)}, not of chain ${toHex(chain)}`);
  }
  if (!equalBytes(hash(receipt.manifest), receipt.document)) {
    throw new ProofError("manifest_mismatch", `the manifest's hash is not the document id ${toHex(receipt.document)}`);
  }
  const manifest = decodeManifest(receipt.manifest);
  if (receipt.validatorChanges.some((c) => !equalBytes(c.header.header.chain, found))) {
    throw new ProofError("other_chain", "the validator set changes are of another chain");
  }
  const at = proveHistory(validators, receipt.validatorChanges);
  const body = reg.tx.body;
  const registers =
    (body.kind === "RegisterDocument" && equalBytes(body.document, receipt.document)) ||
    (body.kind === "PutName" && equalBytes(body.document, receipt.document)) ||
    (body.kind === "Supersede" && equalBytes(body.new, receipt.document));
  if (!registers) {
    throw new ProofError("not_registration", `the proven transaction does not register document ${toHex(receipt.document)}`);
  }
  const height = reg.header.header.height;
  const signers = verifyInclusion(reg, at(height));
  return {
    document: toHex(receipt.document),
    manifest,
    department: manifest.department,
    documentType: manifest.documentType,
    createdAtMs: manifest.createdAtMs,
    size: manifest.size,
    height,
    blockTimeMs: reg.header.header.timeMs,
    chain: toHex(found),
    issuer: "dgn1" + toHex(reg.tx.sender),
    kind: body.kind === "Supersede" ? body.versionKind : "register",
    signers: signers.map((k) => "dgn1" + toHex(k)),
    validators: at(height).map((k) => "dgn1" + toHex(k)),
    validatorChanges: receipt.validatorChanges.length,
  };
}
