"""The remote backend's parts that need no server: the wire format, the API key check, the
model identity, and ``serve``'s refusals (the server itself: ``test_server.py``)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import load_case

from napari_medsam.cli import main
from napari_medsam.engine import load_model
from napari_medsam.engine import remote_wire as wire
from napari_medsam.engine.remote_model import (
    RemoteError,
    encoder_identity,
    mismatch,
    read_api_key,
)
from napari_medsam.models.registry import get_spec
from napari_medsam.server.auth import authorized, key_digest


@pytest.fixture(scope="module")
def real_slice():
    _, _, mapped = load_case("totalseg_ct_abdomen_sm")
    return mapped[len(mapped) // 2]


def test_a_real_slice_and_its_embedding_travel_exactly(real_slice):
    model = load_model("litemedsam", "cpu", backend="onnxruntime")
    tensor, _ = model.preprocess(real_slice)
    body, headers = wire.pack(tensor, "float32")
    assert headers[wire.REPEAT] == "3" and len(body) < tensor.nbytes / 4
    np.testing.assert_array_equal(wire.unpack(body, headers), tensor)

    features = model.embed_preprocessed(tensor, real_slice.shape, (256, 256)).features
    body, headers = wire.pack(features, "float16")
    assert len(body) < features.nbytes / 2  # smaller than the float16 array
    np.testing.assert_array_equal(wire.unpack(body, headers), features.astype(np.float16))


@pytest.mark.parametrize("damage", ["truncate", "shape", "split", "garbage"])
def test_a_damaged_body_is_refused_not_misread(real_slice, damage):
    model = load_model("litemedsam", "cpu", backend="onnxruntime")
    tensor, _ = model.preprocess(real_slice)
    features = (tensor[:, :1, :64, :64] * 3).astype(np.float16)
    body, headers = wire.pack(features, "float16")
    if damage == "truncate":
        body = body[:-100]
    elif damage == "shape":
        headers[wire.SHAPE] = "1,1,64,65"
    elif damage == "split":
        headers[wire.SPLIT] = str(len(body) + 5)
    else:
        body = b"\x00" * len(body)
    with pytest.raises(wire.WireError):
        wire.unpack(body, headers)


def test_api_key_check():
    digest = key_digest("s3cret")
    assert authorized("Bearer s3cret", digest)
    assert authorized("bearer s3cret ", digest)
    assert not authorized("Bearer s3cre", digest)
    assert not authorized("Basic s3cret", digest)
    assert not authorized(None, digest)
    assert authorized(None, None)  # no key configured: a local server


def test_api_key_file(tmp_path, monkeypatch):
    monkeypatch.delenv("NAPARI_MEDSAM_API_KEY", raising=False)
    assert read_api_key() is None
    monkeypatch.setenv("NAPARI_MEDSAM_API_KEY", "from-env")
    assert read_api_key() == "from-env"
    (tmp_path / "key").write_text("from-file\nsecond line\n")
    assert read_api_key(tmp_path / "key") == "from-file"
    (tmp_path / "empty").write_text("  \n")
    with pytest.raises(RemoteError, match="empty"):
        read_api_key(tmp_path / "empty")
    with pytest.raises(RemoteError, match="cannot read"):
        read_api_key(tmp_path / "missing")


def test_identity_names_both_models_when_they_differ():
    local = encoder_identity(get_spec("litemedsam"))
    assert mismatch(local, dict(local)) is None
    other = {**local, "name": "sam-vit-b", "fingerprint": "feedfacefeedface"}
    assert "'sam-vit-b'" in mismatch(local, other) and "'litemedsam'" in mismatch(local, other)


def test_load_model_remote_needs_a_server_and_a_server_needs_remote():
    with pytest.raises(ValueError, match="needs a server address"):
        load_model("litemedsam", backend="remote")
    with pytest.raises(ValueError, match="does not go with --backend openvino"):
        load_model("litemedsam", backend="openvino", server="http://127.0.0.1:1")


@pytest.mark.parametrize("argv, message", [
    (["--host", "0.0.0.0"], "needs --api-key-file|give an API key"),
    (["--replicas", "two"], "--replicas"),
    (["--max-batch", "0"], "--max-batch"),
    (["--model", "nope"], "nope"),
])
def test_serve_refuses_bad_options_before_starting(argv, message, capsys):
    assert main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error:" in err
    assert any(part in err for part in message.split("|"))


def test_a_command_with_an_unreachable_server_fails_in_one_line(capsys, data_dir):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    case = data_dir / "totalseg_ct_abdomen_sm"
    code = main(["eval", str(case / "image.nii.gz"), str(case / "label.nii.gz"), "--mode",
                 "box", "--labels", "1", "--server", f"http://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "did not answer" in err and err.strip().count("\n") == 0
