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
