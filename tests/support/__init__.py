"""Test support for airbundle: real servers on loopback, namespaces, sample content
and the helpers the tests share. Nothing here imports conftest (conftest imports
this package), and nothing is mocked.

Tests import what they use from the module that owns it
(``from support.registry import Registry``); pytest loads :mod:`support.plugin`
and :mod:`support.fixtures` through tests/conftest.py.

Layout
------

Where the tests run
    :mod:`support.env`          checkout paths, ``AIRBUNDLE`` (the checkout's CLI),
                                ``require_tool`` with install hints, hermetic and
                                clean environments (no credentials, proxies, GIT_*)
    :mod:`support.keys`         ``KeyPair``, ``make_key``
    :mod:`support.cli`          ``run`` (the CLI as a subprocess, 80 columns), ``run_on_a_terminal``
                                (stderr on a pty), ``command_tree`` (every command, from --help)

pytest wiring
    :mod:`support.plugin`       hooks: no skips, the ``integration`` marker, PATH
    :mod:`support.fixtures`     shared fixtures: samples, keys, one per server kind
    :mod:`support.integration`  ``starts_servers`` (fixture decorator) and the guard
                                that fails an unmarked test starting a server

Building blocks for servers
    :mod:`support.net`          ``LOOPBACK``, free ports, ``http_request``,
                                ``TEST_CREDS``, Basic auth, htpasswd files
    :mod:`support.process`      ``Process`` (a daemon in its own process group),
                                ``Server`` (the base class: cleanups, free-port start
                                with retry), ``ServerError``, threaded HTTP servers
    :mod:`support.pki`          a throw-away CA issuing server and client certificates
    :mod:`support.openssl_pki`  a CA and server certificate made by the openssl CLI

One module per server kind
    :mod:`support.registry`     CNCF distribution: plain, Basic, TLS, mTLS, token auth;
                                with an openssl-made certificate; with more config
    :mod:`support.token_server` the Docker token flow behind a token-auth registry
    :mod:`support.git_daemon`   ``git daemon``; ``init_bare`` for every git server
    :mod:`support.git_http`     git smart HTTP: nginx + fcgiwrap + git http-backend
    :mod:`support.sshd`         git over ssh through OpenSSH's sshd
    :mod:`support.proxy`        a recording forward proxy (loopback only)
    :mod:`support.fault_proxy`  a fault-injecting reverse proxy in front of a registry
    :mod:`support.strict_proxy` a proxy refusing what stricter registries refuse
    :mod:`support.pull_through` docker-registry as a pull-through cache
    :mod:`support.serve`        ``airbundle serve`` itself
    :mod:`support.serve_bundle` ``airbundle serve --bundle`` on read-only media; bundles
                                made from layouts, a member's bytes on the media
    :mod:`support.containerd`   a containerd daemon of its own, driven with ``ctr``

Namespaces
    :mod:`support.netns`        a user + network namespace with only loopback (and
                                one with a mount namespace too, for containerd)
    :mod:`support.tmpfs`        a 200 KiB tmpfs in a user + mount namespace (disk
                                full), driven by :mod:`support.tmpfs_driver`

Clients and judges
    :mod:`support.skopeo`       skopeo against a ``Registry``: seed, inspect, raw bytes
    :mod:`support.podman`       podman with storage and configuration of its own
    :mod:`support.chromium`     headless Chromium loading a page with a fresh profile
    :mod:`support.kustomize`    kustomize's images: rules, to judge what mirror-config
                                writes
    :mod:`support.sigstore_signer` cosign-style signatures made with openssl, pushed
                                by hand
    :mod:`support.judges`       what an import left: tags, manifests and blobs asked
                                of the registry directly; the import state files

Content and flows
    :mod:`support.bundles`      the one set of spec / export / import / verify
                                helpers (library API), ``sha256``, a fast-retry
                                transport for fault tests
    :mod:`support.oci`          media types; an OCI layout with one seeded layer
    :mod:`support.layout_writer` OCI layouts written through import's own target
    :mod:`support.conformance`  the distribution-spec conformance data as a layout
    :mod:`support.crafting`     the session ``world`` bundle; crafting bundles and tar
                                headers with one thing wrong on purpose
    :mod:`support.legacy`       bundles as airbundle wrote them before the seek table
    :mod:`support.sigkill`      SIGKILL of the CLI at a point of its conversation
                                with a fault proxy

Adding a server kind
--------------------

1. A module ``support/<kind>.py`` with a class deriving from
   :class:`support.process.Server`: start in ``__init__`` (``_start_process`` picks a
   free port on 127.0.0.1 and retries when it loses the race), register cleanups
   with ``_on_stop``, fail through ``require_tool`` when a tool is missing. The base
   class calls :func:`support.integration.starting`, so only marked tests start it.
   Something that is not a ``Server`` (a namespace, a proxy thread) calls
   ``starting`` itself.
2. Its fixture in :mod:`support.fixtures`, under ``@pytest.fixture`` and
   ``@starts_servers``: tests using it get the ``integration`` marker.
3. A line in the layout above, and a test in tests/test_servers.py that an
   independent client can use it.
"""
