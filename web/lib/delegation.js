// Read delegations and listing requests, signed in the browser with the citizen's Ed25519
// key (the contract of issue 19): the citizen lets one gateway fetch one document's sealed
// form for them until `expires_ms`, or list what is granted to them.
// Read: `dangan-read-delegation-v1\0` ‖ chain key ‖ gateway id ‖ document id ‖ citizen id ‖
// expires_ms (u64 BE). Listing: `dangan-list-delegation-v1\0` ‖ chain ‖ gateway ‖ citizen ‖
// expires_ms. Peers refuse one that has expired or lives longer than 10 minutes from now.

import { concatBytes, toHex, u64be, utf8 } from "./bytes.js";
import { publicIdText } from "./identity.js";

export const READ_DOMAIN = utf8("dangan-read-delegation-v1\0");
export const LIST_DOMAIN = utf8("dangan-list-delegation-v1\0");
export const MAX_DELEGATION_MS = 10 * 60 * 1000;
/** How long the page asks for: well under the limit, so some clock skew is tolerated. */
export const DEFAULT_LIFETIME_MS = 5 * 60 * 1000;

export function readDelegationBytes({ chain, gateway, document, citizen, expiresMs }) {
  return concatBytes(READ_DOMAIN, chain, gateway, document, citizen, u64be(expiresMs));
}

export function listRequestBytes({ chain, gateway, citizen, expiresMs }) {
  return concatBytes(LIST_DOMAIN, chain, gateway, citizen, u64be(expiresMs));
}

/** The JSON body of `POST /portal/v1/documents/{id}/sealed`. */
export function signReadDelegation(identity, { chain, gateway, document, expiresMs }) {
  const expires = expiresMs ?? Date.now() + DEFAULT_LIFETIME_MS;
  const fields = { chain, gateway, document, citizen: identity.public, expiresMs: expires };
  return {
    citizen: publicIdText(identity.public),
    gateway: publicIdText(gateway),
    document: toHex(document),
    expires_ms: expires,
    signature: toHex(identity.sign(readDelegationBytes(fields))),
  };
}

/** The JSON body of `POST /portal/v1/granted`. */
export function signListRequest(identity, { chain, gateway, expiresMs }) {
  const expires = expiresMs ?? Date.now() + DEFAULT_LIFETIME_MS;
  const fields = { chain, gateway, citizen: identity.public, expiresMs: expires };
  return {
    citizen: publicIdText(identity.public),
    gateway: publicIdText(gateway),
    expires_ms: expires,
    signature: toHex(identity.sign(listRequestBytes(fields))),
  };
}
