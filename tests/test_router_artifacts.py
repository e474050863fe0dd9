"""Router artifacts are arrays + a JSON manifest: nothing in a file can run code, and every tampering is refused."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from routers import artifact
from routers.base import Router, RouterError
from routers.baselines import BestSingleRouter
from routers.encoders.static import ENCODER_NAME as STATIC_ENCODER
from routers.encoders.static import MODEL_DIR, TABLE_SHA256, TABLE_VERSION
from routers.knn import KNNRouter
from tests.test_knn import CARDS, _clusters


class _Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def _knn(tmp_path: Path) -> tuple[KNNRouter, Path]:
    router = KNNRouter(k=3).fit(_clusters())
    return router, router.save(tmp_path / "knn.router")


def _rewrite(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    """Rewrite the artifact's zip with ``edit(entries)`` applied to its {name: bytes} entries."""
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    edit(entries)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
    path.write_bytes(buf.getvalue())


def test_a_pickled_payload_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    for blob in (pickle.dumps(_Payload(marker)), b"poolgate-router/1\n" + pickle.dumps({"state": _Payload(marker)})):
        path = tmp_path / "evil.router"
        path.write_bytes(blob)
        with pytest.raises(RouterError, match=r"evil\.router: not a poolgate router artifact"):
            Router.load(path)
    assert not marker.exists()


def test_an_object_array_smuggled_into_the_zip_is_refused_and_never_runs(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    _, path = _knn(tmp_path)
    evil = io.BytesIO()
    np.lib.format.write_array(evil, np.asarray([_Payload(marker)], dtype=object), allow_pickle=True)

    def swap(entries: dict[str, bytes]) -> None:
        manifest = json.loads(entries["manifest.json"])
        manifest["arrays"]["state.quality_"]["sha256"] = __import__("hashlib").sha256(evil.getvalue()).hexdigest()
        entries["manifest.json"] = json.dumps(manifest).encode()
        entries["arrays/state.quality_.npy"] = evil.getvalue()

    _rewrite(path, swap)
    with pytest.raises(RouterError, match="state.quality_"):
        Router.load(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda e: e.update({"arrays/state.quality_.npy": e["arrays/state.quality_.npy"][:-8] + b"\x7f" * 8}),
         "digest mismatch"),
        (lambda e: e.pop("arrays/state.quality_.npy"), "listed but missing"),
        (lambda e: e.pop("manifest.json"), "no manifest.json"),
        (lambda e: e.update({"manifest.json": b"{not json"}), "not valid JSON"),
        (lambda e: e.update({"manifest.json": json.dumps({**json.loads(e["manifest.json"]), "format_version": 1})
                             .encode()}), "format version 1"),
        (lambda e: e.update({"manifest.json": json.dumps({**json.loads(e["manifest.json"]),
                                                          "state": {"__dict__": [["k_", {"__class__": "os"}]]}})
                             .encode()}), "unknown tag"),
    ],
)
def test_a_tampered_artifact_is_refused_naming_the_file_and_the_reason(tmp_path: Path, edit, reason) -> None:
    _, path = _knn(tmp_path)
    _rewrite(path, edit)
    with pytest.raises(RouterError, match=rf"knn\.router: .*{reason}"):
        Router.load(path)


def test_compressed_entries_are_refused(tmp_path: Path) -> None:
    _, path = _knn(tmp_path)
    with zipfile.ZipFile(path) as zf:
        entries = {n: zf.read(n) for n in zf.namelist()}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, blob in entries.items():
            zf.writestr(name, blob)
    with pytest.raises(RouterError, match="compressed entries"):
        Router.load(path)


def test_the_digest_is_checked_on_the_bytes_that_are_parsed(tmp_path: Path) -> None:
    router, path = _knn(tmp_path)
    good = artifact.parse(path.read_bytes()).sha256
    assert Router.load(path, sha256=good).artifact_sha256 == good
    BestSingleRouter().fit(_clusters()).save(path)  # swapped after registration
    with pytest.raises(RouterError, match="the file has changed"):
        Router.load(path, sha256=good)


def test_a_round_trip_keeps_predictions_params_and_encoder(tmp_path: Path) -> None:
    router, path = _knn(tmp_path)
    loaded = Router.load(path)
    assert isinstance(loaded, KNNRouter) and loaded.get_params() == router.get_params()
    assert loaded.encoder_ == router.encoder_ and loaded.k_ == 3
    feats = _clusters(seed=5).features
    assert feats is not None
    cards = CARDS
    np.testing.assert_array_equal(loaded.predict(feats, cards).quality, router.predict(feats, cards).quality)
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert manifest["router"] == "knn" and manifest["format_version"] == artifact.FORMAT_VERSION


def test_a_class_that_expects_another_router_refuses_the_file(tmp_path: Path) -> None:
    _, path = _knn(tmp_path)
    with pytest.raises(RouterError, match="holds router 'knn'"):
        BestSingleRouter.load(path)


def test_state_that_is_not_arrays_or_json_cannot_be_saved(tmp_path: Path) -> None:
    router = BestSingleRouter().fit(_clusters())
    router.extra_ = object()  # type: ignore[attr-defined]
    with pytest.raises(RouterError, match="cannot be stored"):
        router.save(tmp_path / "x.router")


def _static_knn(tmp_path: Path) -> Path:
    router = KNNRouter(k=3).fit(_clusters())
    router.encoder_ = STATIC_ENCODER  # as if fitted on minilm-static embeddings
    return router.save(tmp_path / "static.router")


def _set_table_version(path: Path, version: str | None) -> None:
    def edit(entries: dict[str, bytes]) -> None:
        manifest = json.loads(entries["manifest.json"])
        manifest.pop("encoder_version", None)
        if version is not None:
            manifest["encoder_version"] = version
        entries["manifest.json"] = json.dumps(manifest).encode()

    _rewrite(path, edit)


def test_the_packaged_static_table_is_the_version_artifacts_record() -> None:
    # rebuilding the packaged model without bumping TABLE_VERSION would let old artifacts read the new space
    digest = hashlib.sha256((MODEL_DIR / "model.safetensors").read_bytes()).hexdigest()
    assert digest == TABLE_SHA256, "the packaged minilm-static model changed: bump TABLE_VERSION and TABLE_SHA256"


@pytest.mark.parametrize("version", [None, "hand-written-v1"])
def test_an_artifact_fitted_on_another_static_table_is_refused_with_refit(tmp_path: Path, version) -> None:
    path = _static_knn(tmp_path)
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    assert manifest["encoder"] == STATIC_ENCODER and manifest["encoder_version"] == TABLE_VERSION
    assert isinstance(Router.load(path), KNNRouter)  # the packaged table's version: loads
    _set_table_version(path, version)
    with pytest.raises(RouterError, match="refit it") as err:
        Router.load(path)
    assert str(path) in str(err.value) and TABLE_VERSION in str(err.value)
