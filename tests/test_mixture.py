import json
import math

import numpy as np
import pytest

from regmix_ds.core.errors import RegmixError
from regmix_ds.core.mixture import Mixture


def test_valid_mixture_keeps_order_and_sums_to_one():
    m = Mixture.from_weights({"b": 0.25, "a": 0.75})
    assert m.domains == ("b", "a")
    assert math.isclose(sum(m.weights.values()), 1.0)
    np.testing.assert_array_equal(m.vector(["a", "b", "c"]), [0.75, 0.25, 0.0])


def test_weights_are_immutable():
    m = Mixture.from_weights({"a": 1.0})
    with pytest.raises(TypeError):
        m.weights["a"] = 0.5


@pytest.mark.parametrize(
    "weights, problem",
    [
        ({"a": float("nan"), "b": 1.0}, "not finite"),
        ({"a": float("inf")}, "not finite"),
        ({"a": -0.1, "b": 1.1}, "negative"),
        ({"a": 0.0, "b": 0.0}, "all weights are zero"),
        ({}, "no weights"),
        ({"a": "0.5", "b": 0.5}, "not a number"),
        ({"a": True}, "not a number"),
        ({"../etc": 1.0}, "invalid domain name"),
        ({"a/b": 1.0}, "invalid domain name"),
        ({"a": 0.5, "b": 0.4}, "sum to"),
    ],
)
def test_bad_weights_are_one_line_errors(weights, problem):
    with pytest.raises(RegmixError, match=problem) as info:
        Mixture.from_weights(weights, source="mix.json")
    assert "\n" not in str(info.value) and str(info.value).startswith("mix.json: ")


def test_renormalise_only_when_asked():
    m = Mixture.from_weights({"a": 2.0, "b": 6.0}, renormalize=True)
    assert m.weights == {"a": 0.25, "b": 0.75}
    with pytest.raises(RegmixError, match="sum to"):
        Mixture.from_weights({"a": 2.0, "b": 6.0})


def test_hash_ignores_order_but_not_values():
    a = Mixture.from_weights({"x": 0.5, "y": 0.5})
    b = Mixture.from_weights({"y": 0.5, "x": 0.5})
    c = Mixture.from_weights({"x": 0.5 + 1e-9, "y": 0.5 - 1e-9})
    assert a.content_hash() == b.content_hash() != c.content_hash()


def test_check_domains_names_unknown_and_missing():
    m = Mixture.from_weights({"a": 0.5, "zzz": 0.5})
    with pytest.raises(RegmixError, match="unknown domain.*zzz"):
        m.check_domains(["a", "b"], "manifest.json")
    with pytest.raises(RegmixError, match="lacks domain.*b"):
        Mixture.from_weights({"a": 1.0}).check_domains(["a", "b"], "manifest.json")


def test_json_round_trip_with_metadata(tmp_path):
    path = tmp_path / "best.json"
    m = Mixture.from_weights({"a": 0.3, "b": 0.7})
    m.save(path, predicted=1.23)
    data = json.loads(path.read_text())
    assert data["predicted"] == 1.23 and data["hash"] == m.content_hash()
    assert Mixture.load(path) == m


def test_load_rejects_a_file_without_weights(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"w": {}}')
    with pytest.raises(RegmixError, match=r"m\.json: .*\"weights\""):
        Mixture.load(path)
    path.write_text("{not json")
    with pytest.raises(RegmixError, match="not valid JSON"):
        Mixture.load(path)
