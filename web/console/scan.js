// The console's QR scanner: reads a citizen's grant address from a picture (a photo, or a
// screenshot of the portal's QR code) or from the camera, with the `qr` package (pinned in
// web/package-lock.json, bundled by web/build.sh into /assets/scan.js; nothing is fetched
// at run time). It plugs into the console as `window.danganScanGrantAddress`: a function
// returning a Promise of the decoded text, rejected with a ScanError whose `code` is
// `cancelled`, `not_image`, `no_code` or `no_camera` (console.js words them).
import decodeQR from "qr/decode.js";
import { QRCanvas, frameLoop, rearCamera } from "qr/dom.js";

const $ = (id) => document.getElementById(id);

export class ScanError extends Error {
  constructor(code, detail) {
    super(detail ? `${code}: ${detail}` : code);
    this.code = code;
  }
}

/** The text of the QR code in an image file (any format the browser decodes). */
export async function decodeImageFile(file) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file);
  } catch (e) {
    throw new ScanError("not_image", e?.message);
  }
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  const pixels = ctx.getImageData(0, 0, canvas.width, canvas.height);
  try {
    // A still picture: every retry the decoder has (a camera frame gets one frame's budget).
    return decodeQR(pixels, { effort: Infinity, timeLimit: Infinity });
  } catch (e) {
    throw new ScanError("no_code", e?.message);
  }
}

let pending = null; // { resolve, reject } of the scan in progress
let camera = null;
let stopLoop = null;

function stopCamera() {
  if (stopLoop) stopLoop();
  stopLoop = null;
  if (camera) camera.stop();
  camera = null;
  $("scan-video").hidden = true;
}

function finish(error, text) {
  const p = pending;
  pending = null;
  stopCamera();
  $("scanner").hidden = true;
  $("scan-file").value = "";
  if (!p) return;
  if (error) p.reject(error);
  else p.resolve(text);
}

async function startCamera() {
  const video = $("scan-video");
  try {
    camera = await rearCamera(video);
  } catch (e) {
    finish(new ScanError("no_camera", e?.message));
    return;
  }
  video.hidden = false;
  const canvas = new QRCanvas();
  let busy = false;
  stopLoop = frameLoop(async () => {
    if (busy || !camera) return;
    busy = true;
    try {
      const text = await camera.readFrame(canvas);
      if (typeof text === "string" && pending) finish(null, text);
    } catch (e) {
      // A frame without a code: wait for the next one.
    } finally {
      busy = false;
    }
  });
}

function open() {
  if (pending) pending.reject(new ScanError("cancelled"));
  return new Promise((resolve, reject) => {
    pending = { resolve, reject };
    $("scanner").hidden = false;
    // Cameras need a secure context (HTTPS or localhost) and a browser that offers them.
    $("scan-camera").hidden = !(window.isSecureContext && navigator.mediaDevices?.getUserMedia);
    $("scanner").scrollIntoView({ block: "nearest" });
  });
}

function wire() {
  $("scan-file").addEventListener("change", async () => {
    const file = $("scan-file").files[0];
    if (!file) return;
    try {
      finish(null, await decodeImageFile(file));
    } catch (e) {
      finish(e instanceof ScanError ? e : new ScanError("no_code", e?.message));
    }
  });
  $("scan-camera").addEventListener("click", startCamera);
  $("scan-cancel").addEventListener("click", () => finish(new ScanError("cancelled")));
  window.danganScanGrantAddress = open;
}

if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire);
else wire();
