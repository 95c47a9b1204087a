"""image/pull.py: reading a registry's documents (indexes, manifests, configs) and
classifying a layer that cannot be unpacked. The inputs are what fuzzing found."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from image.layer_fetch import IntegrityError
from image.pull import (
    ImagePuller,
    ManifestError,
    Platform,
    PullSettings,
    config_content,
    manifest_content,
    platform_manifest,
)
from image.registries import RegistriesConf
from image.registry_client import PullWatch, RegistryClient, Repository
from image.store import ImageStore

NODE = Platform("linux", "amd64")
DIGEST = "sha256:" + "ab" * 32
AMD64 = {"os": "linux", "architecture": "amd64"}


def _doc(value: Any) -> bytes:
    return json.dumps(value).encode()


def test_the_nodes_manifest_is_chosen_from_an_index() -> None:
    index = {
        "manifests": [
            {"digest": "sha256:" + "cd" * 32, "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": DIGEST, "platform": AMD64},
        ]
    }
    assert platform_manifest(_doc(index), "q.io/app:v1", NODE) == DIGEST


@pytest.mark.parametrize(
    ("index", "problem"),
    [
        # Found by fuzzing (python -m tests.fuzz manifest): a KeyError.
        ({"manifests": [{"digbat": DIGEST, "platform": AMD64}]}, "no valid digest"),
        ({"manifests": [{"digest": "../../blobs/x", "platform": AMD64}]}, "no valid digest"),
        ({"manifests": [{"digest": 7, "platform": AMD64}]}, "no valid digest"),
        ({"manifests": ["sha256:ab"]}, "entry 0 is not a descriptor"),
        ({"manifests": [{"digest": DIGEST, "platform": "linux"}]}, "entry 0 is not a descriptor"),
        ({"manifests": [{"platform": {"os": ["linux"]}}]}, "entry 0 is not a descriptor"),
    ],
)
def test_a_malformed_index_is_a_manifest_error(index: object, problem: str) -> None:
    with pytest.raises(ManifestError) as err:
        platform_manifest(_doc(index), "q.io/app:v1", NODE)
    assert problem in str(err.value) and "q.io/app:v1" in str(err.value)


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ({"config": {"digest": DIGEST}, "layers": ["sha256:ab"]}, "layer 0 is not an object"),
        ({"config": {}, "layers": []}, "the config has no valid digest"),
    ],
)
def test_a_malformed_manifest_is_a_manifest_error(manifest: object, problem: str) -> None:
    with pytest.raises(ManifestError) as err:
        manifest_content(_doc(manifest), "q.io/app:v1")
    assert problem in str(err.value)


def test_a_config_whose_rootfs_is_no_object_is_a_manifest_error() -> None:
    with pytest.raises(ManifestError, match="the config lists 0 layers"):
        config_content(_doc({"rootfs": ["sha256:ab"]}), "q.io/app:v1", 1)


# Found by fuzzing (python -m tests.fuzz layer): gzip whose deflate data is corrupt makes
# isal raise IsalError, which the puller let out unclassified.
CORRUPT_GZIP = base64.b64decode(
    "H4sIAAAAAAACA+2Yu07DMBSGPfcpjNh9iy8slZBYisSAxMRoiEsjUhsSt+TxcdMMtEgVDI56OV8UnShLFH3+"
    "jy8uvlKUGZYwSvU1sV/7Z14YYSQf3mulNsIKjcCqjbZJn0SXiUv+F6GN3i5dTv9ayk3lRrGfdUDt+uesKAzC"
    "DPxnx4fSTRCALjj/deXfc/f/If9/6/+cc80QFrkbE+R/2/9tUx6Zf8MLhPkYkxP4p+RrQd6Cd8fjP10K5v8x"
    "WNum99/f4ePzSPwrKcD/GJRuTefVPGTv/7+9H9j/Gck0whr8j+Lfr+o6u3+t/5N/w1P+i1Pyv/0PPtTiVPwT"
    "Sujto+1mzpauyeefHcq/FjtjIfkXm/VfB/nPjrjBT3ez+4dn0tkYG7JqXUN8iG7aTYTAy1gt3TTtxgaIgsOC"
    "s+Kl8jSGkLv/y4Pnv6nZ78//UsP6bwyur+hmCLQLyDIBAAAAAAAAAAAAAACcLd+4o34CACgAAA=="
)


class _Response:
    """The body of a blob response, as the puller reads it."""

    def __init__(self, data: bytes) -> None:
        self._body = io.BytesIO(data)

    def read(self, size: int = -1) -> bytes:
        return self._body.read(size)

    def release_conn(self) -> None:
        pass


class _OneBlob:
    where = "registry.test/app"

    def __init__(self, data: bytes) -> None:
        self.data = data

    def blob(self, digest: str, cancel: threading.Event | None = None) -> _Response:
        return _Response(self.data)


def test_a_layer_whose_gzip_data_is_corrupt_is_data_loss(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "store")
    store.open()
    puller = ImagePuller(
        store,
        cast(RegistryClient, None),
        RegistriesConf,
        tmp_path / "auth.json",
        PullSettings(),
    )
    digest = "sha256:" + hashlib.sha256(CORRUPT_GZIP).hexdigest()
    try:
        with pytest.raises(IntegrityError) as err:
            puller._fetch_layer_once(
                cast(Repository, _OneBlob(CORRUPT_GZIP)),
                digest,
                len(CORRUPT_GZIP),
                DIGEST,
                DIGEST,
                PullWatch(60),
                lambda _count: None,
            )
    finally:
        puller._executor.shutdown()
    assert "cannot be unpacked" in str(err.value) and digest in str(err.value)
    assert list((tmp_path / "store" / "tmp").iterdir()) == []
