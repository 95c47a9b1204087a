"""The images the e2e suite runs, built from Debian's busybox as every test image is, and
pushed to the registry the nodes pull from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.integration import images as img

WEB_PORT = 8080
WEB_PAGE = "served by skiff e2e\n"


@dataclass(frozen=True)
class E2EImages:
    busybox: str  # sh as its command
    web: str  # busybox httpd on WEB_PORT serving /www (index.html is WEB_PAGE)
    missing: str  # a name the registry does not hold


def web_image() -> img.Image:
    page = img.regular_file("www/index.html", WEB_PAGE)
    return img.busybox_image(
        extra_layers=[img.make_layer(img.build_tar([img.directory("www"), page]), "gzip")],
        run=img.RunConfig(
            entrypoint=("httpd", "-f", "-p", str(WEB_PORT), "-h", "/www"),
            cmd=None,
            exposed_ports=(f"{WEB_PORT}/tcp",),
        ),
    )


def push_e2e_images(registry: img.RegistryEndpoint, host: str) -> E2EImages:
    """Pushes the suite's images; `host` is the registry as the nodes name it."""
    img.push(registry, "e2e/busybox", "1", img.busybox_image())
    img.push(registry, "e2e/web", "1", web_image())
    return E2EImages(
        busybox=f"{host}/e2e/busybox:1",
        web=f"{host}/e2e/web:1",
        missing=f"{host}/e2e/no-such-image:1",
    )


def push_big_image(registry: img.RegistryEndpoint, host: str, workdir: Path, mb: int) -> str:
    """An image of `mb` MiB of random bytes (nothing compresses it), for image GC."""
    img.push(registry, "e2e/big", "1", img.big_image(workdir, total_mb=mb, files=2))
    return f"{host}/e2e/big:1"
