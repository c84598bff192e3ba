// The pages' words in Chinese (the default) and English, and the language toggle. Elements
// carry `data-i18n="key"` (text) or `data-i18n-title`/`data-i18n-placeholder`; the choice is
// kept in localStorage.

export const STRINGS = {
  "zh-CN": {
    "lang.toggle": "English",
    "portal.title": "档案 · 公民文件门户",
    "portal.lead": "查看并下载政府部门授权给您的文件。文件在您的浏览器中解密，网关看不到文件内容。",
    "key.heading": "1. 载入您的密钥",
    "key.help": "选择您的密钥文件（例如 citizen.key）。密钥只保存在此浏览器页面中，不会上传。",
    "key.choose": "选择密钥文件",
    "key.drop": "或将密钥文件拖放到这里",
    "key.loaded": "已载入密钥",
    "key.id": "您的身份",
    "key.address": "您的授权地址（交给部门，用于向您授权文件）",
    "key.copy": "复制",
    "key.copied": "已复制",
    "key.forget": "从此页面移除密钥",
    "docs.heading": "2. 授权给您的文件",
    "docs.refresh": "刷新",
    "docs.none": "目前没有授权给您的文件。",
    "docs.type": "文件类型",
    "docs.department": "部门",
    "docs.size": "大小",
    "docs.date": "日期",
    "docs.expires": "授权到期",
    "docs.never": "不过期",
    "docs.download": "下载",
    "byid.heading": "3. 按编号下载",
    "byid.label": "文件编号（64 位十六进制）",
    "byid.download": "下载",
    "status.loading": "正在查询……",
    "status.downloading": "正在下载并解密……",
    "status.saved": "文件已通过验证并保存。",
    "status.verified": "回执已验证：由 {signed}/{total} 名验证者签署，区块高度 {height}。",
    "err.secure": "此页面需要安全连接（https 或本机地址）才能使用浏览器的加密功能。",
    "err.keyfile": "无法读取密钥文件：{reason}",
    "err.nokey": "请先载入您的密钥文件。",
    "err.badid": "文件编号应为 64 位十六进制字符。",
    "err.not_granted": "此文件未授权给您（或授权已撤销、已过期）。",
    "err.not_found": "找不到此文件。",
    "err.unavailable": "服务暂时不可用，请稍后再试。",
    "err.malformed": "请求被拒绝：{reason}",
    "err.unwrap": "您的密钥无法打开此文件：它不是授权给这把密钥的。",
    "err.tampered": "文件内容未通过完整性校验（被篡改或传输中断），已停止并丢弃。",
    "err.receipt": "文件回执未通过验证：{reason}",
    "err.network": "无法连接到网关：{reason}",
    "err.other": "出错了：{reason}",
    "verify.title": "档案 · 回执验证",
    "verify.lead": "银行、雇主等第三方可在此核验政府文件回执的真伪。无需账户，全部检查都在您的浏览器中完成。",
    "verify.drop": "将回执文件拖放到这里，或",
    "verify.choose": "选择回执文件",
    "verify.genuine": "真实有效",
    "verify.genuine.lead": "此回执由链上验证者签署，登记的文件与回执一致。",
    "verify.invalid": "无法验证",
    "verify.invalid.lead": "此回执不是真实的，或已被修改。",
    "verify.department": "签发部门",
    "verify.type": "文件类型",
    "verify.created": "签发时间",
    "verify.height": "区块高度",
    "verify.blocktime": "区块时间",
    "verify.document": "文件编号",
    "verify.size": "文件大小",
    "verify.signers": "签署的验证者",
    "verify.of": "{signed} / {total} 名验证者",
    "verify.trust": "验证依据：链 {chain} 的创世验证者集合（共 {total} 名）。请与官方公布的验证者名单核对。",
    "verify.noinfo": "无法取得验证者集合：{reason}",
    "footer": "档案 Dangan · 政府文件分布式存储",
  },
  en: {
    "lang.toggle": "中文",
    "portal.title": "Dangan · Citizen document portal",
    "portal.lead": "See and download the documents a government department granted to you. They are decrypted in your browser; the gateway never sees their content.",
    "key.heading": "1. Load your key",
    "key.help": "Choose your key file (for example citizen.key). It stays in this browser page and is never uploaded.",
    "key.choose": "Choose key file",
    "key.drop": "or drop the key file here",
    "key.loaded": "Key loaded",
    "key.id": "Your identity",
    "key.address": "Your grant address (give it to a department so it can grant you documents)",
    "key.copy": "Copy",
    "key.copied": "Copied",
    "key.forget": "Remove the key from this page",
    "docs.heading": "2. Documents granted to you",
    "docs.refresh": "Refresh",
    "docs.none": "No documents are granted to you yet.",
    "docs.type": "Document type",
    "docs.department": "Department",
    "docs.size": "Size",
    "docs.date": "Date",
    "docs.expires": "Grant expires",
    "docs.never": "never",
    "docs.download": "Download",
    "byid.heading": "3. Download by id",
    "byid.label": "Document id (64 hex digits)",
    "byid.download": "Download",
    "status.loading": "Loading…",
    "status.downloading": "Downloading and decrypting…",
    "status.saved": "The document was verified and saved.",
    "status.verified": "Receipt verified: signed by {signed} of {total} validators, block {height}.",
    "err.secure": "This page needs a secure connection (https or a local address) to use the browser's cryptography.",
    "err.keyfile": "Could not read the key file: {reason}",
    "err.nokey": "Load your key file first.",
    "err.badid": "A document id is 64 hex digits.",
    "err.not_granted": "This document was not granted to you (or the grant was revoked or has expired).",
    "err.not_found": "No such document.",
    "err.unavailable": "The service is unavailable for now; try again later.",
    "err.malformed": "The request was refused: {reason}",
    "err.unwrap": "Your key does not open this document: it was not granted to this key.",
    "err.tampered": "The document failed its integrity check (altered or cut short); it was stopped and discarded.",
    "err.receipt": "The document's receipt does not verify: {reason}",
    "err.network": "Could not reach the gateway: {reason}",
    "err.other": "Something went wrong: {reason}",
    "verify.title": "Dangan · Verify a receipt",
    "verify.lead": "Banks, employers and other third parties can check here whether a government document's receipt is genuine. No account needed; every check runs in your browser.",
    "verify.drop": "Drop a receipt file here, or",
    "verify.choose": "choose a receipt file",
    "verify.genuine": "Genuine",
    "verify.genuine.lead": "This receipt is signed by the chain's validators and matches the registered document.",
    "verify.invalid": "Not verified",
    "verify.invalid.lead": "This receipt is not genuine, or it was altered.",
    "verify.department": "Issuing department",
    "verify.type": "Document type",
    "verify.created": "Issued at",
    "verify.height": "Block height",
    "verify.blocktime": "Block time",
    "verify.document": "Document id",
    "verify.size": "Document size",
    "verify.signers": "Validators who signed",
    "verify.of": "{signed} of {total} validators",
    "verify.trust": "Checked against the genesis validator set of chain {chain} ({total} validators). Compare it with the officially published list.",
    "verify.noinfo": "Could not get the validator set: {reason}",
    "footer": "Dangan · distributed storage for government documents",
  },
};

const KEY = "dangan.lang";
let lang = "zh-CN";
try {
  const saved = localStorage.getItem(KEY);
  if (saved && saved in STRINGS) lang = saved;
} catch {
  // Storage may be unavailable (private mode): Chinese stays the default.
}

export function currentLang() {
  return lang;
}

export function t(key, vars = {}) {
  const s = STRINGS[lang][key] ?? STRINGS["zh-CN"][key] ?? key;
  return s.replace(/\{(\w+)\}/g, (_, v) => String(vars[v] ?? ""));
}

const listeners = [];
export function onLanguageChange(f) {
  listeners.push(f);
}

export function applyLanguage(root = document) {
  document.documentElement.lang = lang;
  for (const el of root.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of root.querySelectorAll("[data-i18n-placeholder]")) el.placeholder = t(el.dataset.i18nPlaceholder);
  document.title = t(document.body.dataset.titleKey);
  for (const f of listeners) f();
}

export function setLanguage(next) {
  lang = next in STRINGS ? next : "zh-CN";
  try {
    localStorage.setItem(KEY, lang);
  } catch {
    // Not kept across visits then.
  }
  applyLanguage();
}

/** Wires the toggle button (`#lang`) and translates the page. */
export function initLanguage() {
  const q = new URLSearchParams(location.search).get("lang");
  if (q && q in STRINGS) lang = q;
  document.getElementById("lang").addEventListener("click", () => setLanguage(lang === "en" ? "zh-CN" : "en"));
  applyLanguage();
}

export function formatSize(n) {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

export function formatTime(ms) {
  return new Date(ms).toLocaleString(lang, { dateStyle: "medium", timeStyle: "short" });
}
