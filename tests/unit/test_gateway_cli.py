"""``embedding-gateway``'s flags: each stands for its ``GATEWAY_*`` variable and wins over it."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.cli import (
    APP_FACTORY,
    FLAGS,
    UPSTREAM_KEY_VARIABLES,
    app_from_env,
    main,
    parse_args,
    uvicorn_options,
)
from gateway.settings import GatewaySettings

KEYS = {"GATEWAY_API_KEYS": "k"}


class Recorder:
    """Stands in for ``uvicorn.run``: keeps the arguments it was called with."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, **kwargs: Any) -> None:
        self.calls.append(kwargs)


def _serve(argv: list[str], environ: dict[str, str]) -> dict[str, Any]:
    serve = Recorder()
    assert main(argv, environ, serve) == 0
    assert len(serve.calls) == 1
    return serve.calls[0]


def test_each_flag_stands_for_its_gateway_variable() -> None:
    argv = ["--host", "0.0.0.0", "--port", "18181", "--workers", "3", "--log-level", "DEBUG"]
    assert parse_args(argv) == {
        "GATEWAY_HOST": "0.0.0.0",
        "GATEWAY_PORT": "18181",
        "GATEWAY_WORKERS": "3",
        "GATEWAY_LOG_LEVEL": "debug",
    }


def test_no_flags_stand_for_nothing_so_the_environment_decides() -> None:
    assert parse_args([]) == {}


def test_a_flag_wins_over_its_variable_and_the_rest_of_the_environment_still_applies() -> None:
    environ = {**KEYS, "GATEWAY_PORT": "9000", "GATEWAY_HOST": "0.0.0.0"}
    call = _serve(["--port", "18181"], environ)
    assert (call["host"], call["port"]) == ("0.0.0.0", 18181)
    # Written into the environment: uvicorn's other processes build the app from it.
    assert environ["GATEWAY_PORT"] == "18181"


def test_a_flag_replaces_a_bad_value_of_its_variable_before_anyone_reads_it() -> None:
    call = _serve(["--port", "18181"], {**KEYS, "GATEWAY_PORT": "eighty"})
    assert call["port"] == 18181


def test_without_flags_the_variables_and_then_the_defaults_apply() -> None:
    call = _serve([], {**KEYS, "GATEWAY_WORKERS": "2"})
    assert (call["host"], call["port"], call["workers"], call["log_level"]) == (
        "127.0.0.1",
        8080,
        2,
        "info",
    )


@pytest.mark.parametrize("workers", ["1", "4"])
def test_uvicorn_always_gets_the_factory_import_string_never_an_app_object(workers: str) -> None:
    call = _serve(["--workers", workers], dict(KEYS))
    assert call["app"] == APP_FACTORY == "gateway.cli:app_from_env"
    assert call["factory"] is True
    assert call["workers"] == int(workers)


def test_the_factory_import_string_names_a_callable_that_exists() -> None:
    module_name, _, attribute = APP_FACTORY.partition(":")
    module = __import__(module_name, fromlist=[attribute])
    assert callable(getattr(module, attribute))


def test_the_upstream_key_is_dropped_before_the_processes_inherit_the_environment() -> None:
    environ = {**KEYS, "EMBEDDINGS_API_KEY": "sk-a", "OPENAI_API_KEY": "sk-b"}
    _serve([], environ)
    assert "EMBEDDINGS_API_KEY" not in environ and "OPENAI_API_KEY" not in environ


def test_uvicorn_gets_the_guarded_protocol_the_concurrency_limit_and_keep_alive() -> None:
    options = uvicorn_options(
        GatewaySettings(api_keys=("k",), limit_concurrency=300, timeout_keep_alive_s=2.5)
    )
    assert options["http"] == "gateway.slow_clients:GuardedHttpToolsProtocol"
    assert (options["limit_concurrency"], options["timeout_keep_alive"]) == (300, 2.5)


def test_a_concurrency_limit_of_0_is_no_limit_for_uvicorn() -> None:
    options = uvicorn_options(GatewaySettings(api_keys=("k",), limit_concurrency=0))
    assert options["limit_concurrency"] is None


def test_each_process_gives_the_guarded_protocol_its_deadlines(monkeypatch) -> None:
    from gateway.slow_clients import GuardedHttpToolsProtocol

    for name in ("timeout_headers_s", "timeout_body_s", "max_header_bytes"):
        monkeypatch.setattr(GuardedHttpToolsProtocol, name, getattr(GuardedHttpToolsProtocol, name))
    for name in UPSTREAM_KEY_VARIABLES:  # restored afterwards: app_from_env drops them
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GATEWAY_API_KEYS", "k")
    monkeypatch.setenv("GATEWAY_TIMEOUT_HEADERS_S", "3")
    monkeypatch.setenv("GATEWAY_TIMEOUT_BODY_S", "4")
    monkeypatch.setenv("GATEWAY_MAX_HEADER_BYTES", "5000")
    monkeypatch.setattr("gateway.app.create_app", lambda settings: settings)
    app_from_env()
    assert GuardedHttpToolsProtocol.timeout_headers_s == 3.0
    assert GuardedHttpToolsProtocol.timeout_body_s == 4.0
    assert GuardedHttpToolsProtocol.max_header_bytes == 5000


def test_access_log_and_log_level_reach_uvicorn() -> None:
    options = uvicorn_options(
        GatewaySettings(api_keys=("k",), access_log=True, log_level="warning")
    )
    assert (options["access_log"], options["log_level"]) == (True, "warning")


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--port", "0"], "--port"),
        (["--port", "70000"], "--port"),
        (["--port", "http"], "--port"),
        (["--workers", "0"], "--workers"),
        (["--workers", "two"], "--workers"),
        (["--log-level", "loud"], "--log-level"),
        (["--host", " "], "--host"),
    ],
)
def test_a_bad_flag_value_exits_2_naming_the_flag(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    serve = Recorder()
    with pytest.raises(SystemExit) as exited:
        main(argv, dict(KEYS), serve)
    assert exited.value.code == 2
    assert f"argument {named}:" in capsys.readouterr().err
    assert serve.calls == []


def test_an_unknown_option_is_an_error_with_exit_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve = Recorder()
    with pytest.raises(SystemExit) as exited:
        main(["--prot", "18181"], dict(KEYS), serve)
    assert exited.value.code == 2
    assert "unrecognized arguments: --prot" in capsys.readouterr().err
    assert serve.calls == []


def test_help_shows_every_flag_with_its_variable_and_default_and_serves_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve = Recorder()
    # No keys in the environment: --help must not even read the settings.
    with pytest.raises(SystemExit) as exited:
        main(["--help"], {}, serve)
    assert exited.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert out.startswith("usage: embedding-gateway")
    for flag in FLAGS:
        assert f"{flag.option} {flag.metavar}" in out
        assert f"(env {flag.variable}; default {flag.default})" in out
    assert serve.calls == []


def test_a_bad_variable_not_covered_by_a_flag_exits_2_naming_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve = Recorder()
    assert main(["--port", "18181"], {**KEYS, "GATEWAY_WORKERS": "0"}, serve) == 2
    assert "GATEWAY_WORKERS" in capsys.readouterr().err
    assert serve.calls == []
