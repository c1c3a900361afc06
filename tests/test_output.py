"""Output a person reads (issue 10, section 4): sizes in IEC units with raw bytes in
--json, inspect's size column, a split export's volumes, the export bar's total,
verify --json on failure, diff --json's labelled objects, -q on every command and
before or after its name, and --help a person understands."""

from __future__ import annotations

import json
import re
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airbundle.errors import EXIT_INTEGRITY, EXIT_USAGE, ManifestError
from airbundle.format.manifest import BundleManifest
from airbundle.format.units import human_size
from support.cli import command_tree, listed_commands, run, run_on_a_terminal
from support.crafting import GIT_MEMBER, World, read_parts, world, write_parts
from support.legacy import LEGACY_SAMPLES
from support.registry import Registry

# A size as airbundle prints it for a person.
SIZE = r"(\d+ B|\d+\.\d (KiB|MiB|GiB|TiB|PiB|EiB))"


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


# --- human_size ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (1024 * 1024 - 1, "1.0 MiB"),
        (27562519, "26.3 MiB"),
        (3_435_973_837, "3.2 GiB"),
        (2**70, "1024.0 EiB"),
    ],
)
def test_human_size_examples(n: int, text: str) -> None:
    assert human_size(n) == text


@given(st.integers(min_value=0, max_value=2**80))
def test_human_size_is_one_unit_and_close_to_the_bytes(n: int) -> None:
    text = human_size(n)
    match = re.fullmatch(SIZE, text)
    assert match, text
    number, unit = text.split(" ")
    if unit == "B":
        assert int(number) == n < 1024
        return
    scale = 1024 ** (["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"].index(unit) + 1)
    # One decimal: within half a tenth of the unit, and never 1024 of a unit
    # that has a larger one.
    # (exact arithmetic: 1,280 bytes is 1.25 KiB, shown as 1.2, exactly at the edge)
    assert abs(Fraction(number) * scale - n) <= Fraction(scale, 20)
    assert unit == "EiB" or float(number) < 1024


@given(st.integers(min_value=0, max_value=2**70), st.integers(min_value=0, max_value=2**70))
def test_human_size_never_shows_a_larger_size_as_smaller(a: int, b: int) -> None:
    def value(text: str) -> float:
        number, unit = text.split(" ")
        units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
        return float(number) * float(1024 ** units.index(unit))

    low, high = sorted((a, b))
    assert value(human_size(low)) <= value(human_size(high))


def test_human_size_refuses_a_negative_size() -> None:
    with pytest.raises(ValueError, match="negative"):
        human_size(-1)


# --- sizes in what a person reads ------------------------------------------------------


def test_export_verify_and_inspect_print_human_sizes_and_json_keeps_bytes(
    env: World, tmp_path: Path
) -> None:
    out = tmp_path / "b.airbundle"
    exported = run("export", env.spec, "-o", out, "--key", env.key_path, "--no-cache")
    assert exported.returncode == 0, exported.stderr
    assert re.match(rf"wrote {re.escape(str(out))} \({SIZE}\): 3 image", exported.stdout)
    assert "bytes" not in exported.stdout
    verified = run("verify", out, "--trust", env.pub_path)
    assert re.search(rf": 17 members, {SIZE} verified;", verified.stdout), verified.stdout
    inspected = run("inspect", out).stdout
    assert re.search(rf"^size      {SIZE} on disk, {SIZE} of content, 17 members$", inspected, re.M)
    assert "bytes" not in inspected
    doc = json.loads(run("verify", out, "--trust", env.pub_path, "--json").stdout)
    assert doc["bytes"] == sum(m.size for m in env.export.manifest.members)
    assert json.loads(run("inspect", out, "--json").stdout)["fileSize"] == out.stat().st_size


def test_plan_and_diff_print_human_sizes(env: World, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(env.spec.read_text().replace("url: gitops", f"url: {env.root / 'gitops'}"))
    layouts = tmp_path / "layouts"
    shutil.copytree(env.root / "layouts", layouts)
    shutil.copytree(env.root / "saved", tmp_path / "saved")
    planned = run("plan", spec, "--no-cache", "-o", tmp_path / "lock", "--split-size", "dvd")
    assert planned.returncode == 0, planned.stderr
    assert re.search(rf"  {SIZE} of {SIZE}  linux/amd64,linux/arm64", planned.stdout)
    assert re.search(rf"gitops: {SIZE} of git history to carry", planned.stdout)
    assert re.search(
        rf"images: {SIZE}, git history: {SIZE}; the bundle: about {SIZE}, "
        rf"1 volume\(s\) of 4\.4 GiB",
        planned.stdout,
    )
    assert "bytes" not in planned.stdout
    diffed = run("diff", env.bundle, env.bundle).stdout
    assert diffed.endswith("0 blob(s) not in the earlier bundle, 0 B\n")


# --- inspect's size column ------------------------------------------------------------


def _layout_total(layout: Path, digest: str) -> int:
    """An image's whole size read from its OCI layout: every document and blob
    reachable from its root, each once."""
    blobs = layout / "blobs" / "sha256"
    seen: dict[str, int] = {}
    pending = [digest]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        data = (blobs / current.split(":")[1]).read_bytes()
        seen[current] = len(data)
        doc = json.loads(data)
        for child in doc.get("manifests", []):
            pending.append(child["digest"])
        for blob in [doc.get("config"), *doc.get("layers", [])]:
            if blob is not None:
                seen[blob["digest"]] = blob["size"]
    return sum(seen.values())


def test_inspect_shows_each_image_s_whole_size(env: World) -> None:
    """hello:1.0 is an index of two platforms sharing nothing but the index: its
    size is every manifest, config and layer, not the 491-byte index."""
    doc = json.loads(run("inspect", env.bundle, "--json").stdout)
    layout = env.root / "layouts" / "hello"
    by_ref = {i["ref"]: i for i in doc["images"]}
    hello = by_ref["registry.example.com/team/hello:1.0"]
    assert hello["size"] == 491
    assert hello["totalSize"] == _layout_total(layout, hello["digest"]) > 10 * hello["size"]
    text = run("inspect", env.bundle).stdout
    for image in doc["images"]:
        assert image["totalSize"] >= image["size"]
        assert f"  {image['digest']}  {human_size(image['totalSize'])}  " in text


def test_inspect_of_a_bundle_from_before_total_size_shows_a_question_mark() -> None:
    proc = run("inspect", LEGACY_SAMPLES)
    assert proc.returncode == 0, proc.stderr
    rows = [line for line in proc.stdout.splitlines() if " sha256:" in line and " from " in line]
    assert len(rows) == 3
    assert all(re.search(r"  sha256:[0-9a-f]{64}  \?  ", row) for row in rows), rows


def test_a_total_size_below_the_root_manifest_is_refused(env: World) -> None:
    doc = json.loads(env.manifest_bytes)
    doc["images"][0]["totalSize"] = doc["images"][0]["size"] - 1
    with pytest.raises(ManifestError, match=r"images\[0\]\.totalSize"):
        BundleManifest.from_bytes(json.dumps(doc).encode())


# --- a split export, the progress bar ---------------------------------------------------


def test_a_split_export_names_its_volumes_and_their_total(env: World, tmp_path: Path) -> None:
    out = tmp_path / "media" / "week.airbundle"
    out.parent.mkdir()
    proc = run(
        "export", env.spec, "-o", out, "--key", env.key_path, "--no-cache", "--split-size", "40000"
    )
    assert proc.returncode == 0, proc.stderr
    volumes = sorted(out.parent.glob("week.airbundle.0*"))
    assert len(volumes) == 2
    total = human_size(sum(v.stat().st_size for v in volumes))
    assert proc.stdout.startswith(
        f"wrote 2 volumes {volumes[0]}…002 ({total}) + week.airbundle.volumes: 3 image(s)"
    ), proc.stdout


def test_the_export_progress_bar_has_a_total(env: World, tmp_path: Path) -> None:
    """tqdm draws `NN%|` only when it knows the total."""
    code, drawn = run_on_a_terminal(
        "export", env.spec, "-o", tmp_path / "b.airbundle", "--key", env.key_path, "--no-cache"
    )
    assert code == 0, drawn
    assert re.search(r"export: +\d+%\|", drawn), drawn


@pytest.mark.parametrize("name", ["index", "folder"])
def test_verify_and_import_bars_of_a_volume_set_have_a_total(
    env: World, tmp_path: Path, name: str
) -> None:
    """The set's total comes from its signed index, whichever way it is named
    (`verify NAME.001` checks that one volume: no bar)."""
    media = tmp_path / "media"
    split = run("split", env.bundle, "-o", media, "--size", "40KiB", "--key", env.key_path)
    assert split.returncode == 0, split.stderr
    given = {
        "index": media / f"{env.bundle.name}.volumes",
        "folder": media,
    }[name]
    code, drawn = run_on_a_terminal("verify", given, "--trust", env.pub_path)
    assert code == 0, drawn
    assert re.search(r"verify: +\d+%\|", drawn), drawn
    code, drawn = run_on_a_terminal(
        "import", given, "--trust", env.pub_path, "--registry", f"oci:{tmp_path / 'layout'}",
        "--git", tmp_path / "git", "--state-dir", tmp_path / "state",
    )  # fmt: skip
    assert code == 0, drawn
    assert re.search(r"import: +\d+%\|", drawn), drawn


# --- JSON -------------------------------------------------------------------------------


def test_verify_json_reports_a_damaged_member_with_the_same_exit_code(
    env: World, tmp_path: Path
) -> None:
    """A damaged git bundle member: the JSON names it; stdout is JSON and only
    that, the exit code is the one without --json."""
    parts = read_parts(env.bundle)
    damaged = parts.replace_member(GIT_MEMBER, b"x" * len(parts.member(GIT_MEMBER)))
    bundle = tmp_path / "damaged.airbundle"
    write_parts(bundle, damaged)
    plain = run("verify", bundle, "--trust", env.pub_path)
    proc = run("verify", bundle, "--trust", env.pub_path, "--json")
    assert proc.returncode == plain.returncode == EXIT_INTEGRITY
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False
    assert doc["bundle"] == str(bundle)
    assert doc["error"]["exitCode"] == EXIT_INTEGRITY
    assert doc["error"]["kind"] == "MemberDigestError"
    assert doc["error"]["member"] == GIT_MEMBER
    assert GIT_MEMBER in doc["error"]["message"]
    assert proc.stderr.startswith("airbundle: error: ")


def test_verify_json_reports_a_usage_error_and_a_damaged_volume(env: World, tmp_path: Path) -> None:
    missing = run("verify", tmp_path / "none.airbundle", "--trust", env.pub_path, "--json")
    assert missing.returncode == EXIT_USAGE
    assert json.loads(missing.stdout)["error"] == {
        "kind": "UsageError",
        "exitCode": EXIT_USAGE,
        "message": json.loads(missing.stdout)["error"]["message"],
        "hint": json.loads(missing.stdout)["error"]["hint"],
        "member": None,
        "volumes": [],
    }
    out = tmp_path / "set" / "b.airbundle"
    out.parent.mkdir()
    exported = run(
        "export", env.spec, "-o", out, "--key", env.key_path, "--no-cache", "--split-size", "40000"
    )
    assert exported.returncode == 0, exported.stderr
    second = out.parent / "b.airbundle.002"
    data = bytearray(second.read_bytes())
    data[len(data) // 2] ^= 0xFF
    second.write_bytes(bytes(data))
    one = run("verify", second, "--trust", env.pub_path, "--json")
    assert one.returncode == EXIT_INTEGRITY
    assert json.loads(one.stdout)["error"]["volumes"] == ["b.airbundle.002"]
    whole = run("verify", out.parent, "--trust", env.pub_path, "--json")
    assert whole.returncode == EXIT_INTEGRITY
    assert json.loads(whole.stdout)["error"]["volumes"] == ["b.airbundle.002"]


def test_diff_json_uses_labelled_objects(env: World, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    text = env.spec.read_text()
    spec.write_text(text.replace("  - ref: docker-archive:saved/app.tar\n", ""))
    for folder in ("layouts", "saved", "gitops"):
        shutil.copytree(env.root / folder, tmp_path / folder)
    smaller = tmp_path / "smaller.airbundle"
    proc = run("export", spec, "-o", smaller, "--key", env.key_path, "--no-cache", "-q")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(run("diff", smaller, env.bundle, "--json").stdout)
    app = next(i for i in env.export.manifest.images if i.source.startswith("docker-archive:"))
    assert doc["images"]["added"] == [{"ref": str(app.ref), "digest": str(app.digest)}]
    assert doc["images"]["removed"] == doc["images"]["updated"] == []
    assert set(doc) == {"images", "refs", "charts", "files", "newBlobs", "newBlobBytes"}
    assert set(doc["refs"]) == {"added", "removed", "moved"}
    assert doc["newBlobs"] > 0
    assert isinstance(doc["newBlobBytes"], int)


# --- -q -----------------------------------------------------------------------------------


def test_quiet_success_prints_only_what_the_command_is_for(env: World, tmp_path: Path) -> None:
    """Each printing command on a success path, with -q after its name: nothing on
    stderr, and stdout only for the commands whose output is the point."""
    b = tmp_path / "b.airbundle"
    oci, git = tmp_path / "oci", tmp_path / "git"
    silent = [
        ["export", env.spec, "-o", b, "--key", env.key_path, "--no-cache"],
        ["verify", b, "--trust", env.pub_path],
        ["sign", b, "--key", env.other_key_path],
        ["import", b, "--trust", env.pub_path, "--registry", f"oci:{oci}", "--git", git],
        ["inventory", "-o", tmp_path / "inv.json", "--registry", f"oci:{oci}", "--git", git],
        ["mirror-config", b, "-o", tmp_path / "mirror", "--registry", "mirror.example:5000"],
        ["plan", env.spec, "--no-cache", "-o", tmp_path / "lock"],
        ["split", b, "--size", "40000", "--key", env.key_path, "-o", tmp_path / "vol"],
        ["join", tmp_path / "vol", "-o", tmp_path / "joined.airbundle"],
        ["cache", "prune", "--cache-dir", tmp_path / "cache"],
        ["key", "generate", tmp_path / "k"],
    ]
    for args in silent:
        proc = run(*args, "-q", cwd=env.root)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), args
    telling = [
        ["inspect", b],
        ["diff", b, b],
        ["scan", env.root / "gitops"],
        ["inspect", b, "--json"],
        ["verify", b, "--trust", env.pub_path, "--json"],
    ]
    for args in telling:
        proc = run(*args, "-q")
        assert (proc.returncode, proc.stderr) == (0, ""), args
        assert proc.stdout, args


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_drops_the_platform_subset_warning(env: World, tmp_path: Path, where: str) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata:\n  name: subset\nimages:\n"
        f"  - ref: oci:{env.root / 'layouts' / 'hello'}:1.0\n"
        "    name: registry.example.com/team/hello:1.0\n    platforms: [linux/amd64]\n"
    )
    args = ["export", spec, "-o", tmp_path / "b.airbundle", "--key", env.key_path, "--no-cache"]
    loud = run(*args, "--force")
    assert loud.returncode == 0, loud.stderr
    assert "airbundle: warning: " in loud.stderr and "carrying linux/amd64 only" in loud.stderr
    quiet = run("-q", *args, "--force") if where == "before" else run(*args, "--force", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


@pytest.mark.integration
def test_quiet_drops_urllib3_s_insecure_request_warning(
    env: World, tls_registry: Registry, tmp_path: Path
) -> None:
    """An --insecure-registry host over TLS: urllib3 warns on every request; once
    per host without -q, never with it (stderr otherwise intact)."""
    args = [
        "import",
        env.bundle,
        "--trust",
        env.pub_path,
        "--registry",
        f"{tls_registry.host}/team",
        "--git",
        tmp_path / "git",
        "--insecure-registry",
        tls_registry.host,
        "--state-dir",
    ]
    loud = run(*args, tmp_path / "state1")
    assert loud.returncode == 0, loud.stderr
    assert loud.stderr.count("InsecureRequestWarning") == 1, loud.stderr
    quiet = run(*args, tmp_path / "state2", "--force", "-q")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (0, "", "")


# --- --help ---------------------------------------------------------------------------------

# Placeholders in help prose that are syntax the user writes (vet commands, URL templates).
TEMPLATE_FIELDS = {"{name}", "{layout}", "{ref}", "{digest}"}


@pytest.fixture(scope="module")
def commands() -> list[tuple[str, ...]]:
    return command_tree()


def test_the_command_tree_is_walked(commands: list[tuple[str, ...]]) -> None:
    names = {" ".join(c) for c in commands}
    assert {"export", "verify", "import", "key generate", "cache prune", "serve"} <= names


def test_every_help_names_placeholders_a_person_understands(
    commands: list[tuple[str, ...]],
) -> None:
    for command in commands:
        text = run(*command, "--help").stdout
        usage = text.splitlines()[0]
        assert "{" not in usage and "<" not in usage, usage
        assert re.fullmatch(r"Usage: airbundle[ a-z-]*( \[OPTIONS\])?( [A-Z\[\].]+)*", usage), usage
        for bad in ("<list", "<int", "<str", "<path", "<float", "--no-no-", " / --no-"):
            assert bad not in text, (command, bad)
        fields = set(re.findall(r"\{[^}]*\}", text))
        assert fields <= TEMPLATE_FIELDS, (command, fields - TEMPLATE_FIELDS)
        for line in text.splitlines():
            option = re.match(r"  (?:-\w, )?(--[a-z-]+)( \S+)?", line)
            if option and option.group(2):
                metavar = option.group(2).strip()
                assert re.fullmatch(r"[A-Z0-9:.\[\]/|%a-z-]+", metavar), (command, line)
                assert not metavar.startswith("<"), (command, line)


def test_every_command_takes_quiet(commands: list[tuple[str, ...]]) -> None:
    for command in commands:
        text = run(*command, "--help").stdout
        if listed_commands(text):
            continue  # a group: its commands take it
        assert "-q, --quiet" in text, command


def test_command_descriptions_are_not_cut_off(commands: list[tuple[str, ...]]) -> None:
    groups = [c for c in commands if listed_commands(run(*c, "--help").stdout)]
    assert {(), ("key",), ("cache",)} <= set(groups)
    for group in groups:
        text = run(*group, "--help").stdout
        section = text[text.index("Commands:") :]
        for line in section.splitlines()[1:]:
            assert not line.rstrip().endswith("..."), (group, line)


@pytest.mark.parametrize(
    ("command", "option"),
    [("verify", None), ("import", None), ("inspect", None), ("serve", "--bundle")],
)
def test_bundle_help_says_a_volume_set_is_accepted(command: str, option: str | None) -> None:
    text = " ".join(run(command, "--help").stdout.split())
    where = text[text.index(option) :] if option else text[text.index("Arguments:") :]
    assert ".volumes" in where[:300], where[:300]
    assert "folder" in where[:300], where[:300]
