// What the pages ask the gateway: `/portal/v1/info` (its id, the chain key, the genesis
// validators) and the portal's signed requests; JSON errors `{code, message}` turned into
// a PortalError with the HTTP status.

import { fromHex, parsePublicId } from "../lib/index.js";

export class PortalError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "PortalError";
    this.status = status;
    this.code = code;
  }
}

export class NetworkError extends Error {
  constructor(message) {
    super(message);
    this.name = "NetworkError";
  }
}

async function call(path, init) {
  let res;
  try {
    res = await fetch(path, { cache: "no-store", ...init });
  } catch (e) {
    throw new NetworkError(e.message);
  }
  if (!res.ok) {
    let code = `http_${res.status}`;
    let message = res.statusText;
    try {
      const body = await res.json();
      code = body.code ?? code;
      message = body.message ?? message;
    } catch {
      // Not JSON: keep the status line.
    }
    throw new PortalError(res.status, code, message);
  }
  return res;
}

let info = null;
/** The gateway's info, fetched once: { gateway, chain, validators (32-byte keys), department }. */
export async function portalInfo() {
  if (!info) {
    const body = await (await call("/portal/v1/info")).json();
    info = {
      gateway: parsePublicId(body.gateway, "gateway id"),
      chain: fromHex(body.chain, 32, "chain key"),
      validators: body.validators.map((v) => parsePublicId(v, "validator id")),
      department: body.department,
    };
  }
  return info;
}

export async function postJson(path, body) {
  return call(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
}
