// How names are compared (docs/PROTOCOL.md §5): confusable skeletons and script sets (UTS #39).
// The same data and rules as securechat/names on the server: names-data.js is generated from
// Unicode's confusables.txt and Scripts/ScriptExtensions by `python -m securechat.names.generate`.

import DATA from "./names-data.js";

const PROTOTYPES = new Map(Object.entries(DATA.prototypes));
const SCRIPT_STARTS = DATA.scripts.map(([start]) => start);
const EXTENSION_STARTS = DATA.extensions.map(([start]) => start);

// UTS #39 §5.1: a Han character also counts as Japanese, Korean and Han-with-Bopomofo, etc.
const AUGMENT = { Hani: ["Hanb", "Jpan", "Kore"], Hira: ["Jpan"], Kana: ["Jpan"], Hang: ["Kore"], Bopo: ["Hanb"] };
const ANY = new Set(["Zyyy", "Zinh"]); // Common, Inherited: go with any script
const WITH_LATIN = ["Jpan", "Kore", "Hanb"]; // "highly restrictive" (§5.2) allows Latin beside these
const SCRIPT_NAMES = {
  Latn: "Latin", Cyrl: "Cyrillic", Grek: "Greek", Armn: "Armenian", Hebr: "Hebrew", Arab: "Arabic",
  Cher: "Cherokee", Geor: "Georgian", Hani: "Han", Hira: "Hiragana", Kana: "Katakana",
  Hang: "Hangul", Deva: "Devanagari", Thai: "Thai",
};

/** UTS #39 §4: NFD, every character replaced by its prototype, NFD again. */
export function skeleton(text) {
  let mapped = "";
  for (const char of text.normalize("NFD")) mapped += PROTOTYPES.get(char) ?? char;
  return mapped.normalize("NFD");
}

/** [skeleton of the lowercased name, skeleton of the name]: equal in either means alike. */
export function nameKeys(name) {
  return [skeleton(name.toLowerCase()), skeleton(name)];
}

export function confusable(a, b) {
  const [x, y] = [nameKeys(a), nameKeys(b)];
  return x[0] === y[0] || x[1] === y[1];
}

function lastAtOrBefore(starts, point) {
  let lo = 0;
  let hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (starts[mid] <= point) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** The Script_Extensions of one character, as four-letter script codes. */
export function scriptsOf(char) {
  const point = char.codePointAt(0);
  let value = DATA.extensions[lastAtOrBefore(EXTENSION_STARTS, point)][1];
  if (value === null) value = DATA.scripts[lastAtOrBefore(SCRIPT_STARTS, point)][1];
  return new Set(value.split(" "));
}

function augmented(scripts) {
  for (const s of scripts) if (ANY.has(s)) return null; // null: every script
  const out = new Set(scripts);
  for (const s of scripts) for (const extra of AUGMENT[s] ?? []) out.add(extra);
  return out;
}

/** UTS #39 §5.1: the scripts every character belongs to; null means any script. */
export function resolvedScripts(text) {
  let result = null;
  for (const char of text) {
    const scripts = augmented(scriptsOf(char));
    if (scripts === null) continue;
    result = result === null ? scripts : new Set([...result].filter((s) => scripts.has(s)));
  }
  return result;
}

/** Why `name` mixes scripts, or null. Same wording as the server's. */
export function scriptProblem(name) {
  const resolved = resolvedScripts(name);
  if (resolved === null || resolved.size) return null;
  const rest = resolvedScripts([...name].filter((c) => !scriptsOf(c).has("Latn")).join(""));
  if (rest === null || WITH_LATIN.some((s) => rest.has(s))) return null;
  const seen = [];
  for (const char of name) {
    for (const script of [...scriptsOf(char)].filter((s) => !ANY.has(s)).sort()) {
      const label = SCRIPT_NAMES[script] ?? script;
      if (!seen.includes(label)) seen.push(label);
    }
  }
  return `the name mixes scripts (${seen.slice(0, 3).join(" and ")}), which lets it imitate another name`;
}
