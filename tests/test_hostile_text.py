"""No untrusted string reaches the terminal with a control sequence in it (issue
11, item 6): signed strings (source, url, tool, scan findings, base entries),
unsigned ones (inventory strings in the base hint, file names, a scanned tree's
YAML), and every error, warning and hint airbundle prints."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.errors import EXIT_IO, EXIT_OK, EXIT_USAGE
from airbundle.format.digest import Digest
from airbundle.format.manifest import (
    ImageEntry,
    RefEntry,
    RepoEntry,
    ScanIssue,
    ScanSummary,
)
from airbundle.format.reference import ImageReference
from airbundle.format.text import escape
from airbundle.ops.importer import base_hint
from support.cli import run
from support.crafting import World, blob, make_manifest, world, write_bundle

# What a hostile string tries: set the window title, clear the screen, go back to
# the start of the line and overwrite it, ring the bell, an 8-bit CSI, reverse
# the text that follows, hide characters, and start a fake line of output.
ATTACK = (
    "\x1b]0;pwned\x07"
    "\x1b[2J\x1b[H"
    "\rOK signed by SHA256:trusted"
    "\x9b31m"
    "\u202egnp.exe"
    "\u200bzero\ufeffwidth"
    "\n  images (0):"
)
RAW = ["\x1b", "\r", "\x07", "\x9b", "\u202e", "\u200b", "\ufeff"]


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def assert_safe(text: str) -> None:
    """Nothing in `text` a terminal would act on; line breaks are airbundle's own."""
    for char in RAW:
        assert char not in text, (char, text)
    for line in text.split("\n"):
        assert line.isprintable(), line


# --- the helper ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text", "plain text"),
        ("\x1b]0;t\x07", "\\x1b]0;t\\x07"),
        ("a\rb\nc\td", "a\\rb\\nc\\td"),
        ("\x00\x7f\x9b", "\\x00\\x7f\\x9b"),
        ("\u202eabc\u2066", "\\u202eabc\\u2066"),
        ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
        ("nb\u00a0sp", "nb\\xa0sp"),
        ("line\u2028sep", "line\\u2028sep"),
        ("\ud800", "\\ud800"),
        ("\U000e0001tag", "\\U000e0001tag"),
        ("back\\slash", "back\\\\slash"),
        ("caf\u00e9 \u65e5\u672c", "caf\u00e9 \u65e5\u672c"),
    ],
)
def test_escape_writes_every_non_printable_character_visibly(raw: str, shown: str) -> None:
    assert escape(raw) == shown


def test_escape_of_lines_keeps_line_breaks_and_backslashes() -> None:
    assert escape("one\x1b[2J\ntwo\\x", lines=True) == "one\\x1b[2J\ntwo\\x"


@given(st.text())
def test_escaped_text_is_one_printable_line(text: str) -> None:
    shown = escape(text)
    assert shown.isprintable()
    for line in escape(text, lines=True).split("\n"):
        assert line.isprintable()


@given(st.text(alphabet=st.characters(exclude_categories=["Cs"])))
def test_escape_loses_nothing(text: str) -> None:
    """Distinct strings stay distinct on screen (backslashes are doubled)."""
    shown = escape(text)
    decoded = shown.encode("ascii", "backslashreplace").decode("unicode_escape")
    assert decoded == text


# --- signed strings in inspect: what a reviewer reads before co-signing ------------------


def _hostile_bundle(env: World, path: Path) -> Path:
    root = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    git = b"# v2 git bundle\n" + b"0" * 40 + b" refs/heads/main\n\n"
    members = [blob(root), ("repos/app.bundle", git)]
    image = ImageEntry(
        ImageReference.parse("example.com/app:1"),
        f"docker://example.com/app:1{ATTACK}",
        Digest.sha256_of(root),
        "application/vnd.oci.image.index.v1+json",
        len(root),
        platforms=(f"linux/amd64{ATTACK}",),
    )
    repo = RepoEntry(
        "app",
        f"https://example.com/app.git{ATTACK}",
        "repos/app.bundle",
        "sha1",
        (RefEntry("refs/heads/main", "1" * 40),),
    )
    manifest = make_manifest(members, images=[image], repos=[repo])
    manifest = dataclasses.replace(
        manifest,
        bundle=dataclasses.replace(manifest.bundle, tool=f"airbundle 9{ATTACK}"),
        scan=ScanSummary(1, 1, (ScanIssue(f"x{ATTACK}", f"app:{ATTACK}", 3, "k\x1b[2J\r"),)),
        base=({"kind": "inventory", "target": ATTACK, "created": ATTACK},),
    )
    return write_bundle(path, manifest, [], members, keys=[env.key])


def test_inspect_escapes_every_signed_string(env: World, tmp_path: Path) -> None:
    bundle = _hostile_bundle(env, tmp_path / "hostile.airbundle")
    proc = run("inspect", bundle)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert_safe(proc.stdout)
    assert "\\x1b]0;pwned\\x07" in proc.stdout
    # The fake "images (0):" line stayed inside the value it came with.
    lines = proc.stdout.splitlines()
    assert [line for line in lines if line.lstrip().startswith("images (")] == ["images (1):"]
    for what in ("from docker://example.com/app:1", "by airbundle 9", "app.git", "MISSING x"):
        (line,) = [line for line in proc.stdout.splitlines() if what in line]
        assert "\\r" in line and "\\n" in line


def test_inspect_json_is_escaped_json(env: World, tmp_path: Path) -> None:
    bundle = _hostile_bundle(env, tmp_path / "hostile.airbundle")
    proc = run("inspect", bundle, "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert_safe(proc.stdout)
    assert json.loads(proc.stdout)["bundle"]["tool"] == f"airbundle 9{ATTACK}"


# --- unsigned strings: the base hint, file names, scanned trees -------------------------


def test_the_base_hint_escapes_inventory_and_bundle_strings(env: World, tmp_path: Path) -> None:
    manifest = make_manifest([])
    for entry in (
        {"kind": "inventory", "target": ATTACK, "created": ATTACK},
        {"kind": "bundle", "name": ATTACK, "id": ATTACK},
    ):
        hint = base_hint(dataclasses.replace(manifest, base=(entry,)))
        assert hint.isprintable()
        assert "\\x1b]0;pwned\\x07" in hint


def test_an_import_missing_its_base_prints_an_escaped_hint(env: World, tmp_path: Path) -> None:
    config = b'{"architecture":"amd64","os":"linux"}'
    root = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": str(Digest.sha256_of(config)),
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    members = [blob(root)]  # the config is the base's: not carried
    image = ImageEntry(
        ImageReference.parse("example.com/app:1"),
        "crafted",
        Digest.sha256_of(root),
        "application/vnd.oci.image.manifest.v1+json",
        len(root),
    )
    manifest = dataclasses.replace(
        make_manifest(members, images=[image]),
        base=({"kind": "inventory", "target": ATTACK, "created": ATTACK},),
    )
    bundle = write_bundle(tmp_path / "inc.airbundle", manifest, [], members, keys=[env.key])
    proc = run(
        "import", bundle, "--trust", env.pub_path, "--registry", f"oci:{tmp_path / 'layout'}",
        "--state-dir", tmp_path / "state",
    )  # fmt: skip
    assert proc.returncode == EXIT_IO, proc.stderr
    assert "hint: this is an incremental bundle built on the inventory of" in proc.stderr
    assert_safe(proc.stderr)
    assert "Traceback" not in proc.stderr


def test_errors_escape_names_from_the_command_line_and_the_media(
    env: World, tmp_path: Path
) -> None:
    name = tmp_path / f"b{ATTACK.replace(chr(10), '')}.airbundle"
    proc = run("verify", name, "--trust", env.pub_path)
    assert proc.returncode == EXIT_USAGE
    assert_safe(proc.stderr)
    assert "\\x1b]0;pwned\\x07" in proc.stderr


def test_scan_escapes_what_a_scanned_tree_holds(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / f"pod{ATTACK.replace(chr(10), '').replace('/', '')}.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers:\n"
        '    - name: a\n      image: "example.com/app:1\\e]0;t\\a"\n'
    )
    proc = run("scan", tree)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert_safe(proc.stdout)
    assert_safe(proc.stderr)
    assert "pod\\x1b]0;pwned\\x07" in proc.stdout
