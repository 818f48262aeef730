// Small DOM helpers shared by the panels. Text from the network only ever goes through
// textContent, never innerHTML.

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

export function timeElement(ts) {
  const date = new Date(ts);
  const node = el("time", "time", date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" }));
  node.dateTime = date.toISOString();
  node.title = date.toLocaleString();
  return node;
}

/** Put `text` on the clipboard; true when it worked. */
export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    return false; // no permission or no clipboard (an http page): the caller says so
  }
}

/** A Copy button: says "Copied" for a moment, or that copying failed. */
export function wireCopy(button, getText) {
  const label = button.textContent;
  let timer = null;
  button.addEventListener("click", async () => {
    const ok = await copyText(getText());
    button.textContent = ok ? "Copied" : "Copy failed";
    clearTimeout(timer);
    timer = setTimeout(() => { button.textContent = label; }, 2000);
  });
  return button;
}
