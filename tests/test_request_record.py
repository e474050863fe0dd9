"""The typed request record: its fields are exactly the ``requests`` columns, a misspelt field is an error (not a
NULL column), it is finished once, and what the route builds reaches metrics, limits and the writer whole."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.metrics import Metrics, iter_samples
from gateway.record import ROW_FIELDS, RecordFinishedTwice, RequestRecord
from gateway.store.models import REQUEST_COLUMNS
from tests.dbutil import wait_rows


def test_record_fields_are_the_request_columns() -> None:
    assert set(ROW_FIELDS) == set(REQUEST_COLUMNS)  # a column added without a field (or the reverse) fails here
    assert [f.name for f in dataclasses.fields(RequestRecord) if f.name != "finished"] == list(ROW_FIELDS)


def test_misspelt_field_is_an_error_not_a_null_column() -> None:
    record = RequestRecord(id="r1", model_requested="auto", stream=False)
    with pytest.raises(AttributeError):
        record.bakend = "cheap"  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        RequestRecord(id="r2", model_requested="auto", stream=False, promt_tokens=3)  # type: ignore[call-arg]
    assert "bakend" not in record.as_row()


def test_record_is_finished_once_and_refuses_negative_usage() -> None:
    record = RequestRecord(id="r1", model_requested="auto", stream=False)
    with pytest.raises(ValueError, match="negative usage"):
        record.finish(status="ok", http_status=200, latency_ms=1.0, prompt_tokens=-1)
    record.finish(status="ok", http_status=200, latency_ms=1.0, prompt_tokens=5, completion_tokens=2)
    with pytest.raises(RecordFinishedTwice):
        record.finish(status="error", http_status=502, latency_ms=2.0)
    assert (record.status, record.http_status, record.prompt_tokens) == ("ok", 200, 5)


def test_metrics_observe_reads_the_record() -> None:
    metrics = Metrics()
    record = RequestRecord(id="r1", model_requested="auto", stream=True, pool="auto", backend="cheap",
                           attempts=[{"backend": "cheap", "status": 200, "error": None, "latency_ms": 3.0}])
    record.finish(status="ok", http_status=200, latency_ms=9.0, ttft_ms=4.0, prompt_tokens=7, completion_tokens=3,
                  cost_usd=0.5)
    metrics.observe(record)
    text = metrics.render().decode()
    tokens = {s["kind"]: v for s, v in iter_samples(text, "poolgate_tokens_total")}
    assert tokens == {"prompt": 7.0, "completion": 3.0}
    assert [v for _, v in iter_samples(text, "poolgate_cost_usd_total")] == [0.5]


def test_gateway_row_is_the_record_the_route_built(gateway: Any, fake_backends: Any) -> None:
    import httpx

    from tests.conftest import backend_yaml

    _, server = fake_backends("cheap")
    gw = gateway(f"backends:\n{backend_yaml('cheap', server.url)}\npools:\n  - name: auto\n    members: [cheap]\n")
    r = httpx.post(f"{gw.url}/v1/chat/completions", timeout=30,
                   json={"model": "auto", "messages": [{"role": "user", "content": "2+2?"}]})
    assert r.status_code == 200
    [row] = wait_rows(gw.settings.database_url, 1)
    assert set(row) == set(REQUEST_COLUMNS)
    assert (row["id"], row["pool"], row["backend"], row["usage_estimated"]) == (
        r.headers["x-poolgate-request-id"], "auto", "cheap", False)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (7, 3)
