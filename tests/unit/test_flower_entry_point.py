"""``embeddings-flower``: the login rules, the loopback default, the settings file by path."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
from tornado.options import OptionParser

from devstack import REPO_ROOT
from embeddings_flower import CONFIG_PATH, DEFAULT_ADDRESS, check_login, enforce
from embeddings_flower.cli import PROG, celery_args, check_args, main
from worker.errors import EmbeddingConfigError


@dataclass
class Options:
    basic_auth: Sequence[str] | None = None
    auth: str | None = ""
    auth_provider: str | None = None
    address: str | None = ""


@pytest.mark.parametrize("basic_auth", [None, [], [""]])
def test_no_login_is_refused_naming_flower_basic_auth(basic_auth: list[str] | None) -> None:
    with pytest.raises(EmbeddingConfigError, match=r"^FLOWER_BASIC_AUTH is not set"):
        check_login(basic_auth, "", None)


@pytest.mark.parametrize(
    ("basic_auth", "entry"),
    [
        (["ops"], "entry 1 of 1"),
        (["ops:"], "entry 1 of 1"),
        ([":pw"], "entry 1 of 1"),
        (["ops:pw", ""], "entry 2 of 2"),
        (["ops:pw", "admin"], "entry 2 of 2"),
    ],
)
def test_a_login_that_is_not_user_colon_password_is_refused_by_its_position(
    basic_auth: list[str], entry: str
) -> None:
    with pytest.raises(EmbeddingConfigError, match=entry):
        check_login(basic_auth, "", None)


def test_the_refusal_never_repeats_what_may_be_a_password() -> None:
    with pytest.raises(EmbeddingConfigError) as refused:
        check_login(["hunter2-no-colon"], "", None)
    assert "hunter2" not in str(refused.value)


def test_user_colon_password_logins_are_accepted_and_a_password_may_hold_a_colon() -> None:
    check_login(["ops:pw", "admin:a:b:c"], "", None)


def test_oauth_with_a_provider_is_a_login_but_a_pattern_alone_is_not() -> None:
    check_login(None, ".*@example.com", "flower.views.auth.GoogleAuth2LoginHandler")
    with pytest.raises(EmbeddingConfigError, match="FLOWER_BASIC_AUTH"):
        check_login(None, ".*@example.com", None)


@pytest.mark.parametrize("unset", ["", None])
def test_flower_without_an_address_listens_on_loopback(unset: str | None) -> None:
    options = Options(basic_auth=["ops:pw"], address=unset)
    enforce(options)
    assert options.address == DEFAULT_ADDRESS == "127.0.0.1"


@pytest.mark.parametrize("given", ["0.0.0.0", "::1", "10.0.0.5"])
def test_an_address_given_by_flower_address_or_the_flag_is_kept(given: str) -> None:
    options = Options(basic_auth=["ops:pw"], address=given)
    enforce(options)
    assert options.address == given


def test_enforce_refuses_a_flower_without_a_login_whatever_its_address() -> None:
    with pytest.raises(EmbeddingConfigError, match="FLOWER_BASIC_AUTH"):
        enforce(Options(address="127.0.0.1"))


def test_celery_gets_the_project_app_and_the_settings_file_by_absolute_path_first() -> None:
    args = celery_args(["--port=5555", "--conf=mine.py"])
    assert args[:4] == ["-A", "worker", "flower", f"--conf={CONFIG_PATH}"]
    assert CONFIG_PATH.is_absolute() and CONFIG_PATH.is_file()
    # The caller's options come after, so their own --conf replaces the project's.
    assert args[4:] == ["--port=5555", "--conf=mine.py"]


def test_the_settings_file_sets_the_columns_and_save_interval_but_not_address_or_login() -> None:
    parser = OptionParser()
    parser.define("tasks_columns", default="name,uuid", type=str)
    parser.define("state_save_interval", default=0, type=int)
    parser.define("address", default="", type=str)
    parser.define("basic_auth", default=None, type=str, multiple=True)
    parser.parse_config_file(str(CONFIG_PATH), final=False)
    assert parser.tasks_columns.split(",")[-2:] == ["retries", "exception"]
    assert parser.state_save_interval == 60_000
    assert parser.address == ""
    assert not parser.basic_auth


@pytest.mark.parametrize(
    "args",
    [["--port=5555"], ["--persistent=True", "--db=/data/flower.db"], ["--persistent"],
     ["--address=0.0.0.0", "--conf=/etc/flower.py"], ["--url-prefix=flower"]],
)  # fmt: skip
def test_flower_options_pass_the_check(args: list[str]) -> None:
    check_args(args)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--adress=0.0.0.0"], "unknown Flower option --adress"),
        (["--port", "5555"], "unexpected argument '5555'"),
        (["-p"], "unexpected argument '-p'"),
        (["--basic_auth=ops:pw"], "FLOWER_BASIC_AUTH, not as --basic_auth"),
        (["--basic-auth=ops:pw"], "FLOWER_BASIC_AUTH, not as --basic_auth"),
    ],
)
def test_an_argument_flower_would_drop_or_must_not_get_is_refused(
    args: list[str], says: str
) -> None:
    with pytest.raises(EmbeddingConfigError, match=says):
        check_args(args)


def test_a_refused_argument_exits_2_with_the_message_before_flower_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--adress=0.0.0.0"]) == 2
    assert capsys.readouterr().err.startswith(f"{PROG}: unknown Flower option --adress")


def test_help_names_the_login_and_address_variables_and_exits_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {PROG}")
    assert "FLOWER_BASIC_AUTH" in out and "FLOWER_ADDRESS" in out and "127.0.0.1" in out


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )


def test_installed_rules_run_after_tornado_parses_flowers_flags() -> None:
    # In a child process: the callback is registered on tornado's global options for good.
    code = (
        "import flower.options\n"
        "from tornado.options import options\n"
        "from embeddings_flower import install\n"
        "install(); install()\n"
        "ours = [c for c in options._parse_callbacks if c.__name__ == 'enforce_flower_options']\n"
        "assert len(ours) == 1, options._parse_callbacks\n"
        "options.parse_command_line(['flower', '--basic_auth=ops:pw'])\n"
        "assert options.address == '127.0.0.1', options.address\n"
        "options.basic_auth = []\n"
        "options.parse_command_line(['flower'])\n"
    )
    done = _python(code)
    assert done.returncode == 1
    assert "EmbeddingConfigError: FLOWER_BASIC_AUTH is not set" in done.stderr


def test_the_repo_roots_flowerconfig_applies_the_same_rules_to_celery_flower_started_there():
    code = (
        "import flower.options\n"
        "from tornado.options import options\n"
        "options.basic_auth = ['ops:pw']\n"
        "options.parse_config_file('flowerconfig.py', final=False)\n"
        "assert options.address == '127.0.0.1', options.address\n"
        "assert options.tasks_columns.endswith('retries,exception')\n"
        "options.basic_auth = []\n"
        "options.parse_config_file('flowerconfig.py', final=False)\n"
    )
    done = _python(code)
    assert done.returncode == 1
    assert "flower: FLOWER_BASIC_AUTH is not set" in done.stderr


def _celery_line(argv: list[str]) -> str | None:
    """What the guard sees where ``celery <argv>`` builds its app: in the group's own body."""
    import click

    from embeddings_flower import guard

    seen: list[str | None] = []

    @click.group()
    @click.option("-A", "--app")
    def celery(app: str | None) -> None:
        seen.append(guard._celery_subcommand())  # Celery's find_app(app) runs here

    for name in ("flower", "worker", "inspect"):
        celery.command(name, context_settings={"ignore_unknown_options": True})(
            click.argument("rest", nargs=-1, type=click.UNPROCESSED)(lambda rest: None)
        )
    celery.main(argv, standalone_mode=False)
    (subcommand,) = seen
    return subcommand


@pytest.mark.parametrize(
    ("argv", "subcommand"),
    [
        (["-A", "worker", "flower", "--port=5555"], "flower"),
        (["-A", "worker", "worker", "-n", "flower@host"], "worker"),
        (["-A", "worker", "inspect", "ping"], "inspect"),
    ],
)
def test_the_guard_knows_the_celery_subcommand_while_the_app_is_built(argv, subcommand) -> None:
    assert _celery_line(argv) == subcommand


def test_outside_a_command_line_the_guard_does_nothing() -> None:
    from embeddings_flower import guard

    assert guard._celery_subcommand() is None
