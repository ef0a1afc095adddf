// Small helpers shared by the modules (no state, no side effects).

/** `n` random bytes as lowercase hex (crypto-strength; ids never collide in practice). */
export function randomHex(n) {
  const bytes = crypto.getRandomValues(new Uint8Array(n));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export const newSessionId = () => `s_${randomHex(8)}`;
export const newQueueId = () => `q_${randomHex(8)}`;

/** document.getElementById, shorter. */
export const $ = (id) => document.getElementById(id);

/** Create an element: el("div", {className: "x", dataset: {testid: "y"}}, child, "text"). */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key === "attrs") for (const [a, v] of Object.entries(value)) node.setAttribute(a, v);
    else if (key === "on") for (const [evt, fn] of Object.entries(value)) node.addEventListener(evt, fn);
    else node[key] = value;
  }
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child); // strings become text nodes: never parsed as HTML
  }
  return node;
}

/** "just now", "5 min ago", "3 h ago", "yesterday", or a date. */
export function relativeTime(epochSeconds, now = Date.now() / 1000) {
  if (typeof epochSeconds !== "number" || !Number.isFinite(epochSeconds)) return "";
  const s = Math.max(0, now - epochSeconds);
  if (s < 45) return "just now";
  if (s < 3600) return `${Math.max(1, Math.round(s / 60))} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  if (s < 2 * 86400) return "yesterday";
  if (s < 7 * 86400) return `${Math.floor(s / 86400)} days ago`;
  return new Date(epochSeconds * 1000).toLocaleDateString();
}

/** 1234 → "1.2k", 1500000 → "1.5M". */
export function compactNumber(n) {
  if (typeof n !== "number" || !Number.isFinite(n)) return "–";
  const abs = Math.abs(n);
  if (abs < 1000) return String(Math.round(n));
  if (abs < 1e6) return `${(n / 1e3).toFixed(abs < 1e4 ? 1 : 0)}k`;
  return `${(n / 1e6).toFixed(abs < 1e7 ? 1 : 0)}M`;
}

export const isNumber = (v) => typeof v === "number" && Number.isFinite(v);

/**
 * Markdown as one line of plain text (previews from a server that sends them raw): code fences,
 * headings, quotes, list markers and emphasis taken out, links and images as their text.
 */
export function plainText(markdown) {
  if (typeof markdown !== "string") return "";
  return markdown
    .replace(/^\s{0,3}(`{3,}|~{3,}).*$/gm, "")
    .replace(/^\s{0,3}#{1,6}\s+/gm, "")
    .replace(/^\s{0,3}(>\s?)+/gm, "")
    .replace(/^\s*([-*+]|\d{1,9}[.)])\s+/gm, "")
    .replace(/!\[([^\]]*)\]\([^)]*\)/g, "$1")
    .replace(/\[([^\]]+)\]\([^)]*\)/g, "$1")
    .replace(/(`+)(.+?)\1/g, "$2")
    .replace(/(\*\*|__)(?=\S)(.+?)(?<=\S)\1/g, "$2")
    .replace(/~~(?=\S)(.+?)(?<=\S)~~/g, "$1")
    .replace(/(^|[^\w*])\*(?=\S)(.+?)(?<=\S)\*(?![\w*])/g, "$1$2")
    .replace(/(^|[^\w_])_(?=\S)(.+?)(?<=\S)_(?![\w_])/g, "$1$2")
    .replace(/\s+/g, " ")
    .trim();
}
