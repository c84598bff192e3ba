// A reader for postcard (the serde format the Rust side writes): LEB128 varints for integers
// wider than a byte, zigzag for signed ones, a varint length before byte strings, strings and
// sequences, a varint variant index before enum fields, one tag byte for Option, raw bytes
// for fixed arrays. Strict: non-minimal varints, values out of range, bad tags and invalid
// UTF-8 are refused, so what it accepts is what the Rust side would accept and re-encode to
// the same bytes. `span(start)` hands back the raw bytes of what was read since `start`, for
// values that are signed or hashed as encoded.

import { FormatError } from "./bytes.js";

const utf8Decoder = new TextDecoder("utf-8", { fatal: true });

export class Reader {
  constructor(bytes, what = "data") {
    this.bytes = bytes;
    this.pos = 0;
    this.what = what;
  }

  fail(message) {
    throw new FormatError(`${this.what} does not decode at byte ${this.pos}: ${message}`);
  }

  remaining() {
    return this.bytes.length - this.pos;
  }

  u8() {
    if (this.pos >= this.bytes.length) this.fail("unexpected end");
    return this.bytes[this.pos++];
  }

  /** Unsigned varint of at most `bits` bits, as a BigInt. */
  varintBig(bits) {
    const maxBytes = Math.ceil(bits / 7);
    let value = 0n;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.u8();
      value |= BigInt(b & 0x7f) << BigInt(7 * i);
      if ((b & 0x80) === 0) {
        if (i > 0 && b === 0) this.fail("non-minimal varint");
        if (value >> BigInt(bits) !== 0n) this.fail(`varint over ${bits} bits`);
        return value;
      }
    }
    this.fail("varint too long");
  }

  /** Unsigned varint as a Number; refuses values above 2^53 - 1. */
  varint(bits = 64) {
    const v = this.varintBig(bits);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail("integer too large for this reader");
    return Number(v);
  }

  u16() {
    return this.varint(16);
  }

  u32() {
    return this.varint(32);
  }

  u64() {
    return this.varint(64);
  }

  bool() {
    const b = this.u8();
    if (b > 1) this.fail("bad bool");
    return b === 1;
  }

  /** `n` raw bytes (a fixed-size array), as a view into the input. */
  fixed(n) {
    if (this.remaining() < n) this.fail(`expected ${n} bytes, ${this.remaining()} left`);
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }

  /** A length-prefixed byte string (`Vec<u8>`). */
  byteVec() {
    const n = this.varint(64);
    return this.fixed(n);
  }

  string() {
    const raw = this.byteVec();
    try {
      return utf8Decoder.decode(raw);
    } catch {
      this.fail("invalid UTF-8 in a string");
    }
  }

  option(read) {
    const tag = this.u8();
    if (tag === 0) return null;
    if (tag === 1) return read();
    return this.fail("bad Option tag");
  }

  /** A sequence: varint count, then `read()` for each item. */
  seq(read) {
    const n = this.varint(64);
    // Every item takes at least one byte: a hostile count cannot make a huge array.
    if (n > this.remaining()) this.fail("sequence longer than the input");
    const out = [];
    for (let i = 0; i < n; i++) out.push(read());
    return out;
  }

  variant(count) {
    const v = this.u32();
    if (v >= count) this.fail(`unknown enum variant ${v}`);
    return v;
  }

  span(start) {
    return this.bytes.subarray(start, this.pos);
  }

  end() {
    if (this.pos !== this.bytes.length) this.fail(`${this.remaining()} trailing bytes`);
  }
}
