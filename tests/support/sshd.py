"""OpenSSH's ``sshd`` on loopback serving git over ssh (public-key login only,
a throw-away host key pinned in a known_hosts file)."""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path

from support.env import require_tool
from support.git_daemon import init_bare, sibling_workdir
from support.net import LOOPBACK, port_open
from support.process import Server


class GitSshServer(Server):
    """OpenSSH's sshd on 127.0.0.1:PORT serving git over ssh for the current user,
    with a throw-away host key and client key (public-key login only).

    ``ssh_command`` is the GIT_SSH_COMMAND that reaches it: the client key, a
    known_hosts file holding only this host key, no agent, no user config.
    ``url(name)`` is ssh://USER@127.0.0.1:PORT/BASE/NAME.
    """

    def __init__(
        self, base_dir: Path, *, workdir: Path | None = None, timeout: float = 10.0
    ) -> None:
        super().__init__()
        sshd = require_tool("sshd")
        keygen = require_tool("ssh-keygen")
        self.ssh = require_tool("ssh")
        self.base_dir = base_dir.resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir or sibling_workdir(self.base_dir, "sshd")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.user = pwd.getpwuid(os.geteuid()).pw_name
        host_key = self.workdir / "host_ed25519"
        self.client_key = self.workdir / "client_ed25519"
        for key in (host_key, self.client_key):
            subprocess.run(
                [keygen, "-q", "-t", "ed25519", "-N", "", "-C", "airbundle-test", "-f", str(key)],
                check=True,
                capture_output=True,
            )
        authorized = self.workdir / "authorized_keys"
        authorized.write_text(self.client_key.with_suffix(".pub").read_text())
        authorized.chmod(0o600)
        self.known_hosts = self.workdir / "known_hosts"
        if os.geteuid() == 0:
            # sshd started as root wants its privilege-separation folder.
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
        self.log = self.workdir / "sshd.log"
        config = self.workdir / "sshd_config"

        def argv(port: int) -> list[str]:
            config.write_text(
                f"Port {port}\nListenAddress {LOOPBACK}\nHostKey {host_key}\n"
                f"PidFile {self.workdir / 'sshd.pid'}\nAuthorizedKeysFile {authorized}\n"
                "PubkeyAuthentication yes\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
                "PermitRootLogin prohibit-password\nAllowTcpForwarding no\n"
                "X11Forwarding no\nPrintMotd no\nLogLevel ERROR\n"
            )
            key_line = host_key.with_suffix(".pub").read_text().split()
            self.known_hosts.write_text(f"[{LOOPBACK}]:{port} {key_line[0]} {key_line[1]}\n")
            return [sshd, "-D", "-e", "-f", str(config)]

        self.process, self.port = self._start_process(
            argv, self.log, port_open, "sshd", timeout=timeout
        )

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def ssh_command(self) -> str:
        return (
            f"{self.ssh} -F /dev/null -i {self.client_key} -o IdentitiesOnly=yes "
            f"-o IdentityAgent=none -o UserKnownHostsFile={self.known_hosts} "
            "-o StrictHostKeyChecking=yes -o BatchMode=yes"
        )

    def url(self, name: str) -> str:
        return f"ssh://{self.user}@{self.host}{self.base_dir}/{name}"

    def init_bare(self, name: str) -> Path:
        return init_bare(self.base_dir, name)
