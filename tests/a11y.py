"""Accessibility checks in the browser: axe-core (vendored under ``tests/vendor/``, with its
license) run inside the page at the WCAG 2.1 A and AA rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from playwright.async_api import Page

AXE = Path(__file__).resolve().parent / "vendor" / "axe.min.js"
WCAG_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]


async def axe_violations(page: Page) -> list[dict[str, Any]]:
    """axe's violations of WCAG 2.1 AA on the page as it stands: ``[{id, impact, help,
    targets}]``. The script is evaluated over the DevTools protocol, so the page's
    Content-Security-Policy does not stop it."""
    if not await page.evaluate("typeof window.axe === 'object'"):
        await page.evaluate(AXE.read_text(encoding="utf-8") + "\n;0")
    result: list[dict[str, Any]] = await page.evaluate(
        """async (tags) => {
            const r = await window.axe.run(document, {runOnly: {type: 'tag', values: tags}});
            return r.violations.map((v) => ({
                id: v.id, impact: v.impact, help: v.help,
                targets: v.nodes.map((n) => n.target.join(' ') + ' :: ' +
                                            (n.failureSummary || '').replace(/\\s+/g, ' ')),
            }));
        }""",
        WCAG_AA,
    )
    return result


def describe(violations: list[dict[str, Any]]) -> str:
    """The violations, one per line, for an assertion message."""
    lines = []
    for v in violations:
        lines.append(f"{v['id']} ({v['impact']}): {v['help']}")
        lines.extend(f"    {t}" for t in v["targets"][:6])
    return "\n".join(lines)
