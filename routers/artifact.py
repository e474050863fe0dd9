"""The router artifact file: arrays plus a JSON manifest in one uncompressed zip, never a pickle.

Layout (a zip with ``ZIP_STORED`` entries, so the bytes on disk are the bytes parsed)::

    manifest.json        {"format": "poolgate-router", "format_version": 2, "router": ..., "params": ...,
                          "state": <tagged JSON>, "arrays": {name: {"sha256", "dtype", "shape"}}}
    arrays/<name>.npy    one numpy array each, read with ``allow_pickle=False``

The manifest's ``state`` is plain JSON in which a few tags stand for values JSON has no word for:
``{"__array__": name}`` (an entry of ``arrays/``), ``{"__tuple__": [...]}``, ``{"__frozenset__": [...]}``,
``{"__dict__": [[key, value], ...]}`` (keys may be ints) and ``{"__float__": "nan" | "inf" | "-inf"}``. Decoding
builds only those types: nothing in a file can name a class or run code.

:func:`read` takes the file's bytes once, checks their SHA-256 when the caller knows it (the version registry
does), checks each array's own digest, sizes and dtype, and parses from that same buffer, so a file swapped
between the check and the parse cannot be what gets loaded. Every failure is :class:`ArtifactFormatError`
with a one-line reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "poolgate-router"
FORMAT_VERSION = 2
MANIFEST = "manifest.json"
#: refuse files (and the sum of their arrays) larger than this: an artifact is a few MB to a few hundred MB
MAX_BYTES = 2 * 1024**3
MAX_MANIFEST_BYTES = 64 * 1024**2
#: dtype kinds an array may have: bool, signed/unsigned int, float (object, void, strings are refused)
_ALLOWED_KINDS = frozenset("biuf")
#: dict keys that name their array entry as they are (others by position)
_SAFE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ArtifactFormatError(ValueError):
    """The bytes are not a valid router artifact; the message says why."""


@dataclass
class Artifact:
    """A parsed artifact: the manifest (with ``state`` decoded) and the SHA-256 of the file's bytes."""

    manifest: dict[str, Any]
    state: dict[str, Any]
    sha256: str

    @property
    def router(self) -> str:
        return str(self.manifest.get("router", ""))

    @property
    def params(self) -> dict[str, Any]:
        params = self.manifest.get("params") or {}
        return params if isinstance(params, dict) else {}


# -- encoding -------------------------------------------------------------------------------------
class _Encoder:
    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def encode(self, value: Any, path: str) -> Any:
        if value is None or isinstance(value, bool | str):
            return value
        if isinstance(value, int | np.integer):
            return int(value)
        if isinstance(value, float | np.floating):
            f = float(value)
            return f if math.isfinite(f) else {"__float__": repr(f)}
        if isinstance(value, np.bool_):
            return bool(value)
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in _ALLOWED_KINDS:
                raise ArtifactFormatError(f"{path}: arrays of dtype {value.dtype} cannot be stored")
            name = path
            self.arrays[name] = np.ascontiguousarray(value)
            return {"__array__": name}
        if isinstance(value, tuple):
            return {"__tuple__": [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, frozenset | set):
            items = sorted(value, key=repr)
            return {"__frozenset__": [self.encode(v, f"{path}.{i}") for i, v in enumerate(items)]}
        if isinstance(value, dict):
            pairs = []
            for i, (k, v) in enumerate(value.items()):
                if isinstance(k, bool) or not isinstance(k, str | int | np.integer):
                    raise ArtifactFormatError(f"{path}: dict key {k!r} is neither a string nor an int")
                name = f"{path}.{k}" if isinstance(k, str) and _SAFE_NAME.fullmatch(k) else f"{path}.#{i}"
                pairs.append([k if isinstance(k, str) else int(k), self.encode(v, name)])
            return {"__dict__": pairs}
        raise ArtifactFormatError(f"{path}: a {type(value).__name__} cannot be stored in an artifact")


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ArtifactFormatError("manifest state holds an untagged object")
    (tag, inner), = value.items()
    if tag == "__array__":
        if inner not in arrays:
            raise ArtifactFormatError(f"manifest names array {inner!r} that the file does not hold")
        return arrays[inner]
    if tag == "__tuple__" and isinstance(inner, list):
        return tuple(_decode(v, arrays) for v in inner)
    if tag == "__frozenset__" and isinstance(inner, list):
        return frozenset(_decode(v, arrays) for v in inner)
    if tag == "__dict__" and isinstance(inner, list):
        out = {}
        for pair in inner:
            if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str | int)):
                raise ArtifactFormatError("manifest state holds a malformed dict entry")
            out[pair[0]] = _decode(pair[1], arrays)
        return out
    if tag == "__float__" and inner in ("nan", "inf", "-inf"):
        return float(inner)
    raise ArtifactFormatError(f"manifest state holds an unknown tag {tag!r}")


# -- writing --------------------------------------------------------------------------------------
def dumps(router: str, params: dict[str, Any], state: dict[str, Any], meta: dict[str, Any] | None = None) -> bytes:
    """The artifact bytes of a router named ``router`` with constructor ``params`` and fitted ``state``."""
    enc = _Encoder()
    encoded_params = enc.encode(params, "params")
    if enc.arrays:
        raise ArtifactFormatError("router parameters must be plain JSON values, not arrays")
    encoded_state = enc.encode(state, "state")
    blobs: dict[str, bytes] = {}
    for name, arr in enc.arrays.items():
        buf = io.BytesIO()
        np.lib.format.write_array(buf, arr, allow_pickle=False)
        blobs[name] = buf.getvalue()
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "router": router, "params": encoded_params,
        **(meta or {}), "state": encoded_state,
        "arrays": {n: {"sha256": hashlib.sha256(b).hexdigest(), "dtype": str(enc.arrays[n].dtype),
                       "shape": list(enc.arrays[n].shape)} for n, b in blobs.items()},
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr(MANIFEST, json.dumps(manifest, sort_keys=True, allow_nan=False))
        for name, blob in blobs.items():
            zf.writestr(f"arrays/{name}.npy", blob)
    return out.getvalue()


def write(path: Path, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (temp file, then rename); returns its SHA-256."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return hashlib.sha256(data).hexdigest()


# -- reading --------------------------------------------------------------------------------------
def read_bytes(path: Path) -> bytes:
    """The file's bytes, refusing one over :data:`MAX_BYTES` (``FileNotFoundError`` passes through)."""
    with path.open("rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise ArtifactFormatError(f"file is larger than {MAX_BYTES} bytes")
    return data


def parse(data: bytes, sha256: str | None = None) -> Artifact:
    """Parse artifact bytes; with ``sha256`` refuse bytes whose digest differs (see the module docstring)."""
    digest = hashlib.sha256(data).hexdigest()
    if sha256 is not None and digest != sha256:
        raise ArtifactFormatError(
            f"the file has changed: sha256 {digest[:12]}... differs from the expected {sha256[:12]}...")
    if not data.startswith(b"PK"):
        raise ArtifactFormatError("not a poolgate router artifact (an old pickled artifact? retrain it)")
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise ArtifactFormatError(f"not a valid artifact zip ({exc})") from None
    with zf:
        manifest = _read_manifest(zf)
        arrays = _read_arrays(zf, manifest)
    try:
        state = _decode(manifest.get("state", {}), arrays)
        manifest["params"] = _decode(manifest.get("params", {}), {})
    except (TypeError, ValueError) as exc:
        raise ArtifactFormatError(f"malformed manifest state ({exc})") from None
    if not isinstance(state, dict):
        raise ArtifactFormatError("manifest state is not an object")
    return Artifact(manifest=manifest, state=state, sha256=digest)


def _read_manifest(zf: zipfile.ZipFile) -> dict[str, Any]:
    infos = zf.infolist()
    if sum(i.file_size for i in infos) > MAX_BYTES:
        raise ArtifactFormatError("entries add up to more than the size limit")
    if any(i.compress_type != zipfile.ZIP_STORED for i in infos):
        raise ArtifactFormatError("compressed entries are not allowed")
    try:
        info = zf.getinfo(MANIFEST)
    except KeyError:
        raise ArtifactFormatError(f"no {MANIFEST} in the file") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise ArtifactFormatError(f"{MANIFEST} is larger than {MAX_MANIFEST_BYTES} bytes")
    try:
        manifest = json.loads(zf.read(info))
    except (ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactFormatError(f"{MANIFEST} is not valid JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactFormatError(f"{MANIFEST} is not a {FORMAT} manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise ArtifactFormatError(
            f"format version {manifest.get('format_version')!r}, this poolgate reads {FORMAT_VERSION}; retrain it")
    if not isinstance(manifest.get("arrays", {}), dict):
        raise ArtifactFormatError(f"{MANIFEST}: 'arrays' is not an object")
    return manifest


def _read_arrays(zf: zipfile.ZipFile, manifest: dict[str, Any]) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, spec in manifest.get("arrays", {}).items():
        if not isinstance(spec, dict):
            raise ArtifactFormatError(f"array {name!r}: malformed entry")
        try:
            blob = zf.read(f"arrays/{name}.npy")
        except KeyError:
            raise ArtifactFormatError(f"array {name!r} is listed but missing") from None
        if hashlib.sha256(blob).hexdigest() != spec.get("sha256"):
            raise ArtifactFormatError(f"array {name!r}: digest mismatch")
        try:
            arr = np.lib.format.read_array(io.BytesIO(blob), allow_pickle=False)
        except ValueError as exc:
            raise ArtifactFormatError(f"array {name!r}: {exc}") from None
        if arr.dtype.kind not in _ALLOWED_KINDS or list(arr.shape) != spec.get("shape"):
            raise ArtifactFormatError(f"array {name!r}: unexpected dtype {arr.dtype} or shape {arr.shape}")
        arrays[name] = arr
    return arrays
