"""git smart HTTP on loopback: nginx -> fcgiwrap (unix socket) -> ``git
http-backend``, pushes enabled, optionally behind Basic auth."""

from __future__ import annotations

import grp
import http.client
import http.server
import os
import pwd
import shutil
import subprocess
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

import pytest

from support.env import clean_env, require_tool
from support.git_daemon import init_bare, sibling_workdir
from support.net import LOOPBACK, Creds, http_request, write_htpasswd
from support.process import Process, Server, log_tail, short_socket_dir


def _nginx_user_directive() -> str:
    """nginx drops workers to ``nobody`` when started as root; keep them as the
    current user so they can reach the fcgiwrap socket and our temp folders."""
    if os.geteuid() != 0:
        return ""  # the directive is ignored (with a warning) unless run as root
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    return f"user {user} {group};"


class GitHttpServer(Server):
    """nginx on 127.0.0.1:PORT -> fcgiwrap (unix socket) -> ``git http-backend``.

    Serves every repository under ``base_dir`` (GIT_HTTP_EXPORT_ALL), pushes
    enabled (``http.receivepack=true`` through GIT_CONFIG_COUNT, so the repos'
    own config is left alone). ``htpasswd={"user": "pass"}`` requires Basic auth
    for everything. nginx's files (conf, logs, temp) live in ``workdir``
    (default: a fresh folder beside base_dir).
    """

    BACKEND_CANDIDATES = (
        "/usr/lib/git-core/git-http-backend",
        "/usr/libexec/git-core/git-http-backend",
    )

    def __init__(
        self,
        base_dir: Path,
        *,
        htpasswd: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        timeout: float = 10.0,
    ) -> None:
        super().__init__()
        git = require_tool("git")
        self.nginx = require_tool("nginx")
        self.fcgiwrap = require_tool("fcgiwrap")
        self.backend = self._find_backend(git)
        self.base_dir = base_dir.resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir or sibling_workdir(self.base_dir, "git-http")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.users = dict(htpasswd or {})
        self.error_log = self.workdir / "error.log"
        self.access_log = self.workdir / "access.log"
        self.fcgi_log = self.workdir / "fcgiwrap.log"
        self.nginx_log = self.workdir / "nginx.log"
        self.htpasswd_file = (
            write_htpasswd(self.workdir / "htpasswd", self.users) if self.users else None
        )
        try:
            self._start_fcgiwrap(timeout)
            self.process, self.port = self._start_process(
                self._nginx_argv,
                self.nginx_log,
                self._ready,
                "nginx",
                timeout=timeout,
                env=clean_env(),
                cwd=self.workdir,
            )
        except BaseException:
            self.stop()
            raise

    def _find_backend(self, git: str) -> str:
        exec_path = subprocess.run(
            [git, "--exec-path"], capture_output=True, text=True, check=True
        ).stdout.strip()
        for candidate in (f"{exec_path}/git-http-backend", *self.BACKEND_CANDIDATES):
            if Path(candidate).exists():
                return candidate
        pytest.fail("git-http-backend not found: apt-get install git", pytrace=False)

    def _start_fcgiwrap(self, timeout: float) -> None:
        sock_dir, created = short_socket_dir(self.workdir)
        if created:
            self._on_stop(lambda: shutil.rmtree(sock_dir, ignore_errors=True))
        self.socket = sock_dir / "fcgiwrap.sock"
        proc = Process(
            [self.fcgiwrap, "-f", "-c", "4", "-s", f"unix:{self.socket}"],
            self.fcgi_log,
            env=clean_env(),
            cwd=self.workdir,
        )
        self._on_stop(proc.stop)
        proc.wait_ready(self.socket.exists, timeout, "fcgiwrap")
        self.fcgi_process = proc

    def _write_conf(self, port: int) -> Path:
        tmp = self.workdir / "tmp"
        tmp.mkdir(exist_ok=True)
        q = _nginx_quote
        auth = ""
        if self.htpasswd_file is not None:
            auth = (
                'auth_basic "airbundle-test-git";\n'
                f"            auth_basic_user_file {q(self.htpasswd_file)};"
            )
        params = {
            "SCRIPT_FILENAME": self.backend,
            "GIT_PROJECT_ROOT": str(self.base_dir),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_COUNT": "1",
            "GIT_CONFIG_KEY_0": "http.receivepack",
            "GIT_CONFIG_VALUE_0": "true",
            "HOME": str(self.workdir),
            "PATH": "/usr/local/bin:/usr/bin:/bin",
        }
        lines = [f"fastcgi_param {k} {q(v)};" for k, v in params.items()]
        lines += [
            f"fastcgi_param {k} {v};"
            for k, v in {
                "PATH_INFO": "$uri",
                "QUERY_STRING": "$query_string",
                "REQUEST_METHOD": "$request_method",
                "CONTENT_TYPE": "$content_type",
                "CONTENT_LENGTH": "$content_length",
                "REQUEST_URI": "$request_uri",
                "SERVER_PROTOCOL": "$server_protocol",
                "SERVER_NAME": "$server_name",
                "SERVER_PORT": "$server_port",
                "REMOTE_ADDR": "$remote_addr",
                "REMOTE_USER": "$remote_user",
                "HTTP_GIT_PROTOCOL": "$http_git_protocol",
                "HTTP_CONTENT_ENCODING": "$http_content_encoding",
            }.items()
        ]
        fastcgi = "\n            ".join(lines)
        conf = f"""\
{_nginx_user_directive()}
worker_processes 1;
events {{ worker_connections 128; }}
http {{
    access_log {q(self.access_log)};
    client_body_temp_path {q(tmp / "body")};
    fastcgi_temp_path {q(tmp / "fastcgi")};
    proxy_temp_path {q(tmp / "proxy")};
    uwsgi_temp_path {q(tmp / "uwsgi")};
    scgi_temp_path {q(tmp / "scgi")};
    client_max_body_size 0;
    server {{
        listen {LOOPBACK}:{port};
        server_name localhost;
        location / {{
            {auth}
            fastcgi_pass unix:{self.socket};
            fastcgi_read_timeout 300s;
            {fastcgi}
        }}
    }}
}}
"""
        path = self.workdir / "nginx.conf"
        path.write_text(conf)
        return path

    def _nginx_argv(self, port: int) -> list[str]:
        conf = self._write_conf(port)
        return [
            self.nginx,
            "-p",
            str(self.workdir),
            "-c",
            str(conf),
            "-e",
            str(self.error_log),
            "-g",
            f"daemon off; pid {self.workdir / 'nginx.pid'};",
        ]

    def _ready(self, port: int) -> bool:
        try:
            http_request(f"http://{LOOPBACK}:{port}/", timeout=1)
        except (OSError, http.client.HTTPException):
            return False
        return True

    @property
    def host(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def url(self, name: str, creds: Creds | None = None) -> str:
        auth = ""
        if creds is not None:
            user, password = (urllib.parse.quote(c, safe="") for c in creds)
            auth = f"{user}:{password}@"
        return f"http://{auth}{self.host}/{name}"

    def init_bare(self, name: str) -> Path:
        return init_bare(self.base_dir, name)

    def log_tail(self, lines: int = 20) -> str:
        return (
            f"--- nginx error.log ---\n{log_tail(self.error_log, lines)}\n"
            f"--- fcgiwrap ---\n{log_tail(self.fcgi_log, lines)}"
        )


def _nginx_quote(value: object) -> str:
    text = str(value)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
