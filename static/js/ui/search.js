// Search across this device's history: a dialog with a search box and results that jump to
// the message in its conversation. The searching itself is history.js's (all client-side).

import { el } from "./dom.js";

const TYPING_PAUSE_MS = 120;
const WHEN = { year: "numeric", month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" };

/**
 * `search(query)` -> {results, total, locked}; `onOpen(result)` shows a result in context;
 * `onUnlock()` asks for the passphrase (history locked).
 */
export function createSearch(parts, { search, onOpen, onUnlock }) {
  let timer = null;
  let asked = 0; // answers to older queries are dropped

  function resultItem(result) {
    const { record } = result;
    const item = el("li", "search-result");
    const open = el("button", "search-hit");
    open.type = "button";
    const head = el("span", "search-head");
    head.append(el("span", "sender", record.sender), el("span", "search-room", `#${record.room}`));
    const when = el("time", "time", new Date(record.ts).toLocaleString([], WHEN));
    when.dateTime = new Date(record.ts).toISOString();
    head.append(when);
    const excerpt = el("span", "search-snippet");
    for (const segment of result.segments) {
      excerpt.append(segment.hit ? el("mark", "", segment.text) : document.createTextNode(segment.text));
    }
    if (!result.segments.length) excerpt.append(el("span", "hint", "(matched the sender or a file name)"));
    open.append(head, excerpt);
    open.addEventListener("click", () => {
      parts.searchDialog.close();
      onOpen(result);
    });
    item.append(open);
    return item;
  }

  async function run() {
    const query = parts.searchQuery.value;
    const mine = ++asked;
    const answer = await search(query);
    if (mine !== asked) return;
    parts.searchUnlock.hidden = !answer.locked;
    if (answer.locked) {
      parts.searchResults.replaceChildren();
      parts.searchStatus.textContent = "History on this device is locked. Unlock it to search.";
      return;
    }
    parts.searchResults.replaceChildren(...answer.results.map(resultItem));
    if (!query.trim()) {
      parts.searchStatus.textContent = "Type words to find in the messages this device kept.";
    } else if (!answer.total) {
      parts.searchStatus.textContent = "No message on this device matches.";
    } else if (answer.total > answer.results.length) {
      parts.searchStatus.textContent = `The newest ${answer.results.length} of ${answer.total} matches: add words to narrow it.`;
    } else {
      parts.searchStatus.textContent = answer.total === 1 ? "1 match" : `${answer.total} matches`;
    }
  }

  parts.searchQuery.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(run, TYPING_PAUSE_MS);
  });
  // Enter runs the search at once (and must not submit or close anything).
  parts.searchQuery.addEventListener("keydown", (event) => {
    if (event.key !== "Enter") return;
    event.preventDefault();
    clearTimeout(timer);
    run();
  });
  parts.searchClose.addEventListener("click", () => parts.searchDialog.close());
  parts.searchUnlock.addEventListener("click", () => {
    parts.searchDialog.close();
    onUnlock();
  });

  return {
    search: {
      open() {
        parts.searchDialog.showModal();
        parts.searchQuery.select();
        parts.searchQuery.focus();
        run();
      },
    },
  };
}
