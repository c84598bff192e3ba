// The department console: plain JavaScript over the gateway's /api/v1 (no npm imports).
// The API token is kept in sessionStorage only (gone when the tab closes).
"use strict";

const I18N = {
  "zh-CN": {
    title: "档案 · 部门控制台", lang_toggle: "English", logout: "退出",
    login_title: "登录", token_label: "API 令牌（由管理员通过 dangan gateway token add 发放）",
    login: "登录", nav_documents: "文档", nav_upload: "上传", nav_health: "集群状态",
    upload_title: "上传文档", doc_type: "文档类型", drop_help: "将文件拖放到此处，或点击选择文件",
    upload: "上传", documents_title: "本部门的文档", refresh: "刷新", more: "更多",
    col_name: "文件", col_type: "类型", col_size: "大小", col_created: "创建时间",
    col_grants: "授权", col_actions: "操作", detail_title: "文档",
    grant_address: "公民的授权地址（dga1…，粘贴或扫描二维码）", scan: "扫描二维码",
    grant_days: "有效天数（留空表示永久）", grant: "授权", grants_title: "当前授权",
    download: "下载", receipt: "下载回执", rekey: "重新加密（轮换密钥）", audit: "查看读取记录",
    audit_title: "读取记录", col_time: "时间", col_reader: "读者", col_read: "内容",
    col_state: "验证状态", health_title: "集群状态", col_peer: "节点", col_zone: "区域",
    col_addr: "地址", col_up: "状态", open: "打开", revoke: "撤销", never: "永久",
    until: "至", up: "在线", down: "离线", none: "暂无", chosen: "已选择：",
    no_file: "请先选择一个文件。", uploading: "正在上传…", stored: "已保存，文档编号：",
    granted: "已授权，区块高度：", revoked: "已撤销授权。", rekeyed: "已重新加密，新文档编号：",
    confirm_rekey: "重新加密会生成新版本并使旧密钥失效。确定继续吗？",
    confirm_revoke: "确定撤销此公民的授权吗？",
    verified: "已验证（区块 {h}）", pending: "待上链", failed: "验证失败：{r}",
    owner: "本部门", grantee: "被授权人", other: "无当前授权",
    audit_summary: "共 {n} 条读取记录：{v} 条已验证，{p} 条待上链，{f} 条验证失败。",
    health_summary: "链 {c}，区块高度 {h}，文档 {d} 个，验证者 {v} 个；节点 {r}/{n} 在线（每个条带可丢失 {m} 个节点）。",
    scan_unavailable: "此浏览器暂不支持扫描二维码，请粘贴授权地址。",
    scan_picture: "从图片读取二维码（照片或截图）", scan_camera: "使用摄像头", cancel: "取消",
    scanned: "已读取授权地址，请核对后点击“授权”。",
    scan_not_address: "二维码中不是授权地址（应以 dga1 开头）。",
    scan_no_code: "图片中没有找到二维码，请换一张更清晰的图片。",
    scan_not_image: "无法读取该文件，请选择一张图片。",
    scan_no_camera: "无法打开摄像头（需要授权，并且页面须通过 HTTPS 访问）。",
    via_gateway: "（经网关，公民门户）", read_manifest: "文档清单", read_shard: "数据分片",
    err_unauthorized: "令牌无效或已撤销，请重新登录。",
    err_missing_scope: "此令牌没有执行该操作的权限。",
    err_too_large: "文件超过网关允许的大小。",
    err_busy: "网关正忙，请稍后再试。",
    err_unknown_document: "找不到该文档。",
    err_bad_grant_address: "授权地址无效，请检查后重新粘贴。",
    err_cluster_unavailable: "集群暂时不可用，请稍后再试。",
    err_chain_unavailable: "区块链暂时不可用，请稍后再试。",
    err_network: "无法连接网关。",
    err_other: "操作失败：",
  },
  en: {
    title: "Dangan · Department console", lang_toggle: "中文", logout: "Sign out",
    login_title: "Sign in", token_label: "API token (issued by an administrator with dangan gateway token add)",
    login: "Sign in", nav_documents: "Documents", nav_upload: "Upload", nav_health: "Cluster health",
    upload_title: "Upload a document", doc_type: "Document type",
    drop_help: "Drop a file here, or click to choose one", upload: "Upload",
    documents_title: "This department's documents", refresh: "Refresh", more: "More",
    col_name: "File", col_type: "Type", col_size: "Size", col_created: "Created",
    col_grants: "Grants", col_actions: "Actions", detail_title: "Document",
    grant_address: "The citizen's grant address (dga1…, pasted or scanned from a QR code)",
    scan: "Scan QR code", grant_days: "Valid for days (empty: no expiry)", grant: "Grant",
    grants_title: "Current grants", download: "Download", receipt: "Download receipt",
    rekey: "Re-encrypt (new key)", audit: "Show reads", audit_title: "Read audit",
    col_time: "Time", col_reader: "Reader", col_read: "What", col_state: "Verification",
    health_title: "Cluster health", col_peer: "Peer", col_zone: "Zone", col_addr: "Address",
    col_up: "State", open: "Open", revoke: "Revoke", never: "no expiry", until: "until",
    up: "up", down: "down", none: "none", chosen: "Chosen: ", no_file: "Choose a file first.",
    uploading: "Uploading…", stored: "Stored. Document id: ", granted: "Granted in block ",
    revoked: "Grant revoked.", rekeyed: "Re-encrypted. New document id: ",
    confirm_rekey: "Re-encrypting stores a new version and makes the old key useless. Go on?",
    confirm_revoke: "Revoke this citizen's grant?",
    verified: "verified (block {h})", pending: "pending (no root on chain yet)",
    failed: "FAILED: {r}", owner: "this department", grantee: "grantee", other: "no current grant",
    audit_summary: "{n} reads recorded: {v} verified, {p} pending, {f} failed.",
    health_summary: "Chain {c} at height {h}, documents: {d}, validators: {v}; {r} of {n} peers up (any {m} per stripe may be lost).",
    scan_unavailable: "This browser cannot scan QR codes yet; paste the grant address.",
    scan_picture: "Read the QR code from a picture (photo or screenshot)",
    scan_camera: "Use the camera", cancel: "Cancel",
    scanned: "Grant address read. Check it, then press Grant.",
    scan_not_address: "That QR code is not a grant address (those start with dga1).",
    scan_no_code: "No QR code found in that picture. Try a sharper one.",
    scan_not_image: "That file cannot be read as a picture.",
    scan_no_camera: "The camera cannot be opened (it needs permission, and the page must be served over HTTPS).",
    via_gateway: " (via the gateway: citizen portal)", read_manifest: "manifest", read_shard: "shard",
    err_unauthorized: "The token is not valid (or was revoked). Sign in again.",
    err_missing_scope: "This token is not allowed to do that.",
    err_too_large: "The file is larger than the gateway accepts.",
    err_busy: "The gateway is busy. Try again shortly.",
    err_unknown_document: "No such document.",
    err_bad_grant_address: "That grant address is not valid. Check it and paste it again.",
    err_cluster_unavailable: "The cluster is unavailable right now. Try again shortly.",
    err_chain_unavailable: "The chain is unavailable right now. Try again shortly.",
    err_network: "Cannot reach the gateway.",
    err_other: "That did not work: ",
  },
};

let lang = localStorage.getItem("dangan-lang") || "zh-CN";
let current = null; // the document shown in detail
let after = null;   // the next page's cursor
let view = "documents"; // the section shown
const $ = (id) => document.getElementById(id);
const t = (key, vars) => {
  let s = (I18N[lang] && I18N[lang][key]) || I18N.en[key] || key;
  for (const [k, v] of Object.entries(vars || {})) s = s.replace("{" + k + "}", v);
  return s;
};

function applyLanguage() {
  document.documentElement.lang = lang;
  document.title = t("title");
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
}

// A message for the clerk; `code` (an id, say) is shown after it, whole and selectable.
function say(text, isError, code) {
  const m = $("message");
  m.textContent = text;
  if (code) m.appendChild(document.createElement("code")).textContent = code;
  m.className = isError ? "error" : "ok";
  m.hidden = false;
  m.scrollIntoView({ block: "nearest" });
}

function token() { return sessionStorage.getItem("dangan-token"); }

// An API call; throws an Error whose message is for a clerk, not a stack trace.
async function api(method, path, body, headers) {
  let res;
  try {
    res = await fetch(path, {
      method, body,
      headers: Object.assign({ Authorization: "Bearer " + token() }, headers || {}),
    });
  } catch (e) {
    throw new Error(t("err_network"));
  }
  if (res.ok) return res;
  let code = "", message = res.statusText;
  try { const j = await res.json(); code = j.code; message = j.message; } catch (e) { /* not JSON */ }
  if (res.status === 401) { sessionStorage.removeItem("dangan-token"); showLogin(); }
  const known = I18N[lang]["err_" + code];
  throw new Error(known || t("err_other") + message);
}

function showLogin() {
  $("login-view").hidden = false;
  $("app-view").hidden = true;
  $("logout").hidden = true;
}

function showApp() {
  $("login-view").hidden = true;
  $("app-view").hidden = false;
  $("logout").hidden = false;
  show("documents");
}

function show(which) {
  view = which;
  for (const s of document.querySelectorAll(".view")) s.hidden = s.id !== view;
  for (const b of document.querySelectorAll("nav button")) b.classList.toggle("current", b.dataset.view === view);
  if (view === "documents") loadDocuments(true);
  if (view === "health") loadHealth();
}

const size = (n) => n < 1024 ? n + " B" : n < 1 << 20 ? (n / 1024).toFixed(1) + " KiB"
  : n < 1 << 30 ? (n / (1 << 20)).toFixed(1) + " MiB" : (n / (1 << 30)).toFixed(2) + " GiB";
const when = (ms) => new Date(ms).toLocaleString(lang);
const short = (s) => s.length > 16 ? s.slice(0, 10) + "…" + s.slice(-4) : s;

function cell(row, text) { const td = row.insertCell(); td.textContent = text; return td; }

async function loadDocuments(fresh) {
  try {
    if (fresh) { after = null; $("doc-rows").textContent = ""; }
    const q = after ? "?after=" + encodeURIComponent(after) : "";
    const page = await (await api("GET", "/api/v1/documents" + q)).json();
    for (const d of page.documents) {
      const row = $("doc-rows").insertRow();
      cell(row, d.file_name || short(d.id)).title = d.id;
      cell(row, d.document_type);
      cell(row, size(d.size));
      cell(row, when(d.created_at_ms));
      cell(row, String(d.grants.length));
      const b = document.createElement("button");
      b.type = "button"; b.textContent = t("open");
      b.addEventListener("click", () => openDocument(d));
      row.insertCell().appendChild(b);
    }
    after = page.next;
    $("more").hidden = !after;
  } catch (e) { say(e.message, true); }
}

function openDocument(d) {
  current = d;
  $("detail").hidden = false;
  $("detail-id").textContent = d.id;
  $("audit").hidden = true;
  const list = $("grant-list");
  list.textContent = "";
  if (!d.grants.length) list.appendChild(document.createElement("li")).textContent = t("none");
  for (const g of d.grants) {
    const li = list.appendChild(document.createElement("li"));
    li.appendChild(document.createElement("code")).textContent = g.reader;
    li.appendChild(document.createTextNode(" " + (g.expires_ms ? t("until") + " " + when(g.expires_ms) : t("never")) + " "));
    const b = li.appendChild(document.createElement("button"));
    b.type = "button"; b.textContent = t("revoke");
    b.addEventListener("click", () => revoke(g.reader));
  }
  $("detail").scrollIntoView();
}

async function revoke(reader) {
  if (!confirm(t("confirm_revoke"))) return;
  try {
    await api("DELETE", "/api/v1/documents/" + current.id + "/grants/" + encodeURIComponent(reader));
    say(t("revoked"));
    current.grants = current.grants.filter((g) => g.reader !== reader);
    openDocument(current);
    loadDocuments(true);
  } catch (e) { say(e.message, true); }
}

async function grant(ev) {
  ev.preventDefault();
  const address = $("grant-address").value.trim();
  const days = parseInt($("grant-days").value, 10);
  const body = { address };
  if (days > 0) body.expires_ms = Date.now() + days * 86400000;
  try {
    const r = await (await api("POST", "/api/v1/documents/" + current.id + "/grants",
      JSON.stringify(body), { "Content-Type": "application/json" })).json();
    say(t("granted") + r.height);
    current.grants = current.grants.filter((g) => g.reader !== r.reader)
      .concat([{ reader: r.reader, expires_ms: body.expires_ms || null }]);
    $("grant-address").value = "";
    openDocument(current);
    loadDocuments(true);
  } catch (e) { say(e.message, true); }
}

async function saveAs(path, name) {
  try {
    const blob = await (await api("GET", path)).blob();
    const a = document.createElement("a");
    a.href = URL.createObjectURL(blob);
    a.download = name;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  } catch (e) { say(e.message, true); }
}

async function rekey() {
  if (!confirm(t("confirm_rekey"))) return;
  try {
    const r = await (await api("POST", "/api/v1/documents/" + current.id + "/rekey")).json();
    say(t("rekeyed") + r.new);
    $("detail").hidden = true;
    loadDocuments(true);
  } catch (e) { say(e.message, true); }
}

async function showAudit() {
  try {
    const a = await (await api("GET", "/api/v1/documents/" + current.id + "/audit")).json();
    $("audit").hidden = false;
    $("audit-summary").textContent = t("audit_summary",
      { n: a.reads.length, v: a.verified, p: a.pending, f: a.failed });
    const rows = $("audit-rows");
    rows.textContent = "";
    for (const r of a.reads) {
      const row = rows.insertRow();
      cell(row, when(r.at_ms));
      cell(row, short(r.reader) + " (" + t(r.role) + ")").title = r.reader;
      const kind = r.read.split(" ")[0]; // "manifest" or "shard"
      cell(row, t("read_" + kind) + (r.read.includes(" via gateway ") ? t("via_gateway") : "")).title = r.read;
      const s = cell(row, t(r.state, { h: r.height, r: r.reason || "" }));
      s.className = "state-" + r.state;
    }
  } catch (e) { say(e.message, true); }
}

async function loadHealth() {
  try {
    const h = await (await api("GET", "/api/v1/status")).json();
    $("health-summary").textContent = t("health_summary", {
      c: h.chain_id, h: h.height, d: h.documents, v: h.validators,
      r: h.reachable, n: h.peers.length, m: h.parity,
    });
    const rows = $("peer-rows");
    rows.textContent = "";
    for (const p of h.peers) {
      const row = rows.insertRow();
      cell(row, short(p.id)).title = p.id;
      cell(row, p.zone);
      cell(row, p.addr);
      cell(row, p.reachable ? t("up") : t("down")).className = p.reachable ? "state-verified" : "state-failed";
    }
  } catch (e) { say(e.message, true); }
}

function upload(ev) {
  ev.preventDefault();
  const file = $("file").files[0];
  if (!file) { say(t("no_file"), true); return; }
  const form = new FormData();
  form.append("type", $("doc-type").value.trim());
  form.append("file", file, file.name);
  const xhr = new XMLHttpRequest();
  const bar = $("progress");
  const progress = (pct) => { bar.value = pct; $("progress-text").textContent = pct + "%"; };
  $("progress-row").hidden = false;
  progress(0);
  $("upload-submit").disabled = true;
  say(t("uploading"));
  // The bytes sent; the document is stored (durable, registered on chain) only at the 201.
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) progress(Math.min(99, Math.floor((e.loaded / e.total) * 100)));
  });
  xhr.addEventListener("loadend", () => { $("upload-submit").disabled = false; });
  xhr.addEventListener("load", () => {
    let j = {};
    try { j = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
    if (xhr.status === 201) {
      progress(100);
      say(t("stored"), false, j.id);
      $("file").value = ""; $("chosen").textContent = "";
    } else {
      $("progress-row").hidden = true;
      say(I18N[lang]["err_" + j.code] || t("err_other") + (j.message || xhr.statusText), true);
    }
  });
  xhr.addEventListener("error", () => { $("progress-row").hidden = true; say(t("err_network"), true); });
  xhr.open("POST", "/api/v1/documents");
  xhr.setRequestHeader("Authorization", "Bearer " + token());
  xhr.send(form);
}

// A QR scanner (the web piece) may set window.danganScanGrantAddress to a function
// returning a Promise of the scanned text; until then the button says to paste.
async function scan() {
  if (typeof window.danganScanGrantAddress !== "function") { say(t("scan_unavailable"), true); return; }
  let text;
  try { text = String(await window.danganScanGrantAddress()).trim(); }
  catch (e) {
    if (e.code !== "cancelled") say(I18N[lang]["scan_" + e.code] || t("err_other") + e.message, true);
    return;
  }
  if (!text.startsWith("dga1")) { say(t("scan_not_address"), true); return; }
  $("grant-address").value = text;
  say(t("scanned"));
}

document.addEventListener("DOMContentLoaded", () => {
  applyLanguage();
  $("lang").addEventListener("click", () => {
    lang = lang === "zh-CN" ? "en" : "zh-CN";
    localStorage.setItem("dangan-lang", lang);
    applyLanguage();
    $("message").hidden = true;
    // What was drawn in the other language is drawn again.
    if (!$("app-view").hidden) {
      const open = current && !$("detail").hidden ? current : null;
      const audit = open && !$("audit").hidden;
      show(view);
      if (open) { openDocument(open); if (audit) showAudit(); }
    }
  });
  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    sessionStorage.setItem("dangan-token", $("token").value.trim());
    $("token").value = "";
    try { await api("GET", "/api/v1/documents?limit=1"); $("message").hidden = true; showApp(); }
    catch (e) { say(e.message, true); }
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem("dangan-token"); showLogin(); });
  for (const b of document.querySelectorAll("nav button")) b.addEventListener("click", () => show(b.dataset.view));
  $("refresh").addEventListener("click", () => loadDocuments(true));
  $("more").addEventListener("click", () => loadDocuments(false));
  $("grant-form").addEventListener("submit", grant);
  $("scan").addEventListener("click", scan);
  $("download").addEventListener("click", () => saveAs("/api/v1/documents/" + current.id, current.file_name || current.id));
  $("get-receipt").addEventListener("click", () => saveAs("/api/v1/documents/" + current.id + "/receipt", current.id + ".receipt"));
  $("rekey").addEventListener("click", rekey);
  $("show-audit").addEventListener("click", showAudit);
  $("upload-form").addEventListener("submit", upload);
  const drop = $("drop");
  const chosen = () => { const f = $("file").files[0]; $("chosen").textContent = f ? t("chosen") + f.name + " (" + size(f.size) + ")" : ""; };
  $("file").addEventListener("change", chosen);
  drop.addEventListener("click", (e) => { if (e.target !== $("file")) $("file").click(); });
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    if (e.dataTransfer.files.length) { $("file").files = e.dataTransfer.files; chosen(); }
  });
  if (token()) showApp(); else showLogin();
});
