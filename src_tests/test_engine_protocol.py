"""The engine's declared interfaces: the real models and the tests' fake implement them.

Each implementation is checked twice: ``isinstance`` against the ``runtime_checkable``
Protocols (every member is there), and statically: every method of a Protocol exists on the
class with a compatible signature (the same parameters, of the same kinds, with defaults
where the Protocol has them; extra parameters only with defaults), every property or
attribute is there. The prompt types convert the old tuple forms once.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from fakes import CountingModel, FakeAsyncEncoder, FakeModel, box_fill_model

from napari_medsam.engine import backends
from napari_medsam.engine.onnx_model import OnnxPromptModel
from napari_medsam.engine.preprocess import PromptError
from napari_medsam.engine.protocol import (
    AsyncEncoder,
    BatchEncoder,
    Box,
    Click,
    Predictor,
    PromptModel,
    clicks_from,
    split_clicks,
)


def _members(protocol) -> tuple[dict[str, inspect.Signature], set[str]]:
    """The Protocol's own methods (name -> signature) and its other members."""
    methods, others = {}, set()
    for klass in protocol.__mro__:
        if klass in (object,) or not getattr(klass, "_is_protocol", False):
            continue
        others.update(getattr(klass, "__annotations__", {}))
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            if isinstance(value, property):
                others.add(name)
            elif inspect.isfunction(value):
                methods.setdefault(name, inspect.signature(value))
    return methods, others - set(methods)


def _compatible(wanted: inspect.Signature, got: inspect.Signature) -> list[str]:
    """Why ``got`` cannot stand where ``wanted`` is declared (empty: it can)."""
    problems = []
    params = got.parameters
    for name, param in wanted.parameters.items():
        if name not in params:
            problems.append(f"no parameter {name!r}")
            continue
        other = params[name]
        if other.kind != param.kind:
            problems.append(f"{name!r} is {other.kind.description}, not "
                            f"{param.kind.description}")
        if param.default is not inspect.Parameter.empty and \
                other.default is inspect.Parameter.empty:
            problems.append(f"{name!r} has no default")
    for name, other in params.items():
        if name not in wanted.parameters and other.default is inspect.Parameter.empty \
                and other.kind not in (other.VAR_POSITIONAL, other.VAR_KEYWORD):
            problems.append(f"extra parameter {name!r} without a default")
    return problems


def assert_implements(obj, protocol) -> None:
    """``obj`` passes ``isinstance`` and the static check against ``protocol``."""
    assert isinstance(obj, protocol), f"{type(obj).__name__} is not a {protocol.__name__}"
    methods, others = _members(protocol)
    for name, signature in methods.items():
        impl = inspect.getattr_static(obj, name)  # the class's function: with ``self``
        assert inspect.isfunction(impl), f"{type(obj).__name__}.{name} is not a method"
        problems = _compatible(signature, inspect.signature(impl))
        assert not problems, f"{type(obj).__name__}.{name}: {'; '.join(problems)}"
    for name in others:
        inspect.getattr_static(obj, name)  # raises AttributeError when missing


def test_the_static_check_can_fail():
    class PositionalBox(FakeModel):
        def predict(self, embedding, box=None):  # box not keyword-only, no points
            return None

    with pytest.raises(AssertionError, match="predict: 'box' is positional or keyword"):
        assert_implements(PositionalBox(), PromptModel)

    class NoEncoderCapabilities(FakeModel):
        async_encoder = None

    model = NoEncoderCapabilities()
    del model.batch_encoder
    with pytest.raises(AssertionError, match="is not a PromptModel"):
        assert_implements(model, PromptModel)
    assert not isinstance(object(), Predictor)


def test_the_fakes_implement_the_protocols():
    model = FakeModel()
    assert_implements(model, PromptModel)
    assert model.batch_encoder is None and model.async_encoder is None
    assert_implements(box_fill_model(), PromptModel)
    batched = FakeModel(batch_size=4)
    assert batched.batch_encoder is batched
    assert_implements(batched.batch_encoder, BatchEncoder)
    assert_implements(FakeAsyncEncoder(model), AsyncEncoder)


def test_onnxruntime_model_implements_the_protocols(litemedsam_ort):
    model = litemedsam_ort
    assert isinstance(model, OnnxPromptModel)
    assert_implements(model, PromptModel)
    assert model.async_encoder is None and model.precision == "f32"
    assert model.batch_encoder is model
    assert_implements(model.batch_encoder, BatchEncoder)
    assert_implements(CountingModel(model), PromptModel)


@pytest.mark.skipif(not backends.openvino_available(), reason="openvino not installed")
def test_openvino_model_implements_the_protocols(litemedsam_ort):
    from napari_medsam.engine import load_model
    from napari_medsam.engine.openvino_model import OpenVINOPromptModel

    model = load_model("litemedsam", device="cpu", backend="openvino")
    assert isinstance(model, OpenVINOPromptModel)
    assert_implements(model, PromptModel)
    assert model.batch_encoder is None and model.async_encoder is model
    assert_implements(model.async_encoder, AsyncEncoder)
    assert model.precision in ("f32", "bf16")
    # an adapted decoder keeps the declared capabilities (they are the class's)
    other = model.with_decoder(model.spec.path("decoder"))
    assert other.async_encoder is other and other.batch_encoder is None
    model.release_throughput()


def test_predictors_include_the_sessions_slice_predictor():
    from napari_medsam.segmentation.session import _SlicePredictor

    methods, _ = _members(Predictor)
    got = inspect.signature(_SlicePredictor.predict)
    assert not _compatible(methods["predict"], got)


def test_prompt_types_convert_the_old_tuples_once():
    box = Box.of([1, 2, 10, 20.5])
    assert box == (1, 2, 10, 20.5) and box.x_max == 10 and Box.of(box) is box
    x0, y0, x1, y1 = box  # still a tuple
    assert (x0, y1) == (1, 20.5)
    assert Box.of(np.array([0, 1, 2, 3])).y_max == 3
    assert Box.of(np.array([[0, 1], [2, 3]])) == (0, 1, 2, 3)  # corners, as the model takes
    with pytest.raises(PromptError, match="x_min"):
        Box.of((1, 2, 3))
    assert Click.of((4, 5, 1)) == Click(4, 5, 1) and Click.of((4, 5, 0)).positive is False
    with pytest.raises(PromptError, match=r"\(x, y, label\)"):
        Click.of((4, 5))  # as the model refuses it
    clicks = clicks_from([(1, 2), (3, 4)], [(5, 6)])
    assert clicks == [Click(1, 2, 1), Click(3, 4, 1), Click(5, 6, 0)]
    assert [(x, y, label) for x, y, label in clicks][2] == (5, 6, 0)  # the old (x, y, label)
    assert split_clicks(clicks) == ([(1, 2), (3, 4)], [(5, 6)])
