// The verify page: a receipt, dropped as a file or carried in the link
// (`/verify/#<receipt in base64url>`, the link or QR code printed on a certificate), checked
// in this browser against the chain's genesis validators: the manifest hashes to the
// document id, the registration is in its block, a majority of the validators signed it.

import { decodeReceipt, fromBase64Url, toHex, verifyReceipt } from "../lib/index.js";
import { initLanguage, onLanguageChange, t, formatSize, formatTime } from "../ui/i18n.js";
import { portalInfo } from "../ui/gateway.js";

const $ = (id) => document.getElementById(id);
let last = null;

function show(el, on) {
  el.classList.toggle("hidden", !on);
}

async function check(bytes) {
  let info;
  try {
    info = await portalInfo();
  } catch (e) {
    last = { error: t("verify.noinfo", { reason: e.message }) };
    return render();
  }
  $("trust").textContent = t("verify.trust", { chain: toHex(info.chain).slice(0, 16) + "…", total: info.validators.length });
  try {
    last = { summary: verifyReceipt(decodeReceipt(bytes), info.validators, info.chain) };
  } catch (e) {
    last = { error: e.message };
  }
  render();
}

function render() {
  if (!last) return;
  show($("result"), true);
  const ok = !!last.summary;
  const v = $("verdict");
  v.textContent = t(ok ? "verify.genuine" : "verify.invalid");
  v.className = `verdict ${ok ? "ok" : "bad"}`;
  $("result").dataset.verdict = ok ? "genuine" : "invalid";
  $("verdict-lead").textContent = t(ok ? "verify.genuine.lead" : "verify.invalid.lead");
  $("reason").textContent = last.error ?? "";
  show($("reason"), !ok);
  show($("fields"), ok);
  if (!ok) return;
  const s = last.summary;
  $("f-department").textContent = s.department;
  $("f-type").textContent = s.documentType;
  $("f-created").textContent = formatTime(s.createdAtMs);
  $("f-height").textContent = String(s.height);
  $("f-blocktime").textContent = formatTime(s.blockTimeMs);
  $("f-size").textContent = formatSize(s.size);
  $("f-document").textContent = s.document;
  $("f-signed").textContent = t("verify.of", { signed: s.signers.length, total: s.validators.length });
  const ul = $("f-signers");
  ul.replaceChildren(
    ...s.signers.map((k) => {
      const li = document.createElement("li");
      li.textContent = k;
      return li;
    }),
  );
}

async function fromFile(file) {
  if (file.size > 66 << 20) {
    last = { error: "file too large for a receipt" };
    return render();
  }
  await check(new Uint8Array(await file.arrayBuffer()));
}

function fromHash() {
  const h = location.hash.slice(1);
  if (!h) return;
  try {
    check(fromBase64Url(h));
  } catch (e) {
    last = { error: e.message };
    render();
  }
}

function init() {
  initLanguage();
  onLanguageChange(render);
  const zone = $("drop");
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    if (e.dataTransfer.files[0]) fromFile(e.dataTransfer.files[0]);
  });
  $("receipt-file").addEventListener("change", (e) => e.target.files[0] && fromFile(e.target.files[0]));
  window.addEventListener("hashchange", fromHash);
  fromHash();
  document.body.dataset.ready = "true";
}

init();
