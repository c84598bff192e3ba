// Byte helpers shared by the library: hex, base64url, UTF-8, concatenation, comparison.
// Not for: anything secret-dependent that must run in constant time (see `equalBytes`).

const HEX = "0123456789abcdef";

export class FormatError extends Error {
  constructor(message) {
    super(message);
    this.name = "FormatError";
  }
}

export function toHex(bytes) {
  let out = "";
  for (const b of bytes) out += HEX[b >> 4] + HEX[b & 15];
  return out;
}

/** Parses hex digits (either case); `len`, when given, is the byte length required. */
export function fromHex(text, len, what = "value") {
  const t = String(text).trim();
  if (t.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(t)) {
    throw new FormatError(`${what} is not hex digits`);
  }
  if (len !== undefined && t.length !== len * 2) {
    throw new FormatError(`${what} is ${len * 2} hex digits, got ${t.length}`);
  }
  const out = new Uint8Array(t.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(t.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function concatBytes(...parts) {
  const len = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(len);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Compares without an early exit (for tags and hashes). */
export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let diff = 0;
  for (let i = 0; i < a.length; i++) diff |= a[i] ^ b[i];
  return diff === 0;
}

export function utf8(text) {
  return new TextEncoder().encode(text);
}

/** u64 as 8 big-endian bytes (`value` a Number or BigInt). */
export function u64be(value) {
  const out = new Uint8Array(8);
  new DataView(out.buffer).setBigUint64(0, BigInt(value));
  return out;
}

export function toBase64Url(bytes) {
  let bin = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return btoa(bin).replaceAll("+", "-").replaceAll("/", "_").replace(/=+$/, "");
}

export function fromBase64Url(text) {
  const t = String(text).trim().replaceAll("-", "+").replaceAll("_", "/");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(t)) throw new FormatError("not base64url text");
  const bin = atob(t + "=".repeat((4 - (t.length % 4)) % 4));
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
