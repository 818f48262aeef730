// Files in the conversation: the Attach file button, dropping files on the conversation and
// pasting images; the cards messages show for their files (image previews, name, size,
// Download), progress bars with Cancel, and the full-size image viewer. DOM only: the
// transfers themselves are main.js's, through attachments.js.

import { describeSize, isInlineImage, safeFileName } from "../attachments.js";
import { el } from "./dom.js";

// Received images up to this size load by themselves; larger ones wait for a click.
const AUTO_LOAD_BYTES = 10 * 1024 * 1024;
const REVOKE_DOWNLOAD_MS = 60_000;
const STICKY_PX = 48; // as the timeline: this close to the bottom counts as "at the bottom"

function percent(done, total) {
  return total ? Math.min(100, Math.floor((100 * done) / total)) : 0;
}

export function createAttachments(parts, doc = document) {
  const listeners = [];
  const uploads = new Map(); // localId -> card controls
  let fetchFile = null; // (ref, {onProgress, signal, room}) -> Promise<Blob>, from main.js
  let viewer = null;

  /** Run a change that makes a message taller; a log that was at the bottom stays there. */
  function grow(change) {
    const log = parts.messages;
    const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < STICKY_PX;
    change();
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  const give = (files) => {
    const list = [...files];
    if (list.length) for (const fn of listeners) fn(list);
  };

  // -- choosing files ---------------------------------------------------------------------

  parts.attachButton.addEventListener("mousedown", (event) => event.preventDefault()); // keep the keyboard up
  parts.attachButton.addEventListener("click", () => parts.attachInput.click());
  parts.attachInput.addEventListener("change", () => {
    give(parts.attachInput.files);
    parts.attachInput.value = ""; // the same file again is a new choice
  });

  const conversation = parts.conversation;
  const carriesFiles = (event) => [...(event.dataTransfer?.types ?? [])].includes("Files");
  let depth = 0;
  conversation.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event) || parts.attachButton.hidden) return;
    event.preventDefault();
    depth += 1;
    conversation.classList.add("dropping");
  });
  conversation.addEventListener("dragover", (event) => {
    if (!carriesFiles(event) || parts.attachButton.hidden) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "copy";
  });
  conversation.addEventListener("dragleave", () => {
    depth = Math.max(0, depth - 1);
    if (!depth) conversation.classList.remove("dropping");
  });
  conversation.addEventListener("drop", (event) => {
    depth = 0;
    conversation.classList.remove("dropping");
    if (!carriesFiles(event) || parts.attachButton.hidden) return;
    event.preventDefault();
    give(event.dataTransfer.files);
  });
  conversation.addEventListener("paste", (event) => {
    const files = [...(event.clipboardData?.files ?? [])];
    if (!files.length || parts.attachButton.hidden) return; // text pastes as text
    event.preventDefault();
    give(files);
  });

  // -- cards ------------------------------------------------------------------------------

  function caption(ref) {
    const line = el("p", "file-meta");
    line.append(el("span", "file-name", ref.name), el("span", "file-size", describeSize(ref.size)));
    return line;
  }

  /** A progress bar with Cancel; returns its controls. */
  function transferRow(card, verb, onCancel) {
    const row = el("div", "transfer");
    const bar = el("progress");
    bar.max = 100;
    bar.value = 0;
    const label = el("span", "transfer-text", `${verb}…`);
    label.setAttribute("aria-live", "polite");
    const cancel = el("button", "small quiet", "Cancel");
    cancel.type = "button";
    cancel.addEventListener("click", onCancel);
    bar.setAttribute("aria-label", `${verb} ${card.dataset.name}`);
    row.append(bar, label, cancel);
    grow(() => card.append(row));
    return {
      progress(done, total) {
        bar.value = percent(done, total);
        label.textContent = `${verb}… ${percent(done, total)} % of ${describeSize(total)}`;
      },
      remove() {
        row.remove();
      },
    };
  }

  function warn(card, text) {
    card.querySelector(".file-warning")?.remove();
    const line = el("p", "file-warning", `⚠ ${text}`);
    line.setAttribute("role", "note");
    grow(() => card.append(line));
    card.dataset.state = "failed";
  }

  function saveBlob(blob, name) {
    const url = URL.createObjectURL(blob);
    const link = el("a");
    link.href = url;
    link.download = safeFileName(name);
    link.hidden = true;
    doc.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), REVOKE_DOWNLOAD_MS);
  }

  function openViewer(url, ref, blob) {
    if (!viewer) {
      viewer = el("dialog", "viewer");
      viewer.setAttribute("aria-label", "Image");
      const image = el("img", "viewer-image");
      const bar = el("div", "viewer-bar");
      const name = el("span", "viewer-name");
      const download = el("button", "small", "Download");
      download.type = "button";
      const close = el("button", "small primary", "Close");
      close.type = "button";
      close.addEventListener("click", () => viewer.close());
      viewer.addEventListener("click", (event) => {
        if (event.target === viewer) viewer.close(); // a click on the backdrop
      });
      bar.append(name, download, close);
      viewer.append(image, bar);
      doc.body.append(viewer);
    }
    const image = viewer.querySelector(".viewer-image");
    image.src = url;
    image.alt = ref.name;
    viewer.querySelector(".viewer-name").textContent = `${ref.name} · ${ref.width ?? "?"}×${ref.height ?? "?"}`;
    viewer.setAttribute("aria-label", `Image ${ref.name}`);
    viewer.querySelector(".viewer-bar button").onclick = () => saveBlob(blob, ref.name);
    viewer.showModal();
  }

  function showImage(card, blob, ref) {
    const url = URL.createObjectURL(blob);
    const open = el("button", "image-open");
    open.type = "button";
    open.setAttribute("aria-label", `Open ${ref.name} full size`);
    const image = el("img", "preview");
    image.alt = ref.name;
    if (ref.width && ref.height) {
      image.width = ref.width;
      image.height = ref.height;
    }
    image.decoding = "async";
    const log = parts.messages;
    const stick = log.scrollHeight - log.scrollTop - log.clientHeight < STICKY_PX;
    image.addEventListener("load", () => {
      if (stick && card.isConnected) log.scrollTop = log.scrollHeight;
    }, { once: true });
    image.src = url;
    image.addEventListener("error", () => {
      open.remove();
      warn(card, "This image could not be displayed.");
    }, { once: true });
    open.addEventListener("click", () => openViewer(url, ref, blob));
    open.append(image);
    card.querySelector(".placeholder")?.remove();
    card.prepend(open);
    card.dataset.state = "ready";
  }

  /** Fetch a received file (through its room's session); `then(blob)` runs only for a file
   *  that passed every check. */
  function fetchInto(card, ref, room, verb, then, after = () => {}) {
    card.querySelector(".file-warning")?.remove();
    const controller = new AbortController();
    const row = transferRow(card, verb, () => controller.abort());
    card.dataset.state = "loading";
    fetchFile(ref, { onProgress: (done, total) => row.progress(done, total), signal: controller.signal, room })
      .then((blob) => {
        row.remove();
        card.dataset.state = "ready";
        then(blob);
      })
      .catch((err) => {
        row.remove();
        if (err?.code === "cancelled") {
          card.dataset.state = "idle";
          return;
        }
        warn(card, err?.message ?? String(err));
      })
      .finally(after);
  }

  function receivedCard(ref, room) {
    const card = el("div", isInlineImage(ref) ? "file-card image" : "file-card file");
    card.dataset.name = ref.name;
    card.dataset.state = "idle";
    card.append(caption(ref));
    if (isInlineImage(ref)) {
      const placeholder = el("div", "placeholder");
      if (ref.width && ref.height) placeholder.style.aspectRatio = `${ref.width} / ${ref.height}`;
      card.prepend(placeholder);
      const load = () => fetchInto(card, ref, room, "Loading image", (blob) => showImage(card, blob, ref));
      if (ref.size <= AUTO_LOAD_BYTES) {
        queueMicrotask(load);
      } else {
        const button = el("button", "small", "Show image");
        button.type = "button";
        button.addEventListener("click", () => {
          button.remove();
          load();
        });
        placeholder.append(button);
      }
      return card;
    }
    const download = el("button", "small download", "Download");
    download.type = "button";
    download.addEventListener("click", () => {
      download.disabled = true;
      fetchInto(card, ref, room, "Downloading", (blob) => saveBlob(blob, ref.name), () => { download.disabled = false; });
    });
    card.querySelector(".file-meta").append(download);
    return card;
  }

  /** Our own file: shown from the local copy, never fetched back. */
  function localCard(file, ref) {
    const card = el("div", isInlineImage(ref) ? "file-card image" : "file-card file");
    card.dataset.name = ref.name;
    card.dataset.state = "ready";
    card.append(caption(ref));
    if (isInlineImage(ref)) {
      showImage(card, file, ref);
    }
    return card;
  }

  return {
    attachments: {
      /** Offer attaching (the welcome says whether and how large); hidden when off. */
      enable(on) {
        parts.attachButton.hidden = !on;
      },
      onFiles(fn) {
        listeners.push(fn);
      },
      setFetcher(fn) {
        fetchFile = fn;
      },

      /** The cards of a message's files in `room`; `local` maps a ref to the File it was sent from. */
      render(files, { local = null, room = null } = {}) {
        const box = el("div", "files");
        for (const ref of files) box.append(local?.get(ref) ? localCard(local.get(ref), ref) : receivedCard(ref, room));
        return box;
      },

      /** The card of a file we send, shown from the local copy; uploadStart() adds its bar. */
      uploadCard(localId, file, ref) {
        const card = localCard(file, ref);
        uploads.set(localId, { card, row: null });
        const box = el("div", "files");
        box.append(card);
        return box;
      },
      uploadStart(localId, onCancel) {
        const upload = uploads.get(localId);
        if (!upload) return;
        upload.card.querySelector(".file-warning")?.remove();
        upload.row?.remove();
        upload.row = transferRow(upload.card, "Uploading", onCancel);
        upload.card.dataset.state = "loading";
      },
      uploadProgress(localId, done, total) {
        uploads.get(localId)?.row?.progress(done, total);
      },
      uploadDone(localId) {
        const upload = uploads.get(localId);
        if (!upload) return;
        upload.row?.remove();
        upload.card.dataset.state = "ready";
        uploads.delete(localId);
      },
      uploadFailed(localId, text) {
        const upload = uploads.get(localId);
        if (!upload) return;
        upload.row?.remove();
        upload.row = null;
        warn(upload.card, text);
      },
      forget(localId) {
        uploads.delete(localId);
      },
    },
  };
}
