// Sending and fetching encrypted files (docs/PROTOCOL.md §10): encrypt + hash + upload in parts,
// download + hash + decrypt, with progress and cancel. No DOM: `fetch` is injectable, so node
// tests drive it against a fake server. The page (ui/attachments.js) shows what happens.

import { b64decode } from "./crypto.js";
import { FileCryptoError, BlobHasher, Decryptor, blobSize, encryptBlob, newFileKey } from "./filecrypto.js";

export const PART_BYTES = 1024 * 1024; // blob bytes per PATCH (the server takes up to 4 MiB)
// Shown inline only for raster types the browser decodes itself; never SVG (it can carry script
// and, opened from a blob: URL, would run in this page's origin).
export const INLINE_IMAGE_TYPES = new Set(["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif",
  "image/bmp"]);
const MIME_TYPE = /^[a-z0-9][a-z0-9!#$&^_.+-]*\/[a-z0-9][a-z0-9!#$&^_.+-]*$/;
const MAX_NAME = 255;

/** Why a transfer stopped. code: cancelled, too_large, quota_exceeded, ..., or a §10.7 code. */
export class AttachmentError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "AttachmentError";
    this.code = code;
  }
}

const VERIFY_TEXT = {
  bad_header: "it is not a securechat file",
  truncated: "it was cut off",
  bad_chunk: "it was altered (chunks changed, swapped, dropped or added)",
  bad_hash: "the server sent a different file than the message names",
  bad_size: "it is not the size the message says",
};

/** 1536 -> "1.5 KiB", as `securechat blobs` prints sizes. */
export function describeSize(bytes) {
  let size = bytes;
  for (const unit of ["B", "KiB", "MiB", "GiB"]) {
    if (size < 1024 || unit === "GiB") return unit === "B" ? `${size} B` : `${size.toFixed(1)} ${unit}`;
    size /= 1024;
  }
  return `${bytes} B`;
}

/** The error to show before anything is uploaded, or null. */
export function limitProblem(file, maxBytes) {
  if (!Number.isSafeInteger(maxBytes) || maxBytes <= 0) return "This server does not take files.";
  if (file.size > maxBytes) {
    return `“${displayName(file.name)}” is ${describeSize(file.size)}; files can be at most ${describeSize(maxBytes)} here.`;
  }
  return null;
}

function displayName(name) {
  const chars = [...String(name || "file")];
  return chars.length > 60 ? `${chars.slice(0, 57).join("")}…` : chars.join("");
}

/** What the reference says the file is called: the file's own name, at most 255 code points. */
export function fileName(file, fallback = "file") {
  const name = String(file.name || fallback).replace(/[\u0000-\u001f\u007f]/g, "").trim() || fallback;
  const chars = [...name];
  if (chars.length <= MAX_NAME) return name;
  const dot = name.lastIndexOf(".");
  const ext = dot > 0 && name.length - dot <= 16 ? name.slice(dot) : "";
  return chars.slice(0, MAX_NAME - [...ext].length).join("") + ext;
}

export function fileType(file) {
  const type = String(file.type || "").toLowerCase().split(";")[0].trim();
  return MIME_TYPE.test(type) && type.length <= 127 ? type : "application/octet-stream";
}

/** A name safe to save under: no path separators or control characters, never empty. */
export function safeFileName(name) {
  const cleaned = String(name).replace(/[\u0000-\u001f\u007f/\\:*?"<>|]/g, "_").replace(/^\.+/, "_").trim();
  return cleaned || "file";
}

export function isInlineImage(ref) {
  return INLINE_IMAGE_TYPES.has(ref.type);
}

/** Pixel size of an image file, or null when this browser cannot decode it. */
export async function imageSize(file, decode = globalThis.createImageBitmap) {
  if (!INLINE_IMAGE_TYPES.has(fileType(file)) || typeof decode !== "function") return null;
  try {
    const bitmap = await decode(file);
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close?.();
    return size.width >= 1 && size.width <= 65535 && size.height >= 1 && size.height <= 65535 ? size : null;
  } catch {
    return null;
  }
}

async function failure(response) {
  let answer = null;
  try {
    answer = await response.json();
  } catch {
    answer = null;
  }
  const code = answer?.error ?? `http_${response.status}`;
  const text = {
    no_capability: "The connection to the chat dropped; send it again once you are back.",
    too_large: "The file is larger than this server takes.",
    quota_exceeded: "The server's storage for attachments is full; ask whoever runs it to make room.",
    no_space: "The server's disk is full.",
    rate_limited: "Too many files at once from this network; wait a minute.",
    too_many_uploads: "Wait for the files already uploading.",
    not_found: "The server no longer has this file (it was deleted after its retention time).",
  }[code] ?? answer?.message ?? `The server answered ${response.status}.`;
  return new AttachmentError(code, text);
}

function cancelled() {
  return new AttachmentError("cancelled", "Cancelled.");
}

/**
 * Encrypt `file` under a fresh key and upload it; resolves with its file reference (§10.4).
 * The file is read, encrypted, hashed and sent one part at a time, so it is never in memory
 * whole. token(): this session's capability, read per request (it changes with the session).
 */
export async function uploadFile(file, { token, fetch = globalThis.fetch, onProgress = () => {}, signal,
  dimensions = null, partBytes = PART_BYTES, base = "" } = {}) {
  const headers = () => ({ Authorization: `Bearer ${token()}` });
  const key = newFileKey();
  const total = blobSize(file.size);
  const call = async (url, init) => {
    if (signal?.aborted) throw cancelled();
    try {
      return await fetch(base + url, { ...init, signal });
    } catch (err) {
      if (signal?.aborted) throw cancelled();
      throw new AttachmentError("network", "The connection to the server broke off.");
    }
  };
  const start = await call("/api/blobs", { method: "POST", headers: { ...headers(), "Upload-Length": String(total) } });
  if (start.status !== 201) throw await failure(start);
  const { upload } = await start.json();
  const hasher = new BlobHasher();
  let sent = 0; // acknowledged by the server
  let queued = 0; // handed to a PATCH
  let answer = null;
  let inflight = null; // the one part on its way: the next is encrypted meanwhile
  let part = new Uint8Array(partBytes);
  let filled = 0;
  const patch = async (body, offset) => {
    // As a Blob: Chromium then streams the body from its blob store instead of copying the
    // bytes through the page (a Uint8Array body stalled the page ~0.1 s per MiB, measured).
    const response = await call(`/api/blobs/uploads/${upload}`, {
      method: "PATCH", headers: { ...headers(), "Upload-Offset": String(offset) }, body: new Blob([body]) });
    if (response.status !== 200 && response.status !== 201) throw await failure(response);
    sent = offset + body.length;
    answer = response;
    onProgress(sent, total);
  };
  const flush = async () => {
    const body = part.subarray(0, filled);
    await inflight; // parts go one at a time, in order
    inflight = patch(body, queued);
    queued += filled;
    part = new Uint8Array(partBytes); // the body in flight keeps its own buffer
    filled = 0;
  };
  try {
    onProgress(0, total);
    for await (const piece of encryptBlob(file, key)) {
      await hasher.update(piece);
      for (let at = 0; at < piece.length;) {
        const take = Math.min(piece.length - at, partBytes - filled);
        part.set(piece.subarray(at, at + take), filled);
        filled += take;
        at += take;
        if (filled === partBytes) await flush();
      }
      if (signal?.aborted) throw cancelled();
    }
    if (filled) await flush();
    await inflight;
  } catch (err) {
    inflight?.catch(() => {});
    // Free the server's reservation at once; an upload nobody continues lapses anyway.
    fetch(`${base}/api/blobs/uploads/${upload}`, { method: "DELETE", headers: headers() }).catch(() => {});
    throw err;
  } finally {
    part = null;
  }
  if (!answer || answer.status !== 201 || sent !== total) {
    throw new AttachmentError("bad_size", "The upload did not complete.");
  }
  const { id } = await answer.json();
  if (id !== (await hasher.hexdigest())) {
    throw new AttachmentError("bad_hash", "The server named the file by the wrong hash; it was not sent.");
  }
  const ref = { id, key, name: fileName(file), type: fileType(file), size: file.size };
  if (dimensions) Object.assign(ref, { width: dimensions.width, height: dimensions.height });
  return ref;
}

/**
 * Download, verify and decrypt a referenced file; resolves with a Blob only once every chunk
 * authenticated, the blob hash equals the reference's id and the size matches (§10.9).
 * Plaintext is gathered into the Blob as it comes, so the file is in memory once.
 */
export async function downloadFile(ref, { token, fetch = globalThis.fetch, onProgress = () => {}, signal,
  base = "" } = {}) {
  let response;
  try {
    response = await fetch(`${base}/api/blobs/${ref.id}`, { headers: { Authorization: `Bearer ${token()}` }, signal });
  } catch {
    if (signal?.aborted) throw cancelled();
    throw new AttachmentError("network", "The connection to the server broke off.");
  }
  if (response.status !== 200) throw await failure(response);
  const total = blobSize(ref.size);
  const hasher = new BlobHasher();
  // Keys arrive as in the plaintext (b64), from a message or from this device's history.
  const decryptor = await Decryptor.create(typeof ref.key === "string" ? b64decode(ref.key) : ref.key);
  const type = isInlineImage(ref) ? ref.type : "application/octet-stream";
  let blob = new Blob([], { type });
  let pending = [];
  let pendingBytes = 0;
  let received = 0;
  const keep = (chunks) => {
    for (const chunk of chunks) {
      pending.push(chunk);
      pendingBytes += chunk.length;
    }
    if (pendingBytes >= PART_BYTES) {
      blob = new Blob([blob, ...pending], { type });
      pending = [];
      pendingBytes = 0;
    }
  };
  try {
    const reader = response.body.getReader();
    for (;;) {
      let step;
      try {
        step = await reader.read();
      } catch {
        if (signal?.aborted) throw cancelled();
        throw new AttachmentError("network", "The connection to the server broke off.");
      }
      if (step.done) break;
      received += step.value.length;
      if (received > total) throw new AttachmentError("bad_size", verifyText("bad_size"));
      await hasher.update(step.value);
      keep(await decryptor.push(step.value));
      onProgress(received, total);
    }
    keep([await decryptor.finish()]);
  } catch (err) {
    if (err instanceof FileCryptoError) throw new AttachmentError(err.code, verifyText(err.code));
    throw err;
  }
  if ((await hasher.hexdigest()) !== ref.id) throw new AttachmentError("bad_hash", verifyText("bad_hash"));
  blob = new Blob([blob, ...pending], { type });
  if (blob.size !== ref.size) throw new AttachmentError("bad_size", verifyText("bad_size"));
  return blob;
}

function verifyText(code) {
  return `This file failed verification and was not opened: ${VERIFY_TEXT[code] ?? code}.`;
}

export function isVerificationFailure(err) {
  return err instanceof AttachmentError && err.code in VERIFY_TEXT;
}
