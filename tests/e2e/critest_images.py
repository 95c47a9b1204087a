"""The images critest pulls, built here from Debian's busybox and pushed to a registry of
the run's own under their real names (`registry.k8s.io/...`, `gcr.io/...`), which
skiff's registries.conf sends to it (`location` rewriting, so nothing leaves the host).

What each image must hold and do is what critest's specs check of it: ids apart from
one another except where a spec wants one image under several names, the users and
groups the security-context specs look up, an nginx and an httpd that answer on their
ports (busybox httpd behind the process names the specs look for), a setuid program
that prints its effective uid, and busybox applets as hard links.
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.integration import images as img

# The registries critest names, each a path prefix in the test registry.
REGISTRIES = ("registry.k8s.io", "gcr.io", "k8s.gcr.io")
E2E = "registry.k8s.io/e2e-test-images"
CRI_TOOLS = "gcr.io/k8s-staging-cri-tools"
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

ETC_PASSWD = (
    "root:x:0:0:root:/root:/bin/sh\n"
    "daemon:x:1:1:daemon:/usr/sbin:/bin/false\n"
    "bin:x:2:2:bin:/bin:/bin/false\n"
    "www-data:x:33:33:www-data:/var/www:/bin/false\n"
    "nobody:x:65534:65534:nobody:/home:/bin/false\n"
)
ETC_GROUP = "root:x:0:\ndaemon:x:1:\nbin:x:2:\nwww-data:x:33:\nnogroup:x:65534:\n"

# Debian's busybox has no pgrep: the specs only ask it for processes by name.
PGREP = """#!/bin/sh
# pgrep (busybox here lacks it): the pids whose command name matches the pattern $1.
found=1
for dir in /proc/[0-9]*; do
  name=$(cat "$dir/comm" 2>/dev/null) || continue
  if echo "$name" | grep -Eq -- "$1"; then echo "${dir#/proc/}"; found=0; fi
done
exit $found
"""

# nginx's stand-in: busybox's shell under the name `nginx`, its pid file, and busybox
# httpd serving the page. The specs look for an `nginx` process, a "master process"
# command line and the pid in /var/run/nginx.pid.
NGINX = """#!/bin/sh
exec -a "nginx: master process nginx $* /bin/sh" /usr/lib/nginx/nginx /etc/nginx/master.sh
"""
NGINX_MASTER = """echo $$ > /var/run/nginx.pid
httpd -f -p "${NGINX_PORT:-80}" -h /usr/share/nginx/html &
worker=$!
trap 'kill $worker 2>/dev/null; rm -f /var/run/nginx.pid; exit 0' TERM INT QUIT
wait $worker
"""
HTTPD_FOREGROUND = """#!/bin/sh
echo "httpd: busybox httpd standing in for Apache httpd, serving on :80" >&2
httpd -f -p 80 -h /usr/local/apache2/htdocs &
worker=$!
trap 'kill $worker 2>/dev/null; exit 0' TERM INT QUIT WINCH
wait $worker
"""
PAUSE = """#!/bin/sh
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
"""
# What the nonewprivs image runs: its effective uid, in one write (a setuid-root file).
NNP_SOURCE = """#include <stdio.h>
#include <unistd.h>
int main(void) { printf("Effective uid: %d\\n", geteuid()); return 0; }
"""


def _file(path: str, content: str, mode: int = 0o644) -> img.TarEntry:
    return img.regular_file(path, content, mode=mode)


@functools.cache
def base_layer() -> img.Layer:
    """busybox (every applet a hard link), its libc, users and groups, pgrep and ipcs."""
    replaced = {"etc/passwd", "etc/group"}
    entries = [e for e in img.busybox_entries() if e.path not in replaced]
    entries += [
        _file("etc/passwd", ETC_PASSWD),
        _file("etc/group", ETC_GROUP),
        img.directory("var/run"),
        img.directory("usr/sbin"),
        img.directory("usr/local"),
        img.directory("usr/local/bin"),
        _file("usr/bin/pgrep", PGREP, 0o755),
    ]
    entries += img.host_program("usr/bin/ipcs", Path("/usr/bin/ipcs"), have=entries)
    return img.build_layer(entries)


def _image(
    *files: img.TarEntry,
    cmd: tuple[str, ...] | None = ("sh",),
    entrypoint: tuple[str, ...] | None = None,
    env: tuple[str, ...] = (PATH_ENV,),
    user: str = "",
    working_dir: str = "",
) -> img.Image:
    """The base plus one layer of `files`, which also tells the images apart."""
    return img.build_image(
        [base_layer(), img.build_layer(files)],
        run=img.RunConfig(
            env=env, cmd=cmd, entrypoint=entrypoint, user=user, working_dir=working_dir
        ),
        history=["busybox base", "critest image"],
    )


def _marker(name: str) -> img.Image:
    return _image(_file(name, ""))


def _nginx(port: int) -> img.Image:
    return _image(
        _file("usr/sbin/nginx", NGINX, 0o755),
        img.symlink("usr/lib/nginx/nginx", "/bin/busybox"),
        _file("etc/nginx/master.sh", NGINX_MASTER),
        _file("usr/share/nginx/html/index.html", "<h1>Welcome to nginx!</h1>\n"),
        cmd=("nginx", "-g", "daemon off;"),
        env=(PATH_ENV, f"NGINX_PORT={port}"),
    )


def _httpd() -> img.Image:
    return _image(
        _file("usr/local/bin/httpd-foreground", HTTPD_FOREGROUND, 0o755),
        _file(
            "usr/local/apache2/htdocs/index.html", "<html><body><h1>It works!</h1></body></html>\n"
        ),
        cmd=("httpd-foreground",),
        working_dir="/usr/local/apache2",
    )


def _nonewprivs(workdir: Path) -> img.Image:
    source = workdir / "nnp.c"
    source.write_text(NNP_SOURCE)
    binary = workdir / "nnp"
    subprocess.run(["gcc", "-O2", "-o", str(binary), str(source)], check=True, timeout=120)
    nnp = img.host_file("usr/local/bin/nnp", binary, mode=0o4755)
    return _image(nnp, cmd=("nnp",))


def _predefined_group() -> img.Image:
    passwd = ETC_PASSWD + "default-user:x:1000:1000:Linux User,,,:/home/default-user:/bin/sh\n"
    group = ETC_GROUP + "default-user:x:1000:\ngroup-defined-in-image:x:50000:default-user\n"
    return _image(
        _file("etc/passwd", passwd),
        _file("etc/group", group),
        img.directory("home/default-user", uid=1000, gid=1000),
        user="1000",
    )


def critest_images(workdir: Path) -> Iterator[tuple[str, img.Image]]:
    """(name:tag as critest pulls it, image) for every image of the validation suite
    but the one pinned by an upstream digest."""
    yield f"{E2E}/busybox:1.29-2", _marker(".busybox-1.29-2")
    yield f"{E2E}/nginx:1.14-2", _nginx(80)
    yield f"{E2E}/httpd:2.4.39-4", _httpd()
    yield f"{E2E}/nonewprivs:1.3", _nonewprivs(workdir)
    pause = _image(
        _file("pause", PAUSE, 0o755),
        cmd=None,
        entrypoint=("/pause",),
        user="65535:65535",
        working_dir="/",
    )
    yield "registry.k8s.io/pause:3.9", pause
    yield "k8s.gcr.io/pause:3.9", pause
    yield f"{CRI_TOOLS}/hostnet-nginx-amd64:latest", _nginx(12003)
    yield f"{CRI_TOOLS}/test-image-tag:test", _marker("test")
    yield f"{CRI_TOOLS}/test-image-tag:all", _marker("all")
    yield f"{CRI_TOOLS}/test-image-latest:latest", _marker("test-image-latest")
    for i in (1, 2, 3):
        yield f"{CRI_TOOLS}/test-image-{i}:latest", _marker(f"test-image-{i}")
    same = _marker("same-image")
    for i in (1, 2, 3):
        yield f"{CRI_TOOLS}/test-image-tags:{i}", same
    for name, user in (
        ("uid", "1002"),
        ("username", "www-data"),
        ("uid-group", "1003:1004"),
        ("username-group", "www-data:1004"),
    ):
        yield f"{CRI_TOOLS}/test-image-user-{name}:latest", _image(user=user)
    yield f"{CRI_TOOLS}/test-image-predefined-group:latest", _predefined_group()


def push_critest_images(registry: img.RegistryEndpoint) -> int:
    """Pushes every image under `<registry host>/<real name>`; returns how many."""
    count = 0
    with tempfile.TemporaryDirectory(prefix="critest-images-") as workdir:
        for name, image in critest_images(Path(workdir)):
            repository, _, tag = name.rpartition(":")
            img.push(registry, repository, tag, image)
            count += 1
    return count


def registries_conf(registry_host: str) -> str:
    """Each registry critest names rewritten to its path in the test registry."""
    return "".join(
        f'[[registry]]\nprefix = "{name}"\nlocation = "{registry_host}/{name}"\ninsecure = true\n'
        for name in REGISTRIES
    )
