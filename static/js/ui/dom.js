// Small DOM helpers shared by the panels. Text from the network only ever goes through
// textContent (or becomes the href of a checked http(s) link), never innerHTML.

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function button(text, className = "small", label = null) {
  const node = el("button", className, text);
  node.type = "button";
  if (label) node.setAttribute("aria-label", label);
  return node;
}

const FULL_DATE = { weekday: "long", year: "numeric", month: "long", day: "numeric",
  hour: "2-digit", minute: "2-digit", second: "2-digit" };

/** The time of day on screen; the full date and time as a tooltip and for screen readers. */
export function timeElement(ts) {
  const date = new Date(ts);
  const node = el("time", "time");
  node.dateTime = date.toISOString();
  node.title = date.toLocaleString([], FULL_DATE);
  const short = el("span", "", date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  short.setAttribute("aria-hidden", "true");
  node.append(short, el("span", "visually-hidden", node.title));
  return node;
}

/** "Today", "Yesterday" or the date, for the separators between days. */
export function dayLabel(ts, now = Date.now()) {
  const day = new Date(ts);
  const today = new Date(now);
  const key = (d) => `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
  if (key(day) === key(today)) return "Today";
  const yesterday = new Date(today.getFullYear(), today.getMonth(), today.getDate() - 1);
  if (key(day) === key(yesterday)) return "Yesterday";
  return day.toLocaleDateString([], { weekday: "long", year: "numeric", month: "long", day: "numeric" });
}

export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

// A URL starts with http:// or https:// and runs to the next space; trailing punctuation that
// usually ends a sentence is not part of it. Nothing else in a message is ever interpreted.
const URL_CANDIDATE = /\bhttps?:\/\/[^\s<>"'`]+/gi;
const TRAILING = /[.,;:!?'"»”’]+$/;

function trimUrl(candidate) {
  let url = candidate.replace(TRAILING, "");
  // "(see https://x.org/a)" keeps its closing parenthesis out, "https://x.org/a_(b)" keeps it in.
  while (url.endsWith(")") && (url.match(/\(/g) ?? []).length < (url.match(/\)/g) ?? []).length) {
    url = url.slice(0, -1).replace(TRAILING, "");
  }
  return url;
}

/** `text` as text nodes and <a> elements for its http(s) URLs (new tab, no opener/referrer). */
export function linkify(text) {
  const fragment = document.createDocumentFragment();
  let last = 0;
  for (const match of text.matchAll(URL_CANDIDATE)) {
    const candidate = trimUrl(match[0]);
    let url;
    try {
      url = new URL(candidate);
    } catch {
      continue;
    }
    if (url.protocol !== "https:" && url.protocol !== "http:") continue;
    fragment.append(text.slice(last, match.index));
    const link = el("a", "", candidate);
    link.href = url.href;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    fragment.append(link);
    last = match.index + candidate.length;
  }
  fragment.append(text.slice(last));
  return fragment;
}

/** Put `text` on the clipboard; true when it worked. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false; // no permission or no clipboard: the caller says so
  }
}

/** A Copy button: says "Copied" for a moment, or that copying failed. */
export function wireCopy(node, getText) {
  const label = node.textContent;
  let timer = null;
  node.addEventListener("click", async () => {
    const ok = await copyText(getText());
    node.textContent = ok ? "Copied" : "Copy failed";
    clearTimeout(timer);
    timer = setTimeout(() => { node.textContent = label; }, 2000);
  });
  return node;
}
