// The citizen portal: the key file is read into this page only; listing and downloads are
// signed with it in the browser; a document arrives sealed, its data key wrapped to the
// citizen, and is opened here segment by segment (every tag checked, the receipt verified
// against the chain's validators) and written out as it is decrypted.

import { encodeQR } from "qr";
import {
  Identity,
  KeyFileError,
  ProofError,
  FormatError,
  TamperError,
  UnwrapError,
  fromHex,
  toHex,
  openSealedStream,
  signListRequest,
  signReadDelegation,
} from "../lib/index.js";
import { hasher } from "../lib/primitives.js";
import { initLanguage, onLanguageChange, t, formatSize, formatTime } from "../ui/i18n.js";
import { NetworkError, PortalError, portalInfo, postJson } from "../ui/gateway.js";

const $ = (id) => document.getElementById(id);
let identity = null;
let documents = [];

function show(el, on) {
  el.classList.toggle("hidden", !on);
}

function status(kind, text) {
  const s = $("status");
  s.className = `status ${kind}`;
  s.textContent = text;
  s.dataset.kind = kind;
  // On a phone the message sits below the fold: bring it into view.
  s.scrollIntoView({ block: "nearest" });
}

/** The sentence a citizen sees for an error. */
export function explain(e) {
  if (e instanceof PortalError) {
    if (e.status === 403) return t("err.not_granted");
    if (e.status === 404) return t("err.not_found");
    if (e.status === 503 || e.status === 429) return t("err.unavailable");
    return t("err.malformed", { reason: e.message });
  }
  if (e instanceof NetworkError) return t("err.network", { reason: e.message });
  if (e instanceof KeyFileError) return t("err.keyfile", { reason: e.message });
  if (e instanceof UnwrapError) return t("err.unwrap");
  if (e instanceof TamperError) return t("err.tampered");
  if (e instanceof ProofError) return t("err.receipt", { reason: e.message });
  if (e instanceof FormatError) return t("err.tampered") + ` (${e.message})`;
  return t("err.other", { reason: e?.message ?? String(e) });
}

async function loadKey(file) {
  try {
    if (file.size > 64 * 1024) throw new KeyFileError("too large for a key file");
    identity = Identity.fromKeyFile(await file.text());
  } catch (e) {
    status("bad", explain(e));
    return;
  }
  $("key-id").textContent = identity.publicText();
  const address = await identity.grantAddress();
  $("key-address").textContent = address;
  $("key-qr").innerHTML = encodeQR(address, "svg", { ecc: "low", border: 2 });
  const svg = $("key-qr").querySelector("svg");
  if (svg) svg.setAttribute("class", "qr");
  show($("key-empty"), false);
  show($("key-loaded"), true);
  status("ok", t("key.loaded"));
  await refresh();
}

function forget() {
  if (identity) identity.forget();
  identity = null;
  documents = [];
  $("key-file").value = "";
  show($("key-empty"), true);
  show($("key-loaded"), false);
  renderDocs();
  show($("status"), false);
}

async function refresh() {
  if (!identity) return status("bad", t("err.nokey"));
  status("info", t("status.loading"));
  try {
    const info = await portalInfo();
    const res = await postJson("/portal/v1/granted", signListRequest(identity, info));
    documents = (await res.json()).documents;
    renderDocs();
    show($("status"), false);
  } catch (e) {
    status("bad", explain(e));
  }
}

function renderDocs() {
  const body = $("docs").querySelector("tbody");
  body.replaceChildren();
  for (const d of documents) {
    const tr = document.createElement("tr");
    const cell = (label, text) => {
      const td = document.createElement("td");
      td.dataset.label = t(label);
      td.textContent = text;
      tr.append(td);
    };
    cell("docs.type", d.document_type);
    cell("docs.department", d.department);
    cell("docs.size", formatSize(d.size));
    cell("docs.date", formatTime(d.created_at_ms));
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.textContent = t("docs.download");
    b.dataset.document = d.document;
    b.addEventListener("click", () => download(d.document, d.document_type));
    td.append(b);
    tr.append(td);
    body.append(tr);
  }
  show($("docs"), documents.length > 0);
  show($("docs-none"), identity !== null && documents.length === 0);
}

function sniffExtension(head) {
  const starts = (...b) => b.every((x, i) => head[i] === x);
  if (starts(0x25, 0x50, 0x44, 0x46)) return ".pdf";
  if (starts(0x89, 0x50, 0x4e, 0x47)) return ".png";
  if (starts(0xff, 0xd8, 0xff)) return ".jpg";
  if (starts(0x50, 0x4b, 0x03, 0x04)) return ".zip";
  return ".bin";
}

/**
 * Where the plaintext goes: a file the citizen picks, written as it is decrypted (the File
 * System Access API; an aborted write leaves no file), or, where the browser lacks it,
 * pieces kept in memory and handed over as one Blob once all of it verified.
 */
async function openSink(name) {
  const forceBlob = new URLSearchParams(location.search).has("blob");
  if (window.showSaveFilePicker && !forceBlob) {
    const handle = await window.showSaveFilePicker({ suggestedName: name });
    const w = await handle.createWritable();
    return { write: (b) => w.write(b), done: () => w.close(), abort: () => w.abort() };
  }
  const parts = [];
  return {
    write: (b) => parts.push(b),
    done: () => {
      const ext = sniffExtension(parts[0] ?? new Uint8Array(0));
      const url = URL.createObjectURL(new Blob(parts, { type: "application/octet-stream" }));
      const a = document.createElement("a");
      a.href = url;
      a.download = name + ext;
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    },
    abort: () => {
      parts.length = 0;
    },
  };
}

async function download(idText, type = "document") {
  if (!identity) return status("bad", t("err.nokey"));
  let id;
  try {
    id = fromHex(idText, 32, "document id");
  } catch {
    return status("bad", t("err.badid"));
  }
  let sink = null;
  const bar = $("progress");
  try {
    // The save dialog first, while the click still counts as the citizen's gesture.
    sink = await openSink(`${type}-${idText.slice(0, 8)}`);
    status("info", t("status.downloading"));
    show($("progress-box"), true);
    bar.value = 0;
    const info = await portalInfo();
    const delegation = signReadDelegation(identity, { ...info, document: id });
    const res = await postJson(`/portal/v1/documents/${idText}/sealed`, delegation);
    const digest = hasher();
    const summary = await openSealedStream(res.body, {
      identity,
      expected: id,
      validators: info.validators,
      chain: info.chain,
      sink: async (plain) => {
        digest.update(plain);
        await sink.write(plain);
      },
      progress: (done, total) => {
        bar.value = total ? done / total : 1;
      },
    });
    await sink.done();
    bar.value = 1;
    const s = $("status");
    status("ok", `${t("status.saved")} ${t("status.verified", { signed: summary.signers.length, total: summary.validators.length, height: summary.height })}`);
    s.dataset.document = summary.document;
    s.dataset.blake3 = toHex(digest.digest());
  } catch (e) {
    if (sink) await Promise.resolve(sink.abort()).catch(() => {});
    if (e?.name === "AbortError") {
      show($("status"), false);
    } else {
      status("bad", explain(e));
    }
  } finally {
    show($("progress-box"), false);
  }
}

function wireDrop(zone, onFile) {
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const f = e.dataTransfer.files[0];
    if (f) onFile(f);
  });
}

function init() {
  initLanguage();
  onLanguageChange(renderDocs);
  if (!window.isSecureContext || !crypto.subtle) {
    show($("secure"), true);
  }
  $("key-file").addEventListener("change", (e) => e.target.files[0] && loadKey(e.target.files[0]));
  wireDrop($("key-drop"), loadKey);
  $("forget").addEventListener("click", forget);
  $("refresh").addEventListener("click", refresh);
  $("copy-address").addEventListener("click", async () => {
    await navigator.clipboard?.writeText($("key-address").textContent).catch(() => {});
    $("copy-address").textContent = t("key.copied");
  });
  $("download-id").addEventListener("click", () => download($("doc-id").value.trim()));
  document.body.dataset.ready = "true";
}

init();
