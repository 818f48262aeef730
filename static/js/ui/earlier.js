// "Earlier on this device": the messages this browser kept, shown above the live conversation
// after a reload, with the same look as live ones (ui/message.js), the trust and delivery
// they had at the time, and a way to jump to one of them from search.

import { dayKey, dayLabel, el } from "./dom.js";
import { GROUP_MS, highlight, messageArticle, showDelivery, showTrust } from "./message.js";

export const EARLIER_TITLE = "Earlier on this device";
// Rendered at first; older ones come with "Show earlier messages" (or a search jump).
const PAGE = 300;

/** `onRetry(entry)`: send a kept message again that the page closed on before it was confirmed. */
export function createEarlier(parts, { onRetry, renderFiles = () => null }) {
  const log = parts.messages;
  let section = null;
  let body = null;
  let more = null;
  let entries = [];
  let from = 0; // entries[from..] are rendered

  function article({ seq, record }, previous) {
    const mine = record.kind === "sent";
    const grouped = previous !== null && previous.kind === record.kind && previous.sender === record.sender
      && previous.fingerprint === record.fingerprint && record.ts - previous.ts < GROUP_MS
      && dayKey(previous.ts) === dayKey(record.ts);
    // Kept file references open from the server again (any session of the room may fetch them).
    const files = record.attachments ?? [];
    const node = messageArticle({ username: record.sender, ts: record.ts, text: record.text, mine,
      fingerprint: mine ? null : record.fingerprint, grouped,
      filesNode: files.length ? renderFiles({ files, mine: false, localId: null }) : null });
    node.dataset.seq = String(seq);
    if (mine) {
      showDelivery(node, record.delivery ?? { state: "delivered" }, () => onRetry({ seq, record }));
    } else {
      showTrust(node, { username: record.sender, trust: record.trust, verified: record.verified });
    }
    return node;
  }

  function render() {
    const nodes = [];
    let day = null;
    let previous = null;
    for (const entry of entries.slice(from)) {
      const key = dayKey(entry.record.ts);
      if (key !== day) {
        day = key;
        previous = null;
        const divider = el("h4", "day-divider");
        divider.append(el("span", "", dayLabel(entry.record.ts)));
        nodes.push(divider);
      }
      nodes.push(article(entry, previous));
      previous = entry.record;
    }
    body.replaceChildren(...nodes);
    more.hidden = from === 0;
    more.textContent = `Show earlier messages (${from})`;
  }

  function clear() {
    section?.remove();
    section = null;
    entries = [];
  }

  return {
    earlier: {
      /** Show `list` ({seq, record}, oldest first) above everything else in the log; the time of its last one. */
      show(list) {
        clear();
        if (!list.length) return null;
        entries = list;
        from = Math.max(0, entries.length - PAGE);
        section = el("section", "earlier");
        section.setAttribute("aria-label", EARLIER_TITLE);
        const divider = el("h3", "earlier-divider");
        divider.append(el("span", "", EARLIER_TITLE));
        more = el("button", "small quiet earlier-more");
        more.type = "button";
        more.addEventListener("click", () => {
          const height = log.scrollHeight;
          from = Math.max(0, from - PAGE);
          render();
          log.scrollTop += log.scrollHeight - height; // keep the reader where they were
        });
        body = el("div", "earlier-body");
        section.append(divider, more, body);
        render();
        log.prepend(section);
        log.scrollTop = log.scrollHeight;
        return entries[entries.length - 1].record.ts;
      },

      /** Scroll to kept message `seq` and mark it; false when it is not in this conversation. */
      reveal(seq) {
        const index = entries.findIndex((e) => e.seq === seq);
        if (index === -1) return false;
        if (index < from) {
          from = Math.max(0, index - 20);
          render();
        }
        const node = body.querySelector(`[data-seq="${seq}"]`);
        if (!node) return false;
        highlight(node);
        return true;
      },

      remove(seq) {
        const index = entries.findIndex((e) => e.seq === seq);
        if (index === -1) return;
        if (index < from) from -= 1;
        entries.splice(index, 1);
        if (!entries.length) clear();
        else render();
      },

      clear,
    },
  };
}
