"""The page at `/`: what is served, as HTML for a browser (the same data is
served as JSON for `Accept: application/json`). Every value is escaped: image
names, tags, ref names and commit subjects come from carried content."""

from __future__ import annotations

from html import escape
from typing import Any

from airbundle.format.units import human_size

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:2em}
td,th{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:left;vertical-align:top}
code{font-size:.9em}
.warn{color:#a40}
"""


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _images(images: list[dict[str, Any]]) -> list[str]:
    rows = [
        "<h2>Images</h2>",
        '<table id="images"><tr><th>pull as</th><th>carried as</th><th>digest</th>'
        "<th>platforms</th><th>size</th></tr>",
    ]
    for image in images:
        rows.append(
            f"<tr><td><code>{_e(image['pull'])}</code></td><td>{_e(image['source'])}</td>"
            f"<td><code title=\"{_e(image['digest'])}\">{_e(image['digest'][:19])}</code></td>"
            f"<td>{_e(', '.join(image['platforms']) or '-')}</td>"
            f"<td>{_e(human_size(image['size']))}</td></tr>"
        )
    if not images:
        rows.append('<tr><td colspan="5">no images</td></tr>')
    rows.append("</table>")
    return rows


def _repos(repos: list[dict[str, Any]]) -> list[str]:
    rows = [
        "<h2>Git repositories</h2>",
        '<table id="repos"><tr><th>clone</th><th>ref</th><th>commit</th><th>subject</th></tr>',
    ]
    for repo in repos:
        refs = repo["refs"] or [{"ref": "-", "commit": "", "subject": ""}]
        for i, ref in enumerate(refs):
            first = f"<code>git clone {_e(repo['url'])}</code>" if i == 0 else ""
            rows.append(
                f"<tr><td>{first}</td><td>{_e(ref['ref'])}</td>"
                f"<td><code>{_e(ref['commit'][:12])}</code></td><td>{_e(ref['subject'])}</td></tr>"
            )
    if not repos:
        rows.append('<tr><td colspan="4">no repositories</td></tr>')
    rows.append("</table>")
    return rows


def _folders(folders: list[dict[str, Any]]) -> list[str]:
    if not folders:
        return []
    rows = ["<h2>Charts and files</h2>", '<table id="folders"><tr><th>path</th><th>use</th></tr>']
    for folder in folders:
        rows.append(
            f'<tr><td><a href="{_e(folder["path"])}">{_e(folder["path"])}</a></td>'
            f"<td><code>{_e(folder['use'])}</code></td></tr>"
        )
    rows.append("</table>")
    return rows


def _history(history: list[dict[str, Any]]) -> list[str]:
    rows = [
        "<h2>Import history</h2>",
        '<table id="history"><tr><th>time</th><th>target</th><th>action</th><th>bundle</th>'
        "<th>channel</th><th>sequence</th><th>signers</th></tr>",
    ]
    for entry in history:
        rows.append(
            f"<tr><td>{_e(entry.get('time', ''))}</td><td>{_e(entry.get('target', ''))}</td>"
            f"<td>{_e(entry.get('action', ''))}</td>"
            f"<td>{_e(entry.get('bundle', ''))} <code>{_e(entry.get('bundleId', ''))}</code></td>"
            f"<td>{_e(entry.get('channel', ''))}</td><td>{_e(entry.get('sequence', ''))}</td>"
            f"<td><code>{_e(' '.join(entry.get('signers', [])))}</code></td></tr>"
        )
    if not history:
        rows.append('<tr><td colspan="7">no imports recorded</td></tr>')
    rows.append("</table>")
    return rows


def _bundle(bundle: dict[str, Any]) -> list[str]:
    signers = "<br>".join(
        f"<code>{_e(k['fingerprint'])}</code> {_e(k['comment'])} (trusted by {_e(k['trustedBy'])})"
        for k in bundle["signers"]
    )
    rows = [
        ("bundle", f"<code>{_e(bundle['path'])}</code>"),
        ("name", _e(bundle["name"])),
        ("id", f"<code>{_e(bundle['id'])}</code>"),
        ("created", _e(bundle["created"])),
        ("expires", _e(bundle["expires"] or "never")),
        ("channel", _e(bundle["channel"])),
        ("sequence", _e(bundle["sequence"])),
        ("manifest", f"<code>{_e(bundle['manifestDigest'])}</code>"),
        ("signed by", signers),
        (
            "members",
            f"{_e(bundle['members'])}, {_e(bundle['verified'])} hashed and found as signed "
            "so far (each before its first byte is sent)",
        ),
    ]
    if bundle["failed"]:
        rows.append(
            (
                "not served",
                '<span class="warn">'
                + "<br>".join(f"<code>{_e(m)}</code>" for m in bundle["failed"])
                + " (failed verification)</span>",
            )
        )
    out = ["<h2>Bundle</h2>", '<table id="bundle">']
    out += [f"<tr><th>{label}</th><td>{value}</td></tr>" for label, value in rows]
    out.append("</table>")
    return out


def render_html(data: dict[str, Any]) -> str:
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>airbundle serve: {_e(data['served'])}</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>airbundle serve</h1>",
        f"<p>Serving <code>{_e(data['served'])}</code> read-only at "
        f"<code>{_e(data['address'])}</code>. Registry API under <code>/v2/</code>, "
        "git over smart HTTP under <code>/git/NAME.git</code>; this page as JSON with "
        "<code>Accept: application/json</code>.</p>",
    ]
    parts += [f'<p class="warn">{_e(w)}</p>' for w in data.get("warnings", [])]
    if "bundle" in data:
        parts += _bundle(data["bundle"])
    parts += _images(data["images"])
    parts += _repos(data["repos"])
    parts += _folders(data.get("folders", []))
    if "bundle" not in data:
        parts += _history(data["history"])
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
