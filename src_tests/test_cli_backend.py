"""``--backend`` / ``--precision`` of ``napari-medsam segment`` and ``eval`` (issue 7)."""

from __future__ import annotations

import json

import pytest
from helpers import case_dir

from napari_medsam.cli import build_parser, main

MR = case_dir("totalseg_mr_abdomen_sm")  # (20, 91, 117)
HIPPO = case_dir("msd_hippocampus_mr")
LIVER = 5


def _segment_args(tmp_path, *extra: str) -> list[str]:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"objects": [
        {"label": LIVER, "name": "liver", "slice": 19, "box": [16, 11, 73, 61]}]}))
    return ["segment", str(MR / "image.nii.gz"), "--prompts", str(prompts), "--out",
            str(tmp_path / "seg.nii.gz"), *extra]


def _eval_args(*extra: str) -> list[str]:
    return ["eval", str(HIPPO / "hippocampus_003_image.nii.gz"),
            str(HIPPO / "hippocampus_003_label.nii.gz"), "--mode", "box", *extra]


@pytest.mark.parametrize("command", ["segment", "eval"])
def test_backend_and_precision_parse_with_the_embed_choices(command, tmp_path):
    args = _segment_args(tmp_path) if command == "segment" else _eval_args()
    parsed = build_parser().parse_args(args)
    assert (parsed.backend, parsed.precision) == ("auto", "auto")
    parsed = build_parser().parse_args([*args, "--backend", "onnxruntime", "--precision",
                                        "f32"])
    assert (parsed.backend, parsed.precision) == ("onnxruntime", "f32")
    embed = build_parser().parse_args(["embed", "x.nii.gz", "--backend", "openvino"])
    assert embed.backend == "openvino"


@pytest.mark.parametrize("command", ["segment", "eval"])
@pytest.mark.parametrize("option", [["--backend", "tpu"], ["--precision", "int4"]])
def test_invalid_backend_or_precision_is_exit_2(command, option, tmp_path, capsys):
    args = _segment_args(tmp_path) if command == "segment" else _eval_args()
    with pytest.raises(SystemExit) as info:
        main([*args, *option])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
    assert not (tmp_path / "seg.nii.gz").exists()


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("command", ["segment", "eval"])
def test_backend_reaches_load_model(command, remote, tmp_path, monkeypatch, capsys):
    import napari_medsam.engine as engine

    seen = {}

    def fake_load_model(name, device="auto", **kwargs):
        seen.update(name=name, device=device, **kwargs)
        raise engine.ModelFileError("stop here")

    monkeypatch.setattr(engine, "load_model", fake_load_model)
    args = _segment_args(tmp_path) if command == "segment" else _eval_args()
    key = tmp_path / "key.txt"
    key.write_text("k3y\n")
    backend = ["--server", "http://gpu-box:8000", "--api-key-file", str(key)] if remote \
        else ["--backend", "onnxruntime"]
    code = main([*args, *backend, "--precision", "f32", "--device", "cpu"])
    assert code == 1 and "stop here" in capsys.readouterr().err
    assert seen == {"name": "litemedsam", "device": "cpu",
                    "backend": "auto" if remote else "onnxruntime", "precision": "f32",
                    "server": "http://gpu-box:8000" if remote else None,
                    "api_key": "k3y" if remote else None, "threads": None}


def test_openvino_on_cuda_is_a_usage_error(tmp_path, capsys):
    code = main(_segment_args(tmp_path, "--backend", "openvino", "--device", "cuda"))
    assert code == 2
    assert "OpenVINO" in capsys.readouterr().err
    assert not (tmp_path / "seg.nii.gz").exists()


def test_segment_runs_on_the_chosen_backend(litemedsam, tmp_path, capsys):
    code = main(_segment_args(tmp_path, "--backend", "onnxruntime", "--device", "cpu"))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "litemedsam on CPU," in captured.err  # ONNX Runtime, not "CPU (OpenVINO f32)"
    assert (tmp_path / "seg.nii.gz").is_file()
