// Safe rendering of message text: a small Markdown subset built with DOM nodes only.
// Untrusted text only ever becomes text nodes (textContent / append of strings); nothing is
// parsed as HTML. Supported: ``` / ~~~ fenced code (an unclosed fence while streaming is code up
// to the end), headings, bullet and numbered lists, block quotes, rules, paragraphs (single
// newlines kept), inline `code`, **bold**, [links](https://…) and bare http(s) URLs.

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([^`\s]*)[^`]*$/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const RULE = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;

/** Replace the children of `container` with `text` rendered. */
export function renderRich(container, text) {
  container.replaceChildren(...blocks(String(text || "")));
}

function blocks(text) {
  const lines = text.replace(/\r\n?/g, "\n").split("\n");
  const out = [];
  let para = [];
  const flush = () => {
    if (para.length) out.push(paragraph(para.join("\n")));
    para = [];
  };
  for (let i = 0; i < lines.length; i += 1) {
    const line = lines[i];
    const fence = FENCE.exec(line);
    if (fence) {
      flush();
      const marker = fence[1];
      const body = [];
      i += 1;
      while (i < lines.length && !isClosingFence(lines[i], marker)) body.push(lines[i++]);
      out.push(codeBlock(body.join("\n"), fence[2]));
      continue;
    }
    if (!line.trim()) {
      flush();
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      flush();
      const level = Math.min(heading[1].length + 2, 6); // # → h3: headings inside a message
      out.push(withInline(document.createElement(`h${level}`), heading[2]));
      continue;
    }
    if (RULE.test(line) && !para.length) {
      out.push(document.createElement("hr"));
      continue;
    }
    if (BULLET.test(line) || NUMBERED.test(line)) {
      flush();
      const ordered = !BULLET.test(line);
      const list = document.createElement(ordered ? "ol" : "ul");
      if (ordered) {
        const start = Number(NUMBERED.exec(line)[1]);
        if (start !== 1) list.start = start;
      }
      let item = null;
      for (; i < lines.length; i += 1) {
        const m = ordered ? NUMBERED.exec(lines[i]) : BULLET.exec(lines[i]);
        if (m) {
          item = document.createElement("li");
          list.append(item);
          appendInline(item, ordered ? m[2] : m[1]);
        } else if (item && lines[i].trim() && /^\s{2,}/.test(lines[i])) {
          item.append("\n");
          appendInline(item, lines[i].trim()); // an indented continuation line
        } else {
          break;
        }
      }
      i -= 1;
      out.push(list);
      continue;
    }
    if (QUOTE.test(line)) {
      flush();
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(QUOTE.exec(lines[i++])[1]);
      i -= 1;
      const quote = document.createElement("blockquote");
      quote.append(...blocks(quoted.join("\n")));
      out.push(quote);
      continue;
    }
    para.push(line);
  }
  flush();
  return out;
}

function isClosingFence(line, marker) {
  const trimmed = line.trim(); // same character, at least as long, nothing else on the line
  return trimmed.length >= marker.length && trimmed[0] === marker[0] && /^(`+|~+)$/.test(trimmed);
}

function codeBlock(body, lang) {
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  if (lang && /^[\w+#.-]{1,40}$/.test(lang)) {
    code.dataset.lang = lang;
    pre.dataset.lang = lang;
  }
  code.textContent = body;
  pre.append(code);
  return pre;
}

function paragraph(text) {
  return withInline(document.createElement("p"), text);
}

function withInline(node, text) {
  appendInline(node, text);
  return node;
}

// Inline: code spans first (their content is literal), then links, URLs and bold in the rest.
const CODE_SPAN = /(`+)([^`]|[^`][\s\S]*?[^`])\1(?!`)/g;
const INLINE = /\[([^\]\n]+)\]\((https?:\/\/[^\s)]+|mailto:[^\s)]+)\)|(https?:\/\/[^\s<>()]*[^\s<>().,;:!?'"\]])|\*\*([^*\n]+?)\*\*|__([^_\n]+?)__/g;

function appendInline(node, text) {
  let last = 0;
  for (const m of text.matchAll(CODE_SPAN)) {
    appendFormatted(node, text.slice(last, m.index));
    const code = document.createElement("code");
    code.textContent = m[2].length > 2 && m[2].startsWith(" ") && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2];
    node.append(code);
    last = m.index + m[0].length;
  }
  appendFormatted(node, text.slice(last));
}

function appendFormatted(node, text) {
  if (!text) return;
  let last = 0;
  for (const m of text.matchAll(INLINE)) {
    if (m.index > last) node.append(text.slice(last, m.index));
    if (m[1] !== undefined) node.append(link(m[2], m[1]));
    else if (m[3] !== undefined) node.append(link(m[3], m[3]));
    else {
      const strong = document.createElement("strong");
      strong.textContent = m[4] !== undefined ? m[4] : m[5];
      node.append(strong);
    }
    last = m.index + m[0].length;
  }
  if (last < text.length) node.append(text.slice(last));
}

function link(href, label) {
  const a = document.createElement("a");
  // Only http(s) and mailto reach here (the pattern); URL() normalises and rejects junk.
  try {
    const url = new URL(href);
    if (!["http:", "https:", "mailto:"].includes(url.protocol)) throw new Error("scheme");
    a.href = url.href;
  } catch {
    return document.createTextNode(label);
  }
  a.textContent = label;
  a.target = "_blank";
  a.rel = "noopener noreferrer";
  return a;
}
