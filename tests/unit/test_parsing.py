"""Reading /predict bodies and deadline headers: every rejection has its status and code."""

import pytest

from tasks.errors import InvalidInput
from tasks.inference import validate_rows
from webapp.errors import ApiError
from webapp.parsing import parse_deadline, parse_json, parse_predict


@pytest.mark.parametrize("mimetype, raw, status, code", [
    ("text/plain", b'{"features": [1]}', 415, "unsupported_media_type"),
    ("application/json", b"{", 400, "invalid_json"),
    ("application/json", b"\xff\xfe", 400, "invalid_json"),
    ("application/json", b'{"features": [NaN]}', 400, "non_finite_number"),
    ("application/json", b'{"features": [Infinity]}', 400, "non_finite_number"),
    ("application/json", b"[" * 100_000 + b"]" * 100_000, 400, "invalid_json"),
    # Over Python's limit on integer digits: json.loads raises a plain ValueError, not a JSONDecodeError.
    ("application/json", b'{"features": [' + b"9" * 5000 + b"]}", 400, "invalid_json"),
    ("application/json", b"-" + b"1" * 4301, 400, "invalid_json"),
])
def test_parse_json_rejections(mimetype: str, raw: bytes, status: int, code: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_json(mimetype, raw)
    assert (raised.value.status, raised.value.code) == (status, code)


def test_parse_json_duplicate_keys_last_wins() -> None:
    assert parse_json("application/json", b'{"features": [1], "features": [2]}') == {"features": [2]}


@pytest.mark.parametrize("body, status, code", [
    ([1, 2], 400, "invalid_request"),
    ({}, 400, "invalid_request"),
    ({"features": [1], "instances": [[1]]}, 400, "invalid_request"),
    ({"features": [1], "extra": 1}, 400, "unknown_field"),
    ({"features": []}, 400, "invalid_request"),
    ({"features": "1,2"}, 400, "invalid_request"),
    ({"instances": []}, 400, "invalid_request"),
    ({"instances": [[1]] * 5}, 413, "too_many_instances"),
])
def test_parse_predict_rejections(body: object, status: int, code: str) -> None:
    with pytest.raises(ApiError) as raised:
        parse_predict(body, max_instances=4)
    assert (raised.value.status, raised.value.code) == (status, code)


def test_parse_predict_single_and_batch() -> None:
    assert parse_predict({"features": [1, 2]}, 4).single
    batch = parse_predict({"instances": [[1, 2], [3, 4]]}, 4)
    assert not batch.single and batch.rows == [[1, 2], [3, 4]]


@pytest.mark.parametrize("rows, code", [
    ([[1, 2]], "wrong_feature_count"),
    ([[1, 2, "3"]], "invalid_feature_value"),
    ([[1, 2, True]], "invalid_feature_value"),
    ([[1, 2, None]], "invalid_feature_value"),
    ([[1, 2, [3]]], "invalid_feature_value"),
    ([[1, 2, 1e400]], "non_finite_number"),
    ([[1, 2, 10**400]], "non_finite_number"),
    ([[1, 2, 3], 4], "invalid_request"),
])
def test_validate_rows_rejections(rows: list[object], code: str) -> None:
    with pytest.raises(InvalidInput) as raised:
        validate_rows(rows, n_features=3)
    assert raised.value.code == code


def test_validate_rows_accepts_ints_and_floats() -> None:
    assert validate_rows([[1, 2.5, -3]], 3).shape == (1, 3)


NOW = 1_700_000_000_000


@pytest.mark.parametrize("headers, expected", [
    ({}, NOW + 15000),
    ({"X-Request-Timeout-Ms": "250"}, NOW + 250),
    ({"X-Request-Timeout-Ms": "0"}, NOW),
    ({"X-Request-Deadline-Ms": str(NOW + 900)}, NOW + 900),
    ({"X-Request-Deadline-Ms": str(NOW + 900), "X-Request-Timeout-Ms": "100"}, NOW + 100),
])
def test_parse_deadline(headers: dict[str, str], expected: int) -> None:
    assert parse_deadline(headers, NOW, 15000) == expected


@pytest.mark.parametrize("value", ["-1", "1.5", "soon", "", "1e3", "0x10", "99999999999999999999", "\u0661\u0662", "+5"])
def test_parse_deadline_rejects_bad_headers(value: str) -> None:
    for name in ("X-Request-Timeout-Ms", "X-Request-Deadline-Ms"):
        with pytest.raises(ApiError) as raised:
            parse_deadline({name: value}, NOW, 15000)
        assert (raised.value.status, raised.value.code) == (400, "invalid_deadline")
