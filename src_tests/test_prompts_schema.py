"""The prompt file's published JSON Schema: ``segment --print-schema``, the example files, and
agreement between the schema and the pydantic models that validate the file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import PROJECT_ROOT

from napari_medsam.cli import main
from napari_medsam.segmentation.prompts_file import (
    PromptFileError,
    parse_prompts,
    prompt_file_schema,
    validate_prompt_file,
)

EXAMPLES = sorted((PROJECT_ROOT / "docs" / "examples").rglob("*.json"))

# Files the schema alone can tell are wrong (no image needed): (content, message part).
STRUCTURALLY_INVALID = {
    "not_an_object": ([1, 2], "JSON object"),
    "unknown_top_key": ({"objects": [{"label": 1, "slice": 0, "box": [0, 0, 1, 1]}],
                         "things": 1}, "unknown top-level key 'things'"),
    "no_objects": ({"description": "x"}, "missing \"objects\""),
    "empty_objects": ({"objects": []}, "empty"),
    "object_not_a_dict": ({"objects": [5]}, "must be a JSON object"),
    "unknown_key": ({"objects": [{"label": 1, "slice": 0, "box": [0, 0, 1, 1], "colour": 1}]},
                    "unknown key 'colour'"),
    "label_zero": ({"objects": [{"label": 0, "slice": 0, "box": [0, 0, 1, 1]}]}, ">= 1"),
    "label_string": ({"objects": [{"label": "1", "slice": 0, "box": [0, 0, 1, 1]}]},
                     "whole number"),
    "label_bool": ({"objects": [{"label": True, "slice": 0, "box": [0, 0, 1, 1]}]},
                   "whole number"),
    "label_too_big": ({"objects": [{"label": 2**32, "slice": 0, "box": [0, 0, 1, 1]}]},
                      "at most 4294967295"),
    "slice_missing": ({"objects": [{"label": 1, "box": [0, 0, 1, 1]}]}, "missing"),
    "slice_fraction": ({"objects": [{"label": 1, "slice": 2.5, "box": [0, 0, 1, 1]}]},
                       "whole number, got 2.5"),
    "slice_negative": ({"objects": [{"label": 1, "slice": -1, "box": [0, 0, 1, 1]}]},
                       "slice -1 is outside the image"),
    "axis_3": ({"objects": [{"label": 1, "slice": 0, "axis": 3, "box": [0, 0, 1, 1]}]},
               "0, 1 or 2"),
    "box_null": ({"objects": [{"label": 1, "slice": 0, "box": None}]}, "got null"),
    "box_three": ({"objects": [{"label": 1, "slice": 0, "box": [0, 0, 1]}]}, "4 numbers"),
    "box_five": ({"objects": [{"label": 1, "slice": 0, "box": [0, 0, 1, 1, 1]}]}, "4 numbers"),
    "point_sign_2": ({"objects": [{"label": 1, "slice": 0, "points": [[1, 1, 2]]}]}, "sign"),
    "point_two_numbers": ({"objects": [{"label": 1, "slice": 0, "points": [[1, 1]]}]},
                          "[row, col, sign]"),
    "no_prompt_at_all": ({"objects": [{"label": 1, "slice": 0}]}, "box or at least one"),
    "propagate_string": ({"objects": [{"label": 1, "slice": 0, "box": [0, 0, 1, 1],
                                       "propagate": "yes"}]}, "true or false"),
    "range_three": ({"objects": [{"label": 1, "slice": 0, "box": [0, 0, 1, 1],
                                  "slice_range": [0, 1, 2]}]}, "[first, last]"),
    "name_number": ({"objects": [{"label": 1, "slice": 0, "box": [0, 0, 1, 1], "name": 7}]},
                    "must be a string"),
    "description_number": ({"objects": [{"label": 1, "slice": 0, "box": [0, 0, 1, 1]}],
                            "description": 3}, "\"description\" must be a string"),
}


def test_print_schema_prints_the_schema_and_needs_no_other_argument():
    result = subprocess.run([sys.executable, "-m", "napari_medsam.cli", "segment",
                             "--print-schema"], capture_output=True, encoding="utf-8")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout) == prompt_file_schema()


def test_print_schema_exits_like_help_from_main(capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment", "--print-schema"])
    assert info.value.code == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["required"] == ["objects"] and schema["additionalProperties"] is False
    obj = schema["$defs"][schema["properties"]["objects"]["items"]["$ref"].split("/")[-1]]
    assert sorted(obj["properties"]) == sorted(
        ["label", "name", "axis", "slice", "box", "points", "propagate", "slice_range"])
    assert obj["properties"]["label"]["minimum"] == 1
    assert obj["properties"]["box"]["minItems"] == obj["properties"]["box"]["maxItems"] == 4


def test_the_example_files_follow_the_published_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = prompt_file_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert len(EXAMPLES) >= 2, EXAMPLES
    for path in EXAMPLES:
        data = json.loads(path.read_text(encoding="utf-8"))
        errors = [e.message for e in validator.iter_errors(data)]
        assert errors == [], (path, errors)


def test_the_example_files_round_trip_through_the_models():
    for path in EXAMPLES:
        data = json.loads(path.read_text(encoding="utf-8"))
        spec = validate_prompt_file(data, source=str(path))
        again = validate_prompt_file(json.loads(spec.model_dump_json(exclude_defaults=True)))
        assert again == spec, path
        assert [o.label for o in spec.objects] == [o["label"] for o in data["objects"]]


@pytest.mark.parametrize("kind", sorted(STRUCTURALLY_INVALID))
def test_schema_and_models_reject_the_same_files(kind):
    """What the published schema refuses, the CLI refuses too, with one line."""
    jsonschema = pytest.importorskip("jsonschema")
    data, expected = STRUCTURALLY_INVALID[kind]
    assert not jsonschema.Draft202012Validator(prompt_file_schema()).is_valid(data)
    with pytest.raises(PromptFileError) as info:
        parse_prompts(data, (10, 20, 30), source="p.json")
    message = str(info.value)
    assert message.startswith("p.json: ") and expected in message, message
    assert "\n" not in message and "pydantic" not in message.lower()


def test_whole_number_floats_pass_both_checks():
    jsonschema = pytest.importorskip("jsonschema")
    data = {"objects": [{"label": 2.0, "slice": 3.0, "axis": 1.0, "box": [1.0, 2, 5, 6.0],
                         "points": [[2, 3, 1.0]], "slice_range": [0.0, 5]}]}
    assert jsonschema.Draft202012Validator(prompt_file_schema()).is_valid(data)
    (p,) = parse_prompts(data, (10, 20, 30))
    assert (p.label, p.slice, p.axis, p.box, p.points, p.slice_range) == (
        2, 3, 1, (1, 2, 5, 6), ((2, 3, 1),), (0, 5))
    assert all(type(v) is int for v in (p.label, p.slice, p.axis, *p.box, *p.points[0]))


def test_many_problems_still_give_one_line_about_the_first():
    data = {"objects": [
        {"label": 1, "slice": 0, "box": [0, 0, 1, 1]},
        {"label": "x", "slice": 99, "box": [1], "points": "no", "propagate": 3, "zz": 1},
        {"label": 0, "axis": 7},
    ]}
    with pytest.raises(PromptFileError) as info:
        parse_prompts(data, (10, 20, 30), source="p.json")
    assert str(info.value) == ("p.json: objects[1], field 'zz': unknown key 'zz' (allowed: "
                               "label, name, axis, slice, box, points, propagate, slice_range)")
    assert (info.value.index, info.value.field) == (1, "zz")
    del data["objects"][1]["zz"]
    with pytest.raises(PromptFileError) as info:
        parse_prompts(data, (10, 20, 30), source="p.json")
    assert str(info.value) == ("p.json: objects[1], field 'label': the label must be a whole "
                               "number, got \"x\"")


def test_image_bounds_are_checked_only_with_a_shape():
    data = {"objects": [{"label": 1, "slice": 50, "axis": 2, "box": [0, 0, 40, 15],
                         "points": [[3, 19, 1]]}]}
    assert validate_prompt_file(data).objects[0].slice == 50  # no image: indices unbounded
    with pytest.raises(PromptFileError, match="slice 50 is outside the image: axis 2 has "
                                              r"slices 0\.\.29"):
        parse_prompts(data, (10, 20, 30))
    data["objects"][0]["slice"] = 29
    with pytest.raises(PromptFileError, match=r"row_max 40 is outside the slice \(rows 0\.\.9 "
                                              "on axis 2"):
        parse_prompts(data, (10, 20, 30))
    data["objects"][0]["box"] = [0, 0, 9, 15]
    with pytest.raises(PromptFileError, match=r"point 0 column 19 is outside the slice "
                                              r"\(columns 0\.\.18 on axis 2\)"):
        parse_prompts(data, (10, 19, 30))
    (p,) = parse_prompts(data, (10, 20, 30))
    assert p.session_box == (0, 0, 15, 9) and p.positives == [(19, 3)]
