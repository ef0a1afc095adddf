// Keyboard patterns of the page (WAI-ARIA Authoring Practices), apart from what they act on.

/**
 * Keys in the chat list, a roving-tabindex list (one Tab stop). Each chat is a row of cells
 * carrying `data-fkey`: its link, then its Rename and Delete buttons.
 *   Up / Down, Home / End   the link of the previous / next, first / last chat
 *   Left / Right            the previous / next cell of the row (link → Rename → Delete)
 *   Enter                   the cell's own action (open the chat, press the button)
 *   F2                      rename the chat in focus
 *   Delete                  delete the chat in focus (asks to confirm; Delete again confirms)
 *   Escape                  cancel a pending confirmation
 * `actions`: {focus(fkey), rename(id), remove(id), cancel(id) → true when there was one}.
 */
export function chatListKey(e, list, actions) {
  const cell = e.target.closest("[data-fkey]");
  if (!cell || cell.tagName === "INPUT") return;
  const row = cell.closest('[data-testid="session-item"]');
  const id = row && row.dataset.sessionId;
  if (!id) return;
  const rows = [...list.querySelectorAll('[data-testid="session-item"]')];
  const index = rows.indexOf(row);
  const cells = [...row.querySelectorAll("[data-fkey]")];
  const go = (r) => actions.focus(`${r.dataset.sessionId}:open`);
  const step = (delta) => {
    const next = cells[cells.indexOf(cell) + delta];
    if (next) actions.focus(next.dataset.fkey);
  };
  switch (e.key) {
    case "ArrowDown": if (index < rows.length - 1) go(rows[index + 1]); break;
    case "ArrowUp": if (index > 0) go(rows[index - 1]); break;
    case "Home": go(rows[0]); break;
    case "End": go(rows[rows.length - 1]); break;
    case "ArrowRight": step(1); break;
    case "ArrowLeft": step(-1); break;
    case "F2": actions.rename(id); break;
    case "Delete": actions.remove(id); break;
    case "Escape":
      if (actions.cancel(id)) e.stopPropagation(); // not the drawer's Escape
      else return;
      break;
    default:
      return;
  }
  e.preventDefault();
}

/** Tab and Shift+Tab wrap around inside `container` (an open modal dialog). */
export function keepTabInside(container, e) {
  if (e.key !== "Tab") return;
  const focusable = [...container.querySelectorAll("button, a[href], input, textarea, [tabindex]")]
    .filter((n) => n.tabIndex >= 0 && !n.disabled && n.getClientRects().length > 0);
  if (!focusable.length) return;
  const first = focusable[0];
  const last = focusable[focusable.length - 1];
  if (e.shiftKey && document.activeElement === first) {
    e.preventDefault();
    last.focus();
  } else if (!e.shiftKey && document.activeElement === last) {
    e.preventDefault();
    first.focus();
  }
}
