"""The ext_proc servicer in process: the ProcessingResponse messages it builds for Envoy, from
the headers and body Envoy would send (no gRPC server, no Envoy)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncIterator

import pytest
from envoy.config.core.v3 import base_pb2
from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb

from pdserve import wire
from pdserve.epp import director
from pdserve.epp.config import load
from pdserve.epp.datastore import Datastore, StaticSource
from pdserve.epp.director import Decision, Director
from pdserve.epp.extproc import FULL_DUPLEX, ExtProc
from pdserve.epp.metrics import EppMetrics
from pdserve.epp.request import prompt_text
from pdserve.epp.scheduler import Scheduler
from pdserve.epp.types import Endpoint, Metrics
from pdserve.render.epp_defaults import PD

DECODE = Endpoint("10.0.0.1", 8000, {wire.ROLE_LABEL: wire.ROLE_DECODE})
PREFILL = Endpoint("10.0.0.2", 8000, {wire.ROLE_LABEL: wire.ROLE_PREFILL})
SPOOFED = {
    wire.PREFILLER_HEADER: b"169.254.169.254:80",
    wire.PREFILLER_URL_HEADER: b"http://x",
    wire.ENCODER_HEADER: b"169.254.169.254:80",
    wire.DATA_PARALLEL_HEADER: b"169.254.169.254:80",
}
EPP_ONLY = [
    wire.PREFILLER_HEADER,
    wire.PREFILLER_URL_HEADER,
    wire.ENCODER_HEADER,
    wire.DATA_PARALLEL_HEADER,
]


def servicer() -> ExtProc:
    """The default P/D config (prefill from 256 uncached characters) over one pod per role."""
    store = Datastore(StaticSource([DECODE, PREFILL]))
    store.refresh()
    return ExtProc(Director(Scheduler(load(PD)), store, EppMetrics()))


async def process(
    ext: ExtProc, headers: dict[str, bytes], body: object, duplex: bool = True
) -> list[pb.ProcessingResponse]:
    """One HTTP request as Envoy streams it: headers, then the whole body in one chunk."""
    mode = FULL_DUPLEX if duplex else ProcessingMode.BUFFERED
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    header_map = base_pb2.HeaderMap(
        headers=[base_pb2.HeaderValue(key=k, raw_value=v) for k, v in headers.items()]
    )

    async def stream() -> AsyncIterator[pb.ProcessingRequest]:
        yield pb.ProcessingRequest(
            request_headers=pb.HttpHeaders(headers=header_map),
            protocol_config=pb.ProtocolConfiguration(request_body_mode=mode),
        )
        yield pb.ProcessingRequest(request_body=pb.HttpBody(body=raw, end_of_stream=True))

    return [out async for out in ext.Process(stream(), None)]


def mutation(answers: list[pb.ProcessingResponse]) -> pb.HeaderMutation:
    """The decision's mutation: on the headers answer (duplex) or the body answer (buffered)."""
    for answer in answers:
        kind = answer.WhichOneof("response")
        if kind in ("request_headers", "request_body"):
            common = getattr(answer, kind).response
            if common.HasField("header_mutation"):
                return common.header_mutation
    raise AssertionError(f"no routing decision in {answers}")


def set_headers(m: pb.HeaderMutation) -> dict[str, str]:
    return {h.header.key: h.header.raw_value.decode() for h in m.set_headers}


async def test_client_prefill_headers_are_removed_when_decode_only() -> None:
    answers = await process(servicer(), SPOOFED, {"model": "m", "prompt": "short"})
    m = mutation(answers)
    assert set_headers(m)[wire.DESTINATION_HEADER] == DECODE.name
    assert wire.PREFILLER_HEADER not in set_headers(m)
    assert list(m.remove_headers) == EPP_ONLY


@pytest.mark.parametrize("duplex", [True, False])
async def test_epp_prefill_header_overrides_the_client_and_the_legacy_one_goes(
    duplex: bool,
) -> None:
    answers = await process(servicer(), SPOOFED, {"model": "m", "prompt": "p" * 400}, duplex)
    m = mutation(answers)
    assert set_headers(m)[wire.PREFILLER_HEADER] == PREFILL.name
    assert list(m.remove_headers) == EPP_ONLY[1:]


async def test_a_data_parallel_rank_is_the_epps_own_and_a_clients_encoder_goes() -> None:
    config = load(
        "plugins: [{type: data-parallel-profile-handler, parameters: {primaryPort: 8000}}]\n"
        "schedulingProfiles: [{name: d}]"
    )
    rank = Endpoint("10.0.0.1", 8002, {wire.ROLE_LABEL: wire.ROLE_DECODE})
    store = Datastore(StaticSource([rank]))
    store.refresh()
    ext = ExtProc(Director(Scheduler(config), store, EppMetrics()))
    m = mutation(await process(ext, SPOOFED, {"model": "m", "prompt": "hi"}))
    assert set_headers(m)[wire.DATA_PARALLEL_HEADER] == rank.name
    assert list(m.remove_headers) == EPP_ONLY[:3]


def lb_hosts(answers: list[pb.ProcessingResponse]) -> list[str]:
    """The hosts the override-host policy reads from the decision's dynamic metadata."""
    for answer in answers:
        fields = answer.dynamic_metadata.fields
        if wire.ENVOY_LB_NAMESPACE in fields:
            value = fields[wire.ENVOY_LB_NAMESPACE].struct_value.fields[wire.DESTINATION_HEADER]
            return value.string_value.split(",")
    raise AssertionError(f"no {wire.ENVOY_LB_NAMESPACE} metadata in {answers}")


async def test_the_metadata_names_the_pick_then_a_fallback_of_its_profile() -> None:
    """The header keeps one endpoint (ORIGINAL_DST reads it); the metadata adds the next
    decode endpoint, never the prefill one the decode profile filtered out."""
    other = Endpoint("10.0.0.3", 8000, {wire.ROLE_LABEL: wire.ROLE_DECODE})
    store = Datastore(StaticSource([DECODE, PREFILL, other]))
    store.refresh()
    ext = ExtProc(Director(Scheduler(load(PD)), store, EppMetrics()))
    answers = await process(ext, {}, {"model": "m", "prompt": "short"})
    picked = set_headers(mutation(answers))[wire.DESTINATION_HEADER]
    hosts = lb_hosts(answers)
    assert hosts[0] == picked and sorted(hosts) == sorted([DECODE.name, other.name])
    alone = await process(servicer(), {}, {"model": "m", "prompt": "hi"})
    assert lb_hosts(alone) == [DECODE.name]  # one decode endpoint: no fallback


async def test_the_epps_own_answers_carry_the_details_envoy_passes_untouched() -> None:
    from pdserve.epp.envoy import bootstrap

    answers = await process(servicer(), {}, b"{")
    assert answers[-1].immediate_response.details == f"{wire.EPP_DETAILS_PREFIX}400"
    expression = f'response.code_details.startsWith("{wire.EPP_DETAILS_PREFIX}")'
    assert expression in str(bootstrap(8080, 9002, 9901, [], "BUFFERED"))


@pytest.mark.parametrize("prompt", [[1, 2, 3], [[1, 2], [3, 4]], [[1, 2], "text"]])
async def test_token_id_prompts_are_routed(prompt: object) -> None:
    answers = await process(servicer(), {}, {"model": "m", "prompt": prompt})
    assert set_headers(mutation(answers))[wire.DESTINATION_HEADER] == DECODE.name


def test_token_id_prompt_text_is_deterministic_and_prefix_preserving() -> None:
    text = prompt_text({"prompt": [11, 2, 3]})
    assert text == prompt_text({"prompt": [11, 2, 3]}) == "11 2 3 "
    assert prompt_text({"prompt": [11, 2, 3, 4]}).startswith(text)
    assert prompt_text({"prompt": [1, 12, 3]}) != text
    assert prompt_text({"prompt": [[11, 2], [3]]}) == text  # a batch hashes as its tokens


async def test_non_utf8_header_value_does_not_end_the_stream() -> None:
    answers = await process(servicer(), {"x-note": b"caf\xe9"}, {"model": "m", "prompt": "hi"})
    assert set_headers(mutation(answers))[wire.DESTINATION_HEADER] == DECODE.name


@pytest.mark.parametrize("duplex", [True, False])
async def test_an_unexpected_error_is_a_logged_500_in_vllm_shape(
    duplex: bool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    ext = servicer()

    def broken(*args: object) -> None:
        raise RuntimeError("plugin bug")

    monkeypatch.setattr(ext.director.scheduler, "schedule", broken)
    headers = {wire.REQUEST_ID_HEADER: b"req-500"}
    answers = await process(ext, headers, {"model": "m", "prompt": "hi"}, duplex)
    immediate = answers[-1].immediate_response
    assert immediate.status.code == 500
    assert json.loads(immediate.body) == {
        "error": {
            "message": "internal error in the endpoint picker",
            "type": "InternalServerError",
            "param": None,
            "code": 500,
        }
    }
    logged = [r for r in caplog.records if r.getMessage() == "internal_error"]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert logged[0].fields["request_id"] == "req-500"
    assert "plugin bug" in logged[0].fields["error"]
    # The servicer is still usable: the next stream is decided normally.
    monkeypatch.undo()
    answers = await process(ext, headers, {"model": "m", "prompt": "hi"}, duplex)
    assert answers[-1].WhichOneof("response") != "immediate_response"


async def test_json_nested_beyond_the_parsers_depth_is_a_400_not_a_500() -> None:
    answers = await process(servicer(), {}, b"[" * 100_000)
    immediate = answers[-1].immediate_response
    assert immediate.status.code == 400
    assert json.loads(immediate.body)["error"]["message"] == (
        "invalid JSON body: JSON nested too deeply"
    )


@pytest.mark.parametrize("duplex", [True, False])
async def test_a_malformed_body_is_a_logged_400_in_vllm_shape(
    duplex: bool, caplog: pytest.LogCaptureFixture
) -> None:
    ext = servicer()
    headers = {wire.REQUEST_ID_HEADER: b"req-bad"}
    with caplog.at_level(logging.INFO, logger="pdserve.epp"):
        answers = await process(ext, headers, b'{"model": "m", "prompt": ', duplex)
    immediate = answers[-1].immediate_response
    assert immediate.status.code == 400
    headers_set = {h.header.key: h.header.raw_value for h in immediate.headers.set_headers}
    assert headers_set == {"content-type": b"application/json"}
    error = json.loads(immediate.body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == 400 and error["type"] == "BadRequestError"
    assert error["message"].startswith("invalid JSON body: ")
    logged = [r for r in caplog.records if r.getMessage() == "bad_request"]
    assert len(logged) == 1 and logged[0].levelno == logging.WARNING
    assert logged[0].fields == {"request_id": "req-bad", "status": 400, "reason": error["message"]}
    labels = {"model_name": "", "target_model_name": "", "error_code": "400"}
    sample = ext.director.metrics.registry.get_sample_value(
        "inference_model_request_error_total", labels
    )
    assert sample == 1


def shedding_picker(config_text: str, waiting: int) -> Director:
    """One decode pod, scraped now with `waiting` queued requests."""
    pod = Endpoint("10.0.0.1", 8000, {wire.ROLE_LABEL: wire.ROLE_DECODE})
    pod.metrics = Metrics(waiting=waiting, updated=time.monotonic())
    store = Datastore(StaticSource([pod]))
    store.refresh()
    return Director(Scheduler(load(config_text)), store, EppMetrics())


SHEDDABLE = {wire.CRITICALITY_HEADER: "Sheddable"}
BODY = json.dumps({"model": "m", "prompt": "hi"}).encode()


def test_the_pickers_own_config_sheds_and_its_reason_is_the_429() -> None:
    """Queue 4 is room by the built-in thresholds (<= 5) but saturation 4/4 = 1 by this
    config's detector; a picker of the built-in-only config beside it still admits."""
    detector = (
        "plugins: [{type: utilization-detector, parameters: {queueDepthThreshold: 4}},"
        " {type: random-picker}]\n"
        "flowControl: {saturationDetector: {pluginRef: utilization-detector}}\n"
        "schedulingProfiles: [{name: a, plugins: [{pluginRef: random-picker}]}]"
    )
    with pytest.raises(Decision) as err:
        shedding_picker(detector, 4).decide(SHEDDABLE, BODY)
    assert (err.value.status, err.value.message) == (
        429,
        "utilization-detector: pool saturated, sheddable request dropped",
    )
    result, _ = shedding_picker(PD, 4).decide(SHEDDABLE, BODY)
    assert result.endpoint is not None
    with pytest.raises(Decision, match=r"^system saturated, sheddable request dropped$"):
        shedding_picker(PD, 6).decide(SHEDDABLE, BODY)


def test_the_routed_line_is_built_only_when_debug_is_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    built: list[object] = []
    real = director._profile_log
    monkeypatch.setattr(director, "_profile_log", lambda r: built.append(r) or real(r))
    picker = servicer().director
    get = {":method": "GET", ":path": "/v1/models"}
    with caplog.at_level(logging.INFO, logger="pdserve.epp"):
        picker.decide(get, b"")
    assert built == []
    with caplog.at_level(logging.DEBUG, logger="pdserve.epp"):
        picker.decide(get, b"")
    assert built and [r.getMessage() for r in caplog.records] == ["routed"]


@pytest.mark.parametrize("duplex", [True, False])
async def test_a_body_over_the_limit_is_a_413_before_it_is_parsed(duplex: bool) -> None:
    store = Datastore(StaticSource([DECODE, PREFILL]))
    store.refresh()
    ext = ExtProc(Director(Scheduler(load(PD)), store, EppMetrics()), max_body=100)
    answers = await process(ext, {}, b"{" * 101, duplex)  # not even JSON: never parsed
    assert [a.WhichOneof("response") for a in answers] == (
        ["immediate_response"] if duplex else ["request_headers", "immediate_response"]
    )
    answer = answers[-1].immediate_response
    error = json.loads(answer.body)["error"]
    assert (answer.status.code, error["code"]) == (413, 413)
    assert error["message"] == "request body over 100 bytes"
    ok = await process(ext, {}, {"model": "m", "prompt": "p"}, duplex)  # still serving
    assert mutation(ok)
