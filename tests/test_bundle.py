"""Bundles: signature and hashes are checked before anything is used; tampering is refused."""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from shared import bundle as b
from shared import signing
from shared.decision import DecisionMode, DecisionParams
from shared.likelihood import LikelihoodParams
from shared.preprocessing import PreprocessParams
from shared.scoring import ScoringParams

MODEL = b"TFL3-not-really-a-model" * 10


def _files(key):  # type: ignore[no-untyped-def]
    manifest = b.build_manifest(
        name="ae-lstm",
        version=3,
        preprocessing=PreprocessParams(features=["a", "b"], window=8, denoise_threshold=[0.1, 0.1],
                                       scale_min=[0, 0], scale_max=[1, 1]),
        scoring=ScoringParams(rec_ref=[1.0, 1.0], pred_ref=[1.0, 1.0]),
        decision=DecisionParams(score_threshold=2.0),
        quantization=b.Quantization(mode="int8"),
        files={b.MODEL_FILE: MODEL},
    )
    return b.signed_files(manifest, {b.MODEL_FILE: MODEL}, key)


@pytest.fixture
def key():  # type: ignore[no-untyped-def]
    return signing.generate_private_key()


def test_valid_bundle_round_trips_through_archive_and_directory(key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    files = _files(key)
    loaded = b.load_archive(b.pack(files), [key.public_key()])
    assert loaded.manifest.version == 3 and loaded.model_bytes == MODEL
    b.write_dir(tmp_path / "bundle", files)
    assert b.load_dir(tmp_path / "bundle", [key.public_key()]).manifest.decision.score_threshold == 2.0
    assert b.pack(files) == b.pack(files)  # deterministic archives


def _expect(code: b.BundleErrorCode, files: dict[str, bytes], trusted) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(b.BundleError) as err:
        b.load_archive(b.pack(files), trusted)
    assert err.value.code == code


def test_tampered_model_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    files = _files(key)
    files[b.MODEL_FILE] = MODEL[:-1] + b"X"
    _expect(b.BundleErrorCode.HASH_MISMATCH, files, [key.public_key()])


def test_tampered_manifest_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    files = _files(key)
    manifest = json.loads(files[b.MANIFEST])
    manifest["decision"]["score_threshold"] = 1e9  # e.g. silence all alarms
    files[b.MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    _expect(b.BundleErrorCode.BAD_SIGNATURE, files, [key.public_key()])


def _legacy(key, likelihood: dict[str, object] | None) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    """A signed format-1 bundle, as hubs before the decision section wrote them: the score threshold in
    ``scoring``, the likelihood's threshold and ``decide_on`` in ``likelihood``."""
    manifest = json.loads(_files(key)[b.MANIFEST])
    manifest["format"] = "edgesentry-bundle/1"
    manifest["scoring"]["threshold"] = manifest.pop("decision")["score_threshold"]
    if likelihood is not None:
        manifest["likelihood"] = likelihood
    raw = json.dumps(manifest, indent=2, sort_keys=True).encode()
    sig = {"algorithm": "ed25519", "key_id": signing.key_id(key.public_key()), "signature": signing.sign(key, raw)}
    return {b.MODEL_FILE: MODEL, b.MANIFEST: raw, b.SIGNATURE: json.dumps(sig).encode()}


def test_format_1_bundles_still_load_with_their_thresholds_in_the_decision(key) -> None:  # type: ignore[no-untyped-def]
    plain = b.load_archive(b.pack(_legacy(key, None)), [key.public_key()]).manifest
    assert plain.format == b.BUNDLE_FORMAT and plain.decision == DecisionParams(score_threshold=2.0)
    assert plain.likelihood is None and plain.scoring.rec_ref == [1.0, 1.0]
    lik = {"prior_mean": 0.2, "prior_std": 0.1, "history": 8000, "short_window": 1, "threshold": 0.6,
           "decide_on": "likelihood", "onset_window": 1200}
    m = b.load_archive(b.pack(_legacy(key, lik)), [key.public_key()]).manifest
    assert m.decision == DecisionParams(score_threshold=2.0, mode=DecisionMode.LIKELIHOOD, likelihood_threshold=0.6)
    assert m.likelihood == LikelihoodParams(prior_mean=0.2, prior_std=0.1, history=8000, short_window=1,
                                            onset_window=1200)
    # A format-1 manifest is still judged: a bad threshold or mode is refused, not guessed.
    for bad in ({**lik, "decide_on": "votes"}, {**lik, "threshold": 1.5}):
        _expect(b.BundleErrorCode.BAD_MANIFEST, _legacy(key, bad), [key.public_key()])
    no_threshold = json.loads(_legacy(key, None)[b.MANIFEST])
    del no_threshold["scoring"]["threshold"]
    with pytest.raises(ValueError, match="scoring.threshold"):
        b.parse_manifest(json.dumps(no_threshold))


def test_untrusted_key_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    other = signing.generate_private_key()
    _expect(b.BundleErrorCode.BAD_SIGNATURE, _files(other), [key.public_key()])


def test_resigned_by_attacker_with_same_key_id_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    files = _files(signing.generate_private_key())
    sig = json.loads(files[b.SIGNATURE])
    sig["key_id"] = signing.key_id(key.public_key())
    files[b.SIGNATURE] = json.dumps(sig).encode()
    _expect(b.BundleErrorCode.BAD_SIGNATURE, files, [key.public_key()])


def test_missing_signature_and_extra_files_are_refused(key) -> None:  # type: ignore[no-untyped-def]
    files = _files(key)
    _expect(b.BundleErrorCode.MISSING_FILE, {k: v for k, v in files.items() if k != b.SIGNATURE}, [key.public_key()])
    _expect(b.BundleErrorCode.UNEXPECTED_FILE, {**files, "run.sh": b"rm -rf /"}, [key.public_key()])
    _expect(b.BundleErrorCode.MISSING_FILE, {k: v for k, v in files.items() if k != b.MODEL_FILE}, [key.public_key()])


def test_archive_with_paths_links_or_garbage_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("../etc/passwd")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(b.BundleError) as err:
        b.load_archive(buf.getvalue(), [key.public_key()])
    assert err.value.code == b.BundleErrorCode.UNEXPECTED_FILE

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo(b.MODEL_FILE)
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/shadow"
        tar.addfile(link)
    with pytest.raises(b.BundleError):
        b.load_archive(buf.getvalue(), [key.public_key()])

    with pytest.raises(b.BundleError) as err:
        b.load_archive(b"definitely not a tarball", [key.public_key()])
    assert err.value.code == b.BundleErrorCode.BAD_ARCHIVE


def test_oversized_archive_is_refused(key) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(b.BundleError) as err:
        b.load_archive(b.pack(_files(key)), [key.public_key()], max_bytes=100)
    assert err.value.code == b.BundleErrorCode.TOO_LARGE


def test_agent_store_writes_nothing_for_a_refused_bundle(key, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.model_store import ModelStore

    store = ModelStore(tmp_path, [key.public_key()])
    files = _files(key)
    files[b.MODEL_FILE] = b"evil"
    with pytest.raises(b.BundleError):
        store.install(b.pack(files))
    assert not store.has(3) and list((tmp_path / "models").iterdir()) == []
    store.install(b.pack(_files(key)))
    assert store.has(3) and store.load(3).model_bytes == MODEL


@pytest.fixture
def helper_process():  # type: ignore[no-untyped-def]
    """Verification as `edge-agent run` does it: in the shared.ed25519_check helper process."""
    signing.verify_in_helper_process(True)
    yield
    signing.verify_in_helper_process(False)


@pytest.mark.parametrize("in_helper", [False, True])
def test_parsed_keys_verify_in_process_and_in_the_helper_alike(key, request, in_helper: bool) -> None:  # type: ignore[no-untyped-def]
    if in_helper:
        request.getfixturevalue("helper_process")
    trusted = [signing.parse_public_key(signing.public_key_b64(key))]
    assert signing.key_id(trusted[0]) == signing.key_id(key.public_key())
    files = _files(key)
    assert b.load_archive(b.pack(files), trusted).manifest.version == 3
    tampered = dict(files)
    manifest = json.loads(files[b.MANIFEST])
    manifest["decision"]["score_threshold"] = 1e9
    tampered[b.MANIFEST] = json.dumps(manifest, indent=2, sort_keys=True).encode()
    _expect(b.BundleErrorCode.BAD_SIGNATURE, tampered, trusted)
    forged = _files(signing.generate_private_key())
    sig = json.loads(forged[b.SIGNATURE])
    sig["key_id"] = signing.key_id(key.public_key())
    forged[b.SIGNATURE] = json.dumps(sig).encode()
    _expect(b.BundleErrorCode.BAD_SIGNATURE, forged, trusted)


def test_a_helper_that_cannot_run_verifies_nothing(key, helper_process, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """No verdict from the helper (here: it does not exist) is never taken for a valid signature."""
    monkeypatch.setattr(signing, "HELPER_MODULE", "shared.no_such_helper")
    trusted = [signing.parse_public_key(signing.public_key_b64(key))]
    with pytest.raises(signing.SignatureCheckUnavailable, match="could not run"):
        signing.verify(trusted, signing.key_id(key.public_key()), signing.sign(key, b"x"), b"x")
    _expect(b.BundleErrorCode.BAD_SIGNATURE, _files(key), trusted)


@pytest.mark.parametrize("text", ["not base64!", "AAAA", ""])
def test_malformed_trusted_keys_are_refused(text: str) -> None:
    with pytest.raises(signing.SignatureError, match="not a base64 Ed25519 public key"):
        signing.parse_public_key(text)


def test_the_helper_checks_a_signature_once(key, helper_process, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A retained announcement arrives on every reconnect: what the helper accepted is remembered;
    anything else (other data, other signature) is checked again."""
    calls: list[bytes] = []
    real = signing._verify_in_helper

    def counting(raw: bytes, signature: bytes, data: bytes) -> None:
        calls.append(data)
        real(raw, signature, data)

    monkeypatch.setattr(signing, "_verify_in_helper", counting)
    trusted = [signing.parse_public_key(signing.public_key_b64(key))]
    kid = signing.key_id(key.public_key())
    for _ in range(3):
        signing.verify(trusted, kid, signing.sign(key, b"announcement"), b"announcement")
    assert calls == [b"announcement"]
    with pytest.raises(signing.SignatureError):
        signing.verify(trusted, kid, signing.sign(key, b"announcement"), b"tampered")
    with pytest.raises(signing.SignatureError):
        signing.verify(trusted, kid, signing.sign(key, b"tampered"), b"tampered!")
    assert calls == [b"announcement", b"tampered", b"tampered!"]


@pytest.mark.parametrize("seasonal_period", [0, 86400])
def test_the_manifest_carries_newer_likelihood_keys_only_when_used(seasonal_period: int) -> None:
    """Agents refuse unknown manifest keys: a bundle that does not use the seasonal context must not
    carry its keys (so agents of the previous release still load it); one that does round-trips."""
    manifest = b.build_manifest(
        name="ae-lstm", version=3,
        preprocessing=PreprocessParams(features=["a", "b"], window=8, denoise_threshold=[0.1, 0.1],
                                       scale_min=[0, 0], scale_max=[1, 1]),
        scoring=ScoringParams(rec_ref=[1.0, 1.0], pred_ref=[1.0, 1.0]),
        decision=DecisionParams(score_threshold=2.0), quantization=b.Quantization(mode="int8"),
        files={b.MODEL_FILE: MODEL},
        likelihood=LikelihoodParams(prior_mean=1.0, prior_std=0.5, seasonal_period=seasonal_period,
                                    seasonal_slots=24 if seasonal_period else 168),
    )
    written = json.loads(manifest.to_json())["likelihood"]
    assert ("seasonal_period" in written) == bool(seasonal_period)
    assert "rearm_max" not in written
    assert b.parse_manifest(manifest.to_json()) == manifest
