"""The command line: help, exit codes, where messages go, JSON output, key files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airbundle import __version__
from airbundle.cli import main
from airbundle.errors import EXIT_INTEGRITY, EXIT_IO, EXIT_OK, EXIT_USAGE
from airbundle.format.archive import signature_path
from airbundle.format.sshsig import public_key_of
from support.crafting import GIT_MEMBER, World, content_start, flip, snapshot, temp_files, world
from support.env import AIRBUNDLE, require_tool

PREFIX = "airbundle: error: "


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> World:
    return world(tmp_path_factory)


def clean_env(**extra: str) -> dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if k not in ("AIRBUNDLE_PASSPHRASE",)}
    environ["SOURCE_DATE_EPOCH"] = "1704067200"
    environ.update(extra)
    return environ


def cli(*args: object, cwd: Path | None = None, **environ: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "airbundle", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=clean_env(**environ),
        timeout=120,
        check=False,
    )


def in_process(capsys: pytest.CaptureFixture[str], *args: object) -> tuple[int, str, str]:
    """Run airbundle.cli.main in this process: (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out, err = capsys.readouterr()
    return code, out, err


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The error message: exactly one `airbundle: error:` line on stderr, none on stdout."""
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert lines, "no error message"
    assert lines[0].startswith(PREFIX), proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr[len(PREFIX) :]


def tampered_copy(env: World, tmp_path: Path) -> Path:
    data = env.bundle.read_bytes()
    start = content_start(data)
    path = tmp_path / "tampered.airbundle"
    path.write_bytes(flip(data, start + (len(data) - start) // 2))
    return path


# --- help and version ----------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["export"],
        ["verify"],
        ["inspect"],
        ["import"],
        ["key"],
        ["key", "generate"],
    ],
    ids=lambda c: " ".join(c) or "airbundle",
)
def test_help_for_every_command(command: list[str]) -> None:
    proc = cli(*command, "--help")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "Usage: airbundle" in proc.stdout
    assert proc.stderr == ""


def test_help_lists_every_command() -> None:
    out = cli("--help").stdout
    for command in ("export", "verify", "inspect", "import", "key"):
        assert f" {command} " in out


def test_version() -> None:
    proc = cli("--version")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, f"airbundle {__version__}\n", "")


def test_no_arguments_shows_usage() -> None:
    proc = cli()
    assert proc.returncode == EXIT_USAGE
    assert "Usage: airbundle" in proc.stdout + proc.stderr


# --- exit codes ------------------------------------------------------------------------


def test_verify_ok_exits_0(env: World) -> None:
    proc = cli("verify", env.bundle, "--trust", env.pub_path)
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.startswith(f"OK {env.bundle}: {len(env.export.manifest.members)} members, ")
    assert f"signed by {public_key_of(env.key).fingerprint}" in proc.stdout
    assert proc.stderr == ""


def test_tampered_bundle_exits_1(env: World, tmp_path: Path) -> None:
    bundle = tampered_copy(env, tmp_path)
    proc = cli("verify", bundle, "--trust", env.pub_path)
    assert proc.returncode == EXIT_INTEGRITY
    assert error_line(proc).startswith(f"{bundle}: ")


def test_wrong_trusted_key_exits_1(env: World) -> None:
    proc = cli("verify", env.bundle, "--trust", env.other_pub_path)
    assert proc.returncode == EXIT_INTEGRITY
    message = error_line(proc)
    assert "bundle has 0 trusted signature(s) of 1 required" in message
    assert f"in {signature_path(0)} (not in trust set)" in message
    assert "  hint: sign with a key in the trust set" in proc.stderr


def test_verbose_error_shows_the_traceback(env: World) -> None:
    proc = cli("--verbose", "verify", env.bundle, "--trust", env.other_pub_path)
    assert proc.returncode == EXIT_INTEGRITY
    assert "Traceback" in proc.stderr
    assert "SignatureError" in proc.stderr
    assert PREFIX in proc.stderr


def test_spec_error_exits_2_and_writes_nothing(env: World, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(env.spec.read_text("utf-8").replace("kind: BundleSpec", "kind: Spec"))
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    proc = cli("export", spec, "-o", out, "--key", env.key_path)
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc) == f"{spec}:2: field kind: 'BundleSpec' was expected\n"
    assert list(out.parent.iterdir()) == []


def test_missing_trust_exits_2(env: World) -> None:
    proc = cli("verify", env.bundle)
    assert proc.returncode == EXIT_USAGE
    assert proc.stdout == ""
    assert "Missing option '--trust'" in proc.stderr


def test_empty_trust_file_exits_2(env: World, tmp_path: Path) -> None:
    empty = tmp_path / "empty.pub"
    empty.write_text("# nobody\n")
    proc = cli("verify", env.bundle, "--trust", empty)
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc) == f"trust file {empty} holds no keys\n"


@pytest.mark.parametrize("registry", ["user@registry.example", "", "bad host:5000"])
def test_bad_registry_value_exits_2_and_writes_nothing(
    env: World, tmp_path: Path, registry: str
) -> None:
    git = tmp_path / "git"
    proc = cli(
        "import",
        env.bundle,
        "--trust",
        env.pub_path,
        "--registry",
        registry,
        "--git",
        git,
        cwd=tmp_path,
    )
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc).startswith(f"--registry {registry!r}: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_missing_targets_exit_2(env: World, tmp_path: Path) -> None:
    proc = cli("import", env.bundle, "--trust", env.pub_path, cwd=tmp_path)
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc).startswith("the bundle carries 3 image(s): say where they go with ")
    assert list(tmp_path.iterdir()) == []


def test_missing_source_exits_3_and_writes_nothing(env: World, tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "apiVersion: airbundle/v1\nkind: BundleSpec\nmetadata: {name: m}\n"
        "images:\n  - ref: oci:nowhere/layout:1.0\n    name: r.example/x:1\n"
    )
    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    proc = cli("export", spec, "-o", out, "--key", env.key_path)
    assert proc.returncode == EXIT_IO
    message = error_line(proc)
    assert message.startswith("oci:nowhere/layout:1.0: ")
    assert "is not an OCI image layout" in message
    assert list(out.parent.iterdir()) == []


def test_missing_bundle_file_exits_2(env: World, tmp_path: Path) -> None:
    missing = tmp_path / "nope.airbundle"
    proc = cli("verify", missing, "--trust", env.pub_path)
    assert proc.returncode == EXIT_USAGE
    first, hint = error_line(proc).split("\n", 1)
    assert first == f"cannot open bundle {missing}: No such file or directory"
    assert hint.startswith("  hint: pass the bundle file, a volume set's NAME.volumes index")


def test_bad_duration_exits_2(env: World, tmp_path: Path) -> None:
    out = tmp_path / "b.airbundle"
    proc = cli("export", env.spec, "-o", out, "--key", env.key_path, "--expires", "soon")
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc).startswith("invalid duration 'soon'")
    assert not out.exists()
    assert temp_files(tmp_path) == []


# --- quiet, JSON -------------------------------------------------------------------------


def test_quiet_prints_nothing_on_success(env: World, tmp_path: Path) -> None:
    out = tmp_path / "q.airbundle"
    for args in (
        ["export", env.spec, "-o", out, "--key", env.key_path, "--quiet"],
        ["verify", out, "--trust", env.pub_path, "-q"],
        [
            "import",
            out,
            "--trust",
            env.pub_path,
            "--registry",
            f"oci:{tmp_path / 'oci'}",
            "--git",
            tmp_path / "git",
            "--quiet",
        ],
    ):
        proc = cli(*args)
        assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", ""), args
    assert (tmp_path / "git" / "gitops.git").is_dir()
    index = json.loads((tmp_path / "oci" / "index.json").read_text())
    assert len(index["manifests"]) == 3


def test_quiet_still_reports_errors(env: World, tmp_path: Path) -> None:
    proc = cli("verify", tampered_copy(env, tmp_path), "--trust", env.pub_path, "--quiet")
    assert proc.returncode == EXIT_INTEGRITY
    error_line(proc)


def test_not_quiet_prints_a_summary(
    env: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "b.airbundle"
    code, stdout, stderr = in_process(capsys, "export", env.spec, "-o", out, "--key", env.key_path)
    assert code == 0, stderr
    assert stdout.startswith(f"wrote {out} (")
    assert "3 image(s), 1 repo(s), 17 members, manifest sha256:" in stdout


def test_inspect_json(env: World) -> None:
    proc = cli("inspect", env.bundle, "--json")
    assert proc.returncode == EXIT_OK, proc.stderr
    doc = json.loads(proc.stdout)
    manifest = env.export.manifest
    assert [i["ref"] for i in doc["images"]] == [str(i.ref) for i in manifest.images]
    assert [r["name"] for r in doc["repos"]] == ["gitops"]
    assert {r["name"] for r in doc["repos"][0]["refs"]} == {
        "refs/heads/main",
        "refs/heads/release-1.0",
        "refs/tags/v1.0",
    }
    assert doc["signatures"] == [
        {
            "member": signature_path(0),
            "fingerprint": public_key_of(env.key).fingerprint,
            "valid": True,
            "problem": None,
        }
    ]
    assert doc["members"] == len(manifest.members)
    assert doc["fileSize"] == env.bundle.stat().st_size
    assert doc["bundle"]["name"] == "samples"


def test_inspect_text(env: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(capsys, "inspect", env.bundle)
    assert (code, err) == (0, "")
    assert out.startswith("bundle    samples  id ")
    assert f"{signature_path(0)}  {public_key_of(env.key).fingerprint}  valid" in out
    assert "images (3):" in out
    assert "repos (1):" in out


def test_verify_json(env: World, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = in_process(capsys, "verify", env.bundle, "--trust", env.pub_path, "--json")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["ok"] is True
    assert doc["members"] == len(env.export.manifest.members)
    assert doc["signers"] == [public_key_of(env.key).fingerprint]


def test_in_process_errors_use_the_same_exit_codes(
    env: World, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = in_process(
        capsys, "verify", tampered_copy(env, tmp_path), "--trust", env.pub_path
    )
    assert code == EXIT_INTEGRITY
    assert out == ""
    assert err.startswith(PREFIX)


def test_import_of_tampered_bundle_exits_1_and_writes_nothing(env: World, tmp_path: Path) -> None:
    bundle = tmp_path / "t.airbundle"
    data = env.bundle.read_bytes()
    bundle.write_bytes(data[: len(data) - 100])
    oci, git = tmp_path / "oci", tmp_path / "git"
    proc = cli("import", bundle, "--trust", env.pub_path, "--registry", f"oci:{oci}", "--git", git)
    assert proc.returncode == EXIT_INTEGRITY
    assert error_line(proc).startswith(f"{bundle}: ")
    index = oci / "index.json"
    assert not index.exists() or json.loads(index.read_text())["manifests"] == []
    assert list(git.glob("*.git")) == []
    assert temp_files(oci, git) == []
    assert GIT_MEMBER not in snapshot(git)


# --- keys -----------------------------------------------------------------------------


def test_key_generate_with_passphrase_makes_an_encrypted_key(env: World, tmp_path: Path) -> None:
    ssh_keygen = require_tool("ssh-keygen")
    key = tmp_path / "enc"
    proc = cli("key", "generate", key, AIRBUNDLE_PASSPHRASE="s3cret pass")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert proc.stdout.startswith(f"wrote {key} and {key}.pub (SHA256:")
    assert key.stat().st_mode & 0o077 == 0
    public = (tmp_path / "enc.pub").read_text().split()
    derived = subprocess.run(
        [ssh_keygen, "-y", "-P", "s3cret pass", "-f", str(key)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert derived.returncode == 0, derived.stderr
    assert derived.stdout.split()[:2] == public[:2]
    wrong = subprocess.run(
        [ssh_keygen, "-y", "-P", "", "-f", str(key)], capture_output=True, text=True, check=False
    )
    assert wrong.returncode != 0  # encrypted: no key without the passphrase

    out = tmp_path / "out" / "b.airbundle"
    out.parent.mkdir(exist_ok=True)
    proc = cli("export", env.spec, "-o", out, "--key", key)
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc) == f"{key} is encrypted and a passphrase is needed\n"
    assert list(out.parent.iterdir()) == []

    passfile = tmp_path / "pass.txt"
    passfile.write_text("wrong\n")
    proc = cli("export", env.spec, "-o", out, "--key", key, "--passphrase-file", passfile)
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc) == f"wrong passphrase for {key}\n"
    assert list(out.parent.iterdir()) == []

    proc = cli(
        "export", env.spec, "-o", out, "--key", key, "-q", AIRBUNDLE_PASSPHRASE="s3cret pass"
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    proc = cli("verify", out, "--trust", f"{key}.pub", "-q")
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", "")


def test_key_generate_without_passphrase_is_readable_by_ssh_keygen(tmp_path: Path) -> None:
    ssh_keygen = require_tool("ssh-keygen")
    key = tmp_path / "plain"
    assert cli("key", "generate", key, "--comment", "ci@example").returncode == 0
    derived = subprocess.run(
        [ssh_keygen, "-y", "-P", "", "-f", str(key)], capture_output=True, text=True, check=False
    )
    assert derived.returncode == 0, derived.stderr
    assert (tmp_path / "plain.pub").read_text().split() == [
        *derived.stdout.split()[:2],
        "ci@example",
    ]


@pytest.mark.parametrize("existing", ["key", "pub"])
def test_key_generate_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    key = tmp_path / "k"
    target = key if existing == "key" else tmp_path / "k.pub"
    target.write_text("precious\n")
    before = snapshot(tmp_path)
    proc = cli("key", "generate", key)
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc) == (f"{key} or {key}.pub already exists; refusing to overwrite a key\n")
    assert snapshot(tmp_path) == before
    assert temp_files(tmp_path) == []


def test_key_generate_force_overwrites(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert cli("key", "generate", key).returncode == 0
    old = key.read_bytes()
    proc = cli("key", "generate", key, "--force")
    assert proc.returncode == EXIT_OK, proc.stderr
    assert key.read_bytes() != old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]


def test_no_airbundle_on_the_test_path() -> None:
    """Tests cannot lean on a stray install: conftest removes every PATH folder
    holding an `airbundle`, so only the checkout's own (AIRBUNDLE) runs."""
    import shutil

    assert shutil.which("airbundle") is None
    proc = subprocess.run([*AIRBUNDLE, "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("airbundle ")


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_shows_the_traceback_before_or_after_the_command(
    where: str, tmp_path: Path
) -> None:
    args = ["verify", str(tmp_path / "none.airbundle"), "--trust", str(tmp_path / "none.pub")]
    argv = ["-v", *args] if where == "before" else [*args, "-v"]
    proc = subprocess.run([*AIRBUNDLE, *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback (most recent call last)" in proc.stderr
    assert "airbundle: error: cannot read trust file" in proc.stderr


def test_quiet_before_the_command_silences_it(tmp_path: Path) -> None:
    proc = subprocess.run(
        [*AIRBUNDLE, "-q", "key", "generate", str(tmp_path / "k")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")
    assert (tmp_path / "k.pub").is_file()


@pytest.mark.parametrize("ssh_keygen", [False, True])
def test_a_private_key_given_to_trust_is_named_as_such(ssh_keygen: bool, tmp_path: Path) -> None:
    key = tmp_path / "release"
    if ssh_keygen:
        require_tool("ssh-keygen")
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    else:
        subprocess.run([*AIRBUNDLE, "key", "generate", str(key)], check=True, capture_output=True)
    proc = subprocess.run(
        [*AIRBUNDLE, "verify", str(tmp_path / "b.airbundle"), "--trust", str(key)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"{key} is a private key, not a trust file" in proc.stderr
    assert f"pass the public key ({key}.pub)" in proc.stderr
    assert "OPENSSH" not in proc.stderr


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("https://127.0.0.1:5001/dock", "without a scheme, as HOST[:PORT][/PREFIX]"),
        ("http://registry.internal/mirror", "give the registry without a scheme"),
        ("myregistry/mirror", "would be read as a Docker Hub namespace"),
    ],
)  # fmt: skip
def test_registry_target_errors_quote_only_what_was_typed(
    target: str, message: str, env: World, tmp_path: Path
) -> None:
    proc = cli("import", env.bundle, "--trust", env.pub_path, "--registry", target,
               "--state-dir", tmp_path / "state")  # fmt: skip
    assert proc.returncode == EXIT_USAGE
    error = error_line(proc)
    assert f"--registry {target!r}: " in error and message in error
    assert "/x'" not in error  # nothing the user did not type (it once said 'https:/x')
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize("command", ["import", "serve"])
def test_a_layout_folder_other_tools_cannot_name_is_refused(
    command: str, env: World, tmp_path: Path
) -> None:
    target = f"oci:{tmp_path / 'images'}:foo"
    if command == "import":
        proc = cli("import", env.bundle, "--trust", env.pub_path, "--registry", target)
    else:
        proc = cli("serve", "--registry", target, "--listen", "127.0.0.1:0")
    assert proc.returncode == EXIT_USAGE
    assert "contains ':', which other tools cannot address" in error_line(proc)
    assert list(tmp_path.iterdir()) == []


def test_export_refuses_an_existing_bundle_unless_forced(env: World, tmp_path: Path) -> None:
    out = tmp_path / "b.airbundle"
    out.write_bytes(b"the bundle imported last week")
    proc = cli("export", env.spec, "-o", out, "--key", env.key_path, "--no-cache")
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc).startswith(f"{out} exists already\n  hint: choose another name")
    assert out.read_bytes() == b"the bundle imported last week"
    forced = cli("export", env.spec, "-o", out, "--key", env.key_path, "--no-cache", "--force")
    assert forced.returncode == EXIT_OK, forced.stderr
    assert out.read_bytes().startswith(b"\x5a\x2a\x4d\x18")  # a bundle's header now


def test_export_force_replaces_a_volume_set_with_a_single_file(
    env: World, tmp_path: Path
) -> None:
    out = tmp_path / "b.airbundle"
    split = cli("export", env.spec, "-o", out, "--key", env.key_path, "--no-cache",
                "--split-size", "40k")  # fmt: skip
    assert split.returncode == EXIT_OK, split.stderr
    assert (tmp_path / "b.airbundle.volumes").is_file()
    again = cli("export", env.spec, "-o", out, "--key", env.key_path, "--no-cache")
    assert again.returncode == EXIT_USAGE
    assert "b.airbundle.volumes exists already" in error_line(again)
    forced = cli("export", env.spec, "-o", out, "--key", env.key_path, "--no-cache", "--force")
    assert forced.returncode == EXIT_OK, forced.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.airbundle"]


@pytest.mark.parametrize("command", ["export", "import"])
def test_a_channel_the_manifest_cannot_hold_is_refused_up_front(
    command: str, env: World, tmp_path: Path
) -> None:
    if command == "export":
        proc = cli("export", env.spec, "-o", tmp_path / "b.airbundle", "--key", env.key_path,
                   "--channel", "bad channel")  # fmt: skip
    else:
        proc = cli("import", env.bundle, "--trust", env.pub_path, "--channel", "bad channel",
                   "--registry", f"oci:{tmp_path / 'images'}")  # fmt: skip
    assert proc.returncode == EXIT_USAGE
    assert error_line(proc).startswith("invalid channel 'bad channel': use letters, digits")
    assert list(tmp_path.iterdir()) == []


# What verify leaves unloaded (issue 14: start-up of verify of a tiny bundle
# <= 0.1 s; bench/startup.py measures it, this holds the structure). jsonschema
# (with referencing, attrs) is loaded only for a document the quick check turns
# down; the registry client and the export/import pipelines not at all.
NOT_FOR_VERIFY = (
    "jsonschema",
    "referencing",
    "attrs",
    "urllib3",
    "airbundle.ops.export",
    "airbundle.adapters.parity",
)


def test_verify_of_a_good_bundle_loads_no_jsonschema_nor_other_commands_code(env: World) -> None:
    probe = (
        "import sys\n"
        "from airbundle.cli import main\n"
        "try:\n"
        f"    main(['verify', {str(env.bundle)!r}, '--trust', {str(env.pub_path)!r}, '-q'])\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
        f"print(sorted(m for m in {NOT_FOR_VERIFY!r} if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("args", "commands"),
    [
        (["verify", "B", "--trust", "K"], ["verify"]),
        (["-q", "-v", "import", "B"], ["import"]),
        (["mirror-config", "--help"], ["mirror-config"]),
        (["key", "generate", "K"], ["key"]),
        ([], "all"),
        (["--help"], "all"),
        (["--version", "verify"], "all"),
        (["verifyy"], "all"),
    ],
)
def test_the_cli_builds_only_the_command_it_runs(args: list[str], commands: object) -> None:
    """typer builds a click command for each registered one: a named command
    gets an app with that one alone; the top level keeps them all for its help."""
    import typer

    from airbundle import cli as cli_module

    one = cli_module._app_for(args)
    built = sorted(typer.main.get_command(one).commands)  # type: ignore[attr-defined]
    everything = sorted(typer.main.get_command(cli_module.app).commands)  # type: ignore[attr-defined]
    assert built == (everything if commands == "all" else commands)
