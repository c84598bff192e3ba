// A citizen's key file (`src/identity.rs`) read in the browser, and what the key does there:
// its public id, its X25519 key for grants (`src/grant.rs`: BLAKE3 derive_key of the Ed25519
// seed, then RFC 9180 DeriveKeyPair), its grant address (`dga1…`), and opening a wrapped key
// (HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305,
// `info = GRANT_DOMAIN ‖ document id ‖ grantee id`, empty aad).
// The secret stays in this object, in the page's memory: nothing here sends it anywhere.

import { CipherSuite } from "@hpke/core";
import { Chacha20Poly1305 } from "@hpke/chacha20poly1305";
import { DhkemX25519HkdfSha256, HkdfSha256 } from "@hpke/dhkem-x25519";
import { FormatError, concatBytes, fromHex, toHex, utf8 } from "./bytes.js";
import { deriveKey, ed25519PublicKey, ed25519Sign } from "./primitives.js";

export const X25519_CONTEXT = "dangan 2026-11 identity x25519 key v1";
export const GRANT_DOMAIN = utf8("dangan/grant/v1\0");
export const ADDRESS_DOMAIN = utf8("dangan/grant-address/v1\0");
export const KEY_FILE_VERSION = 1;
const ROLES = ["department", "citizen", "operator", "node", "validator"];
const MAX_KEY_FILE_LEN = 64 * 1024;

export class KeyFileError extends Error {
  constructor(message) {
    super(message);
    this.name = "KeyFileError";
  }
}

/** Reads the TOML subset a key file is written in: `name = "text"` or `name = 123` lines. */
function parseKeyFileText(text) {
  const table = {};
  for (const [n, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const m = /^([A-Za-z_][A-Za-z0-9_-]*)\s*=\s*(?:"([^"\\]*)"|'([^']*)'|([+-]?[0-9]+))\s*(?:#.*)?$/.exec(line);
    if (!m) throw new KeyFileError(`line ${n + 1} is not a key file line`);
    if (m[1] in table) throw new KeyFileError(`\`${m[1]}\` is given twice`);
    table[m[1]] = m[4] !== undefined ? Number(m[4]) : (m[2] ?? m[3]);
  }
  return table;
}

/** Public id text: `dgn1` + 64 hex digits (plain 64 hex digits accepted too). */
export function parsePublicId(text, what = "public id") {
  const t = String(text).trim();
  return fromHex(t.startsWith("dgn1") ? t.slice(4) : t, 32, what);
}

export function publicIdText(bytes) {
  return "dgn1" + toHex(bytes);
}

function suite() {
  return new CipherSuite({
    kem: new DhkemX25519HkdfSha256(),
    kdf: new HkdfSha256(),
    aead: new Chacha20Poly1305(),
  });
}

export class Identity {
  /** From the key file's text; throws KeyFileError with a sentence a citizen can act on. */
  static fromKeyFile(text) {
    if (typeof text !== "string" || text.length > MAX_KEY_FILE_LEN) {
      throw new KeyFileError("this is not a Dangan key file (too large)");
    }
    const t = parseKeyFileText(text);
    for (const k of Object.keys(t)) {
      if (!["version", "role", "public", "secret"].includes(k)) throw new KeyFileError(`unknown field \`${k}\``);
    }
    if (t.version === undefined) throw new KeyFileError("missing `version`");
    if (t.version !== KEY_FILE_VERSION) {
      throw new KeyFileError(`key file format version ${t.version} is not supported (this page reads version ${KEY_FILE_VERSION})`);
    }
    if (!ROLES.includes(t.role)) throw new KeyFileError("missing or unknown `role`");
    if (typeof t.secret !== "string" || !/^[0-9a-fA-F]{64}$/.test(t.secret)) {
      throw new KeyFileError("`secret` must be 64 hex digits");
    }
    const id = new Identity(fromHex(t.secret, 32), t.role);
    if (t.public !== undefined) {
      let given;
      try {
        given = parsePublicId(t.public);
      } catch {
        throw new KeyFileError("`public` is not a public id");
      }
      if (toHex(given) !== toHex(id.public)) throw new KeyFileError("the public id in the file does not match its secret key");
    }
    return id;
  }

  constructor(seed, role = "citizen") {
    if (seed.length !== 32) throw new KeyFileError("a secret key is 32 bytes");
    this.seed = Uint8Array.from(seed);
    this.role = role;
    this.public = ed25519PublicKey(this.seed);
    this._x25519 = null;
  }

  publicText() {
    return publicIdText(this.public);
  }

  sign(message) {
    return ed25519Sign(this.seed, message);
  }

  async x25519() {
    if (!this._x25519) {
      const s = suite();
      const ikm = deriveKey(X25519_CONTEXT, this.seed);
      const pair = await s.kem.deriveKeyPair(ikm);
      ikm.fill(0);
      const pub = new Uint8Array(await s.kem.serializePublicKey(pair.publicKey));
      this._x25519 = { suite: s, pair, pub };
    }
    return this._x25519;
  }

  /** The grant address a department grants to: `dga1` + hex(id ‖ X25519 key ‖ signature). */
  async grantAddress() {
    const { pub } = await this.x25519();
    const sig = this.sign(concatBytes(ADDRESS_DOMAIN, pub));
    return "dga1" + toHex(concatBytes(this.public, pub, sig));
  }

  /** Opens a document's data key wrapped to this identity (`WrappedKey::unwrap`). */
  async unwrap(document, enc, sealed) {
    if (enc.length !== 32 || sealed.length !== 48) throw new UnwrapError();
    const { suite: s, pair } = await this.x25519();
    try {
      const plain = await s.open(
        { recipientKey: pair, enc, info: concatBytes(GRANT_DOMAIN, document, this.public) },
        sealed,
        new Uint8Array(0),
      );
      return new Uint8Array(plain);
    } catch {
      throw new UnwrapError();
    }
  }

  forget() {
    this.seed.fill(0);
    this._x25519 = null;
  }
}

export class UnwrapError extends Error {
  constructor() {
    super("the wrapped key does not open for this key and document (not granted to this key, or altered)");
    this.name = "UnwrapError";
    this.code = "unwrap";
  }
}

export { FormatError };
