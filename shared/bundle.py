"""Model bundles: a signed manifest plus the files it lists, as a directory or a .tar.gz archive.

Layout::

    manifest.json   model name/version, input spec, preprocessing, scoring, decision, quantization, sha256 per file
    manifest.sig    {"algorithm": "ed25519", "key_id": ..., "signature": base64} over manifest.json's bytes
    model.tflite    the quantised model

Loading checks, in order: archive structure and sizes, signature (trusted key), manifest schema,
every file's size and sha256.  Nothing is used before all checks pass.

Format 2 carries the thresholds in one ``decision`` section.  Format 1 manifests (thresholds in
``scoring.threshold`` and ``likelihood.threshold`` / ``likelihood.decide_on``) still load: they are read
into the same form (:func:`parse_manifest`) after their signature has been checked.
"""

from __future__ import annotations

import enum
import hashlib
import io
import json
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared import signing
from shared.decision import DecisionMode, DecisionParams
from shared.likelihood import LikelihoodParams
from shared.preprocessing import PreprocessParams
from shared.schema import SchemaError, doc, dump, load
from shared.scoring import ScoringParams
from shared.signing import TrustedKey
from shared.stuck import StuckParams

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

BUNDLE_FORMAT = "edgesentry-bundle/2"
LEGACY_FORMATS = ("edgesentry-bundle/1",)  # read (see upgrade_manifest), never written
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
MODEL_FILE = "model.tflite"
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_MANIFEST_BYTES = 1024 * 1024


class BundleErrorCode(enum.StrEnum):
    BAD_ARCHIVE = "bad_archive"
    TOO_LARGE = "too_large"
    MISSING_FILE = "missing_file"
    UNEXPECTED_FILE = "unexpected_file"
    BAD_SIGNATURE = "bad_signature"
    BAD_MANIFEST = "bad_manifest"
    HASH_MISMATCH = "hash_mismatch"


class BundleError(Exception):
    """A bundle was refused; ``code`` says why."""

    def __init__(self, code: BundleErrorCode, detail: str) -> None:
        super().__init__(f"bundle refused ({code.value}): {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class FileEntry:
    sha256: str = doc("Hex SHA-256 of the file.")
    bytes: int = doc("File size in bytes.")


@dataclass(frozen=True)
class Agreement:
    """How closely the exported model tracks the Keras model: on the held-out windows and a perturbed copy
    of them (a spike or level shift on one channel), so windows lie on both sides of the threshold."""

    windows: int = doc("Windows compared: the held-out windows and their perturbed copies.")
    score_pearson: float = doc("Pearson correlation of anomaly scores (Keras vs TFLite).")
    flag_agreement: float = doc("Fraction of windows flagged identically, each model against its own threshold "
                                "(the exported model's is learned on its own scores).")
    mean_abs_rel_diff: float = doc("Mean |s_tflite - s_keras| / s_keras.")
    flag_agreement_heldout: float | None = doc("Flag agreement on the unperturbed held-out windows alone.",
                                               default=None)
    band: float | None = doc("Relative half-width of the band around each model's threshold used below.",
                             default=None)
    flag_agreement_outside_band: float | None = doc(
        "Flag agreement on the windows whose scores are more than ``band`` (relative) from the threshold for "
        "both models: disagreements there are not threshold noise.", default=None)


@dataclass(frozen=True)
class Quantization:
    mode: str = doc("int8 | float16 | dynamic | float32.")
    agreement: Agreement | None = doc("Measured Keras-vs-TFLite agreement.", default=None)


@dataclass(frozen=True)
class Manifest:
    """Everything an agent needs to run a model, and nothing it has to trust without the signature."""

    format: str = doc("Bundle format identifier.")
    name: str = doc("Model architecture name, e.g. ae-lstm.")
    version: int = doc("Monotonic model version assigned by the hub.")
    created: str = doc("ISO-8601 creation time (UTC).")
    preprocessing: PreprocessParams = doc("Preprocessing parameters (features, window, scaler, denoising).")
    scoring: ScoringParams = doc("Score weights and normalisers.")
    decision: DecisionParams = doc("What agents threshold and the thresholds: the only place they live.")
    quantization: Quantization = doc("Quantization mode and measured agreement.")
    files: dict[str, FileEntry] = doc("Every other file in the bundle with its hash and size.")
    training: dict[str, Any] = doc("Free-form training facts (rows, epochs, losses) for operators.", default_factory=dict)
    likelihood: LikelihoodParams | None = doc("Streaming likelihood post-processing of the raw scores.", default=None)
    stuck: StuckParams | None = doc("Per-channel stuck-sensor check learned on the training data.", default=None)

    def __post_init__(self) -> None:
        if self.format != BUNDLE_FORMAT:
            raise ValueError(f"unsupported bundle format {self.format!r}")
        if MODEL_FILE not in self.files:
            raise ValueError(f"manifest does not list {MODEL_FILE}")
        if self.version < 1:
            raise ValueError("version must be >= 1")
        for name in self.files:
            if "/" in name or name in (MANIFEST, SIGNATURE) or name.startswith("."):
                raise ValueError(f"illegal file name {name!r}")

    def to_json(self) -> bytes:
        data = dump(self)
        if self.likelihood is not None:  # its newer keys only when used (LikelihoodParams.to_dict)
            data["likelihood"] = self.likelihood.to_dict()
        return json.dumps(data, indent=2, sort_keys=True).encode()


def upgrade_manifest(data: Any) -> Any:
    """A format-1 manifest in format 2's shape: its thresholds (``scoring.threshold``,
    ``likelihood.threshold``, ``likelihood.decide_on``) move into the ``decision`` section.  Anything
    else is returned as is (the schema check that follows judges it)."""
    if not isinstance(data, dict) or data.get("format") not in LEGACY_FORMATS:
        return data
    scoring = data.get("scoring")
    likelihood = data.get("likelihood")
    if not isinstance(scoring, dict) or "threshold" not in scoring:
        raise ValueError("format-1 manifest without scoring.threshold")
    decision: dict[str, Any] = {"score_threshold": scoring["threshold"], "mode": DecisionMode.SCORE.value}
    if isinstance(likelihood, dict):
        if "threshold" in likelihood:
            decision["likelihood_threshold"] = likelihood["threshold"]
        decision["mode"] = likelihood.get("decide_on", DecisionMode.SCORE.value)
        likelihood = {k: v for k, v in likelihood.items() if k not in ("threshold", "decide_on")}
    return {**data, "format": BUNDLE_FORMAT, "decision": decision,
            "scoring": {k: v for k, v in scoring.items() if k != "threshold"},
            **({"likelihood": likelihood} if "likelihood" in data else {})}


def parse_manifest(data: bytes | str) -> Manifest:
    """manifest.json's bytes → a checked :class:`Manifest` (format 1 upgraded); raises ValueError."""
    return load(Manifest, upgrade_manifest(json.loads(data)))


@dataclass
class Bundle:
    """A verified bundle in memory; ``files`` holds every file, manifest and signature included."""

    manifest: Manifest
    files: dict[str, bytes] = field(repr=False)

    @property
    def model_bytes(self) -> bytes:
        return self.files[MODEL_FILE]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_manifest(
    *,
    name: str,
    version: int,
    preprocessing: PreprocessParams,
    scoring: ScoringParams,
    decision: DecisionParams,
    quantization: Quantization,
    files: dict[str, bytes],
    training: dict[str, Any] | None = None,
    likelihood: LikelihoodParams | None = None,
    stuck: StuckParams | None = None,
) -> Manifest:
    return Manifest(
        format=BUNDLE_FORMAT,
        name=name,
        version=version,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        preprocessing=preprocessing,
        scoring=scoring,
        decision=decision,
        quantization=quantization,
        files={n: FileEntry(sha256=sha256_hex(b), bytes=len(b)) for n, b in files.items()},
        training=training or {},
        likelihood=likelihood,
        stuck=stuck,
    )


def signed_files(manifest: Manifest, files: dict[str, bytes], key: Ed25519PrivateKey) -> dict[str, bytes]:
    """The complete file set of a bundle: files + manifest + signature."""
    manifest_bytes = manifest.to_json()
    sig = {"algorithm": "ed25519", "key_id": signing.key_id(key.public_key()), "signature": signing.sign(key, manifest_bytes)}
    return {**files, MANIFEST: manifest_bytes, SIGNATURE: json.dumps(sig).encode()}


def write_dir(path: Path, all_files: dict[str, bytes]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    for name, data in all_files.items():
        (path / name).write_bytes(data)


def pack(all_files: dict[str, bytes]) -> bytes:
    """Deterministic .tar.gz of the bundle's files (sorted, fixed mtime) for transport."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=9) as tar:
        for name in sorted(all_files):
            data = all_files[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def unpack(archive: bytes, max_bytes: int = MAX_BUNDLE_BYTES) -> dict[str, bytes]:
    """Read a bundle archive into memory, refusing links, directories, paths and oversize content."""
    if len(archive) > max_bytes:
        raise BundleError(BundleErrorCode.TOO_LARGE, f"archive is {len(archive)} bytes (max {max_bytes})")
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:*") as tar:
            for member in tar:
                if not member.isfile() or "/" in member.name or member.name.startswith(".") or member.name in files:
                    raise BundleError(BundleErrorCode.UNEXPECTED_FILE, f"illegal archive member {member.name!r}")
                total += member.size
                if total > max_bytes:
                    raise BundleError(BundleErrorCode.TOO_LARGE, "unpacked content exceeds the size limit")
                fh = tar.extractfile(member)
                if fh is None:
                    raise BundleError(BundleErrorCode.BAD_ARCHIVE, f"cannot read {member.name!r}")
                files[member.name] = fh.read()
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(BundleErrorCode.BAD_ARCHIVE, str(exc)) from None
    return files


def read_dir(path: Path) -> dict[str, bytes]:
    if not path.is_dir():
        raise BundleError(BundleErrorCode.MISSING_FILE, f"{path} is not a directory")
    return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}


def verify(all_files: dict[str, bytes], trusted: Sequence[TrustedKey]) -> Bundle:
    """Check signature, manifest and hashes; return the bundle or raise :class:`BundleError`."""
    for required in (MANIFEST, SIGNATURE):
        if required not in all_files:
            raise BundleError(BundleErrorCode.MISSING_FILE, f"{required} is missing")
    manifest_bytes = all_files[MANIFEST]
    if len(manifest_bytes) > MAX_MANIFEST_BYTES:
        raise BundleError(BundleErrorCode.TOO_LARGE, "manifest too large")
    try:
        sig = json.loads(all_files[SIGNATURE])
        if not isinstance(sig, dict) or sig.get("algorithm") != "ed25519":
            raise ValueError("unsupported signature algorithm")
        signing.verify(trusted, str(sig.get("key_id")), str(sig.get("signature")), manifest_bytes)
    except (ValueError, signing.SignatureError) as exc:
        raise BundleError(BundleErrorCode.BAD_SIGNATURE, str(exc)) from None
    try:
        manifest = parse_manifest(manifest_bytes)
    except (ValueError, SchemaError) as exc:
        raise BundleError(BundleErrorCode.BAD_MANIFEST, str(exc)) from None
    payload = {n: b for n, b in all_files.items() if n not in (MANIFEST, SIGNATURE)}
    extra = set(payload) - set(manifest.files)
    if extra:
        raise BundleError(BundleErrorCode.UNEXPECTED_FILE, f"files not in the manifest: {sorted(extra)}")
    for name, entry in manifest.files.items():
        if name not in payload:
            raise BundleError(BundleErrorCode.MISSING_FILE, f"{name} is missing")
        data = payload[name]
        if len(data) != entry.bytes or sha256_hex(data) != entry.sha256:
            raise BundleError(BundleErrorCode.HASH_MISMATCH, f"{name} does not match its manifest hash")
    return Bundle(manifest=manifest, files=dict(all_files))


def load_archive(archive: bytes, trusted: Sequence[TrustedKey], max_bytes: int = MAX_BUNDLE_BYTES) -> Bundle:
    return verify(unpack(archive, max_bytes), trusted)


def load_dir(path: Path, trusted: Sequence[TrustedKey]) -> Bundle:
    return verify(read_dir(path), trusted)
