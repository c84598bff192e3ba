// The chain's proof objects as the Rust side encodes them (`src/chain/tx.rs`, `block.rs`,
// `merkle.rs`, `validators.rs`), decoded from postcard with the raw bytes that are signed or
// hashed kept beside them, and checked exactly as the Rust side checks them: a transaction's
// signature over `TX_DOMAIN ‖ chain key ‖ Tx`, its inclusion in a block by a Merkle path to
// the header's transaction root, a header signed by a majority of the validators in force
// at its height, and validator set changes proven from a trusted set.
// Not for: applying transactions to a ledger state (only proofs are checked here).

import { concatBytes, equalBytes, toHex, u64be, utf8 } from "./bytes.js";
import { deriveKey, ed25519VerifyStrict, hash, keyedHash } from "./primitives.js";

export const TX_DOMAIN = utf8("dangan/tx/v2\0");
export const APPROVAL_DOMAIN = utf8("dangan/approval/v1\0");
export const HEADER_DOMAIN = utf8("dangan/header/v1\0");
const MERKLE_KEY = deriveKey("dangan chain merkle v1", new Uint8Array(0));
const MAX_LEAVES = 2 ** 40;

export class ProofError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "ProofError";
    this.code = code;
  }
}

// ---------- decoding ----------

function wrappedKey(r) {
  return { recipient: r.fixed(32), enc: r.fixed(32), sealed: r.byteVec() };
}

function approvals(r, body) {
  body.approvalsAt = r.pos;
  body.approvals = r.seq(() => ({ validator: r.fixed(32), signature: r.fixed(64) }));
}

const BODIES = [
  ["RegisterDocument", (r, b) => (b.document = r.fixed(32))],
  [
    "Supersede",
    (r, b) => {
      b.old = r.fixed(32);
      b.new = r.fixed(32);
      b.versionKind = ["reissue", "rekey"][r.variant(2)];
      b.grants = r.seq(() => ({
        grantee: r.fixed(32),
        wrapped: wrappedKey(r),
        expiresMs: r.option(() => r.u64()),
      }));
    },
  ],
  [
    "AddNode",
    (r, b) => {
      b.node = r.fixed(32);
      b.addr = r.string();
      b.zone = r.string();
      b.weight = r.u32();
    },
  ],
  ["DrainNode", (r, b) => (b.node = r.fixed(32))],
  ["RemoveNode", (r, b) => (b.node = r.fixed(32))],
  ["SetLayout", (r, b) => (b.weights = r.seq(() => [r.fixed(32), r.u32()]))],
  [
    "AddValidator",
    (r, b) => {
      b.validator = r.fixed(32);
      b.host = r.option(() => [r.fixed(32), r.string()]);
      approvals(r, b);
    },
  ],
  [
    "RemoveValidator",
    (r, b) => {
      b.validator = r.fixed(32);
      approvals(r, b);
    },
  ],
  [
    "Grant",
    (r, b) => {
      b.document = r.fixed(32);
      b.grantee = r.fixed(32);
      b.wrapped = wrappedKey(r);
      b.expiresMs = r.option(() => r.u64());
    },
  ],
  [
    "Revoke",
    (r, b) => {
      b.document = r.fixed(32);
      b.grantee = r.fixed(32);
    },
  ],
  [
    "AuditRoot",
    (r, b) => {
      b.peer = r.fixed(32);
      b.first = r.u64();
      b.count = r.u64();
      b.root = r.fixed(32);
    },
  ],
  [
    "SetValidatorHost",
    (r, b) => {
      b.validator = r.fixed(32);
      b.host = r.fixed(32);
      b.addr = r.string();
      approvals(r, b);
    },
  ],
  ["CreateBucket", (r, b) => (b.bucket = r.string())],
  ["DeleteBucket", (r, b) => (b.bucket = r.string())],
  [
    "PutName",
    (r, b) => {
      b.bucket = r.string();
      b.key = r.string();
      b.document = r.fixed(32);
      b.size = r.u64();
      b.meta = r.byteVec();
    },
  ],
  [
    "DeleteName",
    (r, b) => {
      b.bucket = r.string();
      b.key = r.string();
    },
  ],
];

/** `SignedTx`: { sender, nonce, body, signature, bytes (the SignedTx), txBytes (the Tx) }. */
export function readSignedTx(r) {
  const start = r.pos;
  const sender = r.fixed(32);
  const nonce = r.u64();
  const [kind, read] = BODIES[r.variant(BODIES.length)];
  const body = { kind };
  read(r, body);
  const txBytes = r.span(start);
  if (body.approvalsAt !== undefined) body.approvalsAt -= start;
  const signature = r.fixed(64);
  return { sender, nonce, body, signature, txBytes, bytes: r.span(start) };
}

export function readHeader(r) {
  const start = r.pos;
  const header = {
    height: r.u64(),
    prev: r.fixed(32),
    txRoot: r.fixed(32),
    stateRoot: r.fixed(32),
    timeMs: r.u64(),
    proposer: r.fixed(32),
    chain: r.fixed(32),
  };
  header.bytes = r.span(start);
  header.hash = hash(header.bytes);
  const signatures = r.seq(() => ({ signer: r.fixed(32), signature: r.fixed(64) }));
  return { header, signatures };
}

export function readProof(r) {
  return { index: r.u64(), leafCount: r.u64(), path: r.seq(() => r.fixed(32)) };
}

/** `TxInclusion`: { tx, proof, header: { header, signatures } }. */
export function readInclusion(r) {
  return { tx: readSignedTx(r), proof: readProof(r), header: readHeader(r) };
}

// ---------- checks ----------

export function leafHash(bytes) {
  return keyedHash(MERKLE_KEY, concatBytes(Uint8Array.of(0), bytes));
}

function nodeHash(l, r) {
  return keyedHash(MERKLE_KEY, concatBytes(Uint8Array.of(1), l, r));
}

function finishRoot(count, top) {
  const le = u64be(count).reverse();
  return keyedHash(MERKLE_KEY, concatBytes(Uint8Array.of(2), le, top));
}

function siblingSides(index, count) {
  const sides = [];
  let pos = index;
  let width = count;
  while (width > 1) {
    if (pos % 2 === 1) sides.push("left");
    else if (pos + 1 < width) sides.push("right");
    pos = Math.floor(pos / 2);
    width = Math.ceil(width / 2);
  }
  return sides;
}

/** `Proof::root_from` then a comparison with `root`. */
export function verifyMerkle(proof, leaf, root) {
  const { index, leafCount: count } = proof;
  if (count === 0) throw new ProofError("merkle", "a proof claims an empty tree");
  if (count > MAX_LEAVES) throw new ProofError("merkle", "a proof claims a tree over the limit");
  if (index >= count) throw new ProofError("merkle", `leaf index ${index} out of range`);
  const sides = siblingSides(index, count);
  if (proof.path.length !== sides.length) {
    throw new ProofError("merkle", `proof path has ${proof.path.length} hashes, expected ${sides.length}`);
  }
  let acc = leaf;
  sides.forEach((side, i) => {
    acc = side === "left" ? nodeHash(proof.path[i], acc) : nodeHash(acc, proof.path[i]);
  });
  if (!equalBytes(finishRoot(count, acc), root)) {
    throw new ProofError("merkle", "the inclusion proof does not lead to the block's transaction root");
  }
}

function includes(set, key) {
  return set.some((k) => equalBytes(k, key));
}

/** `SignedHeader::verify_final`: every signer a validator, every signature good, a majority. */
export function verifyFinal(signed, validators) {
  const { header, signatures } = signed;
  const msg = concatBytes(HEADER_DOMAIN, header.hash);
  const seen = [];
  for (const { signer, signature } of signatures) {
    if (!includes(validators, signer)) {
      throw new ProofError("not_validator", `block ${header.height}: dgn1${toHex(signer)} is not a validator`);
    }
    if (!ed25519VerifyStrict(signer, msg, signature)) {
      throw new ProofError("bad_signature", `block ${header.height}: the signature of dgn1${toHex(signer)} does not verify`);
    }
    if (!includes(seen, signer)) seen.push(signer);
  }
  if (seen.length * 2 <= validators.length) {
    throw new ProofError(
      "not_final",
      `block ${header.height}: signed by ${seen.length} of ${validators.length} validators, a majority is needed`,
    );
  }
  return seen;
}

/** `TxInclusion::verify`: the transaction's signature, its Merkle path, the header's majority. */
export function verifyInclusion(inc, validators) {
  const chain = inc.header.header.chain;
  const msg = concatBytes(TX_DOMAIN, chain, inc.tx.txBytes);
  if (!ed25519VerifyStrict(inc.tx.sender, msg, inc.tx.signature)) {
    throw new ProofError("bad_tx_signature", "the transaction's signature does not verify on this chain");
  }
  verifyMerkle(inc.proof, leafHash(inc.tx.bytes), inc.header.header.txRoot);
  return verifyFinal(inc.header, validators);
}

function compareBytes(a, b) {
  for (let i = 0; i < Math.min(a.length, b.length); i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function sortedUnique(keys) {
  const out = [];
  for (const k of [...keys].sort(compareBytes)) if (!includes(out, k)) out.push(k);
  return out;
}

/** `Tx::check_majority` for a validator set change. */
function checkMajority(tx, chain, set) {
  const approvals = tx.body.approvals;
  const needed = Math.floor(set.length / 2) + 1;
  if (approvals.length > set.length) throw new ProofError("approvals", "more approvals than validators");
  // The Tx with its approvals cleared: they are the last field, so the bytes before them and
  // an empty sequence.
  const bare = concatBytes(tx.txBytes.subarray(0, tx.body.approvalsAt), Uint8Array.of(0));
  const msg = concatBytes(APPROVAL_DOMAIN, chain, bare);
  const seen = [];
  for (const a of approvals) {
    if (!includes(set, a.validator) || includes(seen, a.validator)) {
      throw new ProofError("approvals", "an approval is not of a validator, or given twice");
    }
    if (!ed25519VerifyStrict(a.validator, msg, a.signature)) {
      throw new ProofError("approvals", "an approval's signature does not verify");
    }
    seen.push(a.validator);
  }
  if (seen.length < needed) throw new ProofError("approvals", "a validator set change lacks a majority's approval");
}

/**
 * `ValidatorHistory::prove`: the validator set at every height, from the trusted set and the
 * chain's set changes. Returns `at(height)`.
 */
export function proveHistory(trusted, changes) {
  const sets = [[0, sortedUnique(trusted)]];
  const at = (height) => {
    let i = 0;
    while (i < sets.length && sets[i][0] <= height) i++;
    return sets[Math.max(i, 1) - 1][1];
  };
  let last = null;
  const chain = changes.length ? changes[0].header.header.chain : null;
  for (const change of changes) {
    const height = change.header.header.height;
    if (!equalBytes(change.header.header.chain, chain)) {
      throw new ProofError("other_chain", `the validator set change at block ${height} belongs to another chain`);
    }
    const index = change.proof.index;
    if (height === 0 || (last && (height < last[0] || (height === last[0] && index <= last[1])))) {
      throw new ProofError("order", `validator set changes out of chain order at block ${height}`);
    }
    const signers = at(height);
    verifyInclusion(change, signers);
    if (sets[sets.length - 1][0] !== height + 1) sets.push([height + 1, [...signers]]);
    const set = sets[sets.length - 1][1];
    const body = change.tx.body;
    if (body.kind !== "AddValidator" && body.kind !== "RemoveValidator") {
      throw new ProofError("not_a_set_change", `transaction ${index} of block ${height} does not change the validator set`);
    }
    checkMajority(change.tx, chain, set);
    const i = set.findIndex((k) => equalBytes(k, body.validator));
    if (body.kind === "AddValidator") {
      if (i >= 0) throw new ProofError("already_validator", `block ${height} adds a validator twice`);
      set.push(body.validator);
      set.sort(compareBytes);
    } else {
      if (i < 0) throw new ProofError("not_validator", `block ${height} removes a key that is not a validator`);
      set.splice(i, 1);
      if (set.length === 0) throw new ProofError("empty", `block ${height} leaves no validator`);
    }
    last = [height, index];
  }
  return at;
}
