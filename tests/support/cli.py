"""The checkout's CLI as a person meets it: one run through a subprocess (optionally
with stderr on a pseudo-terminal, where progress bars draw) and the tree of commands
its `--help` lists."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
from collections.abc import Mapping
from pathlib import Path

from support.env import AIRBUNDLE, clean_env

# Help rendered as on an 80-column terminal, whatever the one running the tests.
HELP_ENV = {"COLUMNS": "80", "TERM": "dumb"}


def run(
    *args: object,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """`airbundle ARGS`: exit code, stdout and stderr as text, never raising. A
    passphrase the test runner's environment holds is not passed on (a test that
    wants one gives it in ``env``)."""
    environ = clean_env({**HELP_ENV, **(env or {})})
    if "AIRBUNDLE_PASSPHRASE" not in (env or {}):
        environ.pop("AIRBUNDLE_PASSPHRASE", None)
    return subprocess.run(
        [*AIRBUNDLE, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=environ,
        timeout=timeout,
        check=False,
    )


def refused(proc: subprocess.CompletedProcess[str], code: int, *fragments: str) -> str:
    """The one `airbundle: error:` line, holding every fragment, after exit `code`
    and no traceback: how a refusal of bad input looks."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("airbundle: error: ")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def run_on_a_terminal(*args: object, timeout: float = 300) -> tuple[int, str]:
    """`airbundle ARGS` with stderr on a pseudo-terminal (stdout discarded): the
    exit code and everything drawn on the terminal."""
    main, child = pty.openpty()
    # A fresh pty is 0 columns wide, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(child, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        proc = subprocess.Popen(
            [*AIRBUNDLE, *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=child,
            env=clean_env(HELP_ENV),
        )
        os.close(child)
        chunks = []
        while True:
            try:
                data = os.read(main, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not data:
                break
            chunks.append(data)
        code = proc.wait(timeout=timeout)
    finally:
        os.close(main)
    return code, b"".join(chunks).decode("utf-8", "replace")


_SECTION = re.compile(r"^Commands:\n((?:  .*\n?)+)", re.MULTILINE)


def listed_commands(help_text: str) -> list[str]:
    """The command names in a `--help` text's Commands section."""
    match = _SECTION.search(help_text)
    if match is None:
        return []
    return [line.split()[0] for line in match.group(1).splitlines() if line[2:3] != " "]


def command_tree() -> list[tuple[str, ...]]:
    """Every command and group airbundle has, as argv prefixes: (), ("export",),
    ("key",), ("key", "generate"), ... (read from --help, as a person would)."""
    found: list[tuple[str, ...]] = []
    pending: list[tuple[str, ...]] = [()]
    while pending:
        command = pending.pop(0)
        found.append(command)
        proc = run(*command, "--help")
        assert proc.returncode == 0, (command, proc.stderr)
        pending += [(*command, name) for name in listed_commands(proc.stdout)]
    return found
