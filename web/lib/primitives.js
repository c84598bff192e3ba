// The primitives the library uses, from the audited @noble packages, wrapped so the rest of
// the library says what the Rust side says: BLAKE3 (plain, keyed, derive_key), Ed25519 with
// ed25519-dalek's `verify_strict` rules, ChaCha20-Poly1305.

import { blake3 } from "@noble/hashes/blake3.js";
import { ed25519 } from "@noble/curves/ed25519.js";
import { chacha20poly1305 } from "@noble/ciphers/chacha.js";
import { utf8 } from "./bytes.js";

export { chacha20poly1305 };

export function hash(bytes) {
  return blake3(bytes);
}

export function keyedHash(key, bytes) {
  return blake3(bytes, { key });
}

/** BLAKE3 `derive_key(context, material)`. */
export function deriveKey(context, material) {
  return blake3(material, { context: utf8(context) });
}

/** A BLAKE3 hasher for input given in pieces. */
export function hasher(key) {
  return key ? blake3.create({ key }) : blake3.create({});
}

export function ed25519PublicKey(seed) {
  return ed25519.getPublicKey(seed);
}

export function ed25519Sign(seed, message) {
  return ed25519.sign(message, seed);
}

function weak(encoded) {
  try {
    return ed25519.Point.fromBytes(encoded, false).isSmallOrder();
  } catch {
    return true;
  }
}

/**
 * Strict Ed25519 verification, as ed25519-dalek's `verify_strict`: canonical encodings only
 * (no ZIP-215 leniency), and neither the key nor the signature's R may be of small order.
 */
export function ed25519VerifyStrict(publicKey, message, signature) {
  if (publicKey.length !== 32 || signature.length !== 64) return false;
  if (weak(publicKey) || weak(signature.subarray(0, 32))) return false;
  try {
    return ed25519.verify(signature, message, publicKey, { zip215: false });
  } catch {
    return false;
  }
}
