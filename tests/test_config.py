"""configure() and KEITO_* variables: clear errors at the boundary, safe defaults from the environment."""

from __future__ import annotations

import logging

import pytest

import keito_instrument as keito
from keito_instrument import _config


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("base_url", "ftp://app.keito.ai", "base_url"),
        ("base_url", "not a url", "base_url"),
        ("base_url", "http://app.keito.ai", "loopback"),
        ("base_url", "http://10.0.0.5:8080", "loopback"),
        ("hours_increment", -0.25, "hours_increment"),
        ("hours_increment", 0, "hours_increment"),
        ("min_hours", -1, "min_hours"),
        ("min_hours", 25, "min_hours"),
        ("timezone", "Mars/Olympus_Mons", "timezone"),
        ("rounding", "sideways", "rounding"),
        ("expense_mode", "barter", "expense_mode"),
        ("cost_multiplier", -1.5, "cost_multiplier"),
        ("cost_multiplier", "lots", "cost_multiplier"),
        ("billable", "perhaps", "billable"),
        ("max_open_sessions", 0, "max_open_sessions"),
        ("price_overrides", {"my-model": {"input": 1}}, "price_overrides"),
        ("price_overrides", {"my-model": {"input": 1, "output": -2}}, "price_overrides"),
        ("no_such_setting", 1, "no_such_setting"),
    ],
)
def test_invalid_values_raise_a_clear_value_error(setting: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        keito.configure(**{setting: value})
    # A rejected call changes nothing.
    assert keito.get_settings() == _config.Settings(ledger_path=keito.get_settings().ledger_path)


def test_loopback_http_and_https_are_accepted() -> None:
    assert keito.configure(base_url="http://127.0.0.1:8080/").base_url == "http://127.0.0.1:8080"
    assert keito.configure(base_url="http://localhost:9").base_url == "http://localhost:9"
    assert keito.configure(base_url="https://keito.example.com").base_url == "https://keito.example.com"


def test_missing_credentials_are_not_an_error() -> None:
    settings = keito.configure(project_id="p")
    assert settings.has_credentials is False
    assert settings.api_key is None


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEITO_API_KEY", "kto_secret")
    monkeypatch.setenv("KEITO_ACCOUNT_ID", "cm123")
    monkeypatch.setenv("KEITO_PROJECT_ID", "proj")
    monkeypatch.setenv("KEITO_TIMEZONE", "Europe/London")
    monkeypatch.setenv("KEITO_BILLABLE", "false")
    monkeypatch.setenv("KEITO_MIN_HOURS", "0.25")
    settings = keito.configure()
    assert settings.has_credentials
    assert (settings.project_id, settings.timezone, settings.billable, settings.min_hours) == (
        "proj", "Europe/London", False, 0.25)
    assert "kto_secret" not in repr(settings)


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEITO_PROJECT_ID", "from-env")
    assert keito.configure(project_id="from-code").project_id == "from-code"
    assert keito.configure().project_id == "from-code"  # a later call keeps earlier arguments


def test_invalid_environment_values_warn_and_keep_the_default(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("KEITO_BASE_URL", "http://evil.example.com")
    monkeypatch.setenv("KEITO_MIN_HOURS", "-3")
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        settings = keito.get_settings()
    assert settings.base_url == _config.DEFAULT_BASE_URL
    assert settings.min_hours == 0
    assert "KEITO_BASE_URL" in caplog.text and "KEITO_MIN_HOURS" in caplog.text


def test_credentials_without_project_warn_naming_the_variable(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="keito_instrument"):
        keito.configure(api_key="kto_x", account_id="cm1")
    assert "KEITO_PROJECT_ID" in caplog.text and "KEITO_TASK_ID" in caplog.text
    assert "kto_x" not in caplog.text


def test_disabled_makes_everything_a_no_op(ledger: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEITO_DISABLED", "1")
    keito.configure()

    @keito.track_agent
    def work() -> str:
        keito.record_llm_call("gpt-4o", input_tokens=5, output_tokens=5)
        return "done"

    assert work() == "done"
    with keito.session() as s:
        assert s.session_id == "disabled"
    from keito_instrument._spool import get_spool

    assert get_spool().records() == []


def test_settings_never_hand_the_key_to_a_serialiser() -> None:
    import json

    settings = keito.configure(api_key="kto_do_not_leak", account_id="cm1")
    assert "kto_do_not_leak" not in repr(settings) and "kto_do_not_leak" not in str(settings)
    with pytest.raises(TypeError):
        json.dumps(settings)  # not a tuple or a dict: sequence serialisers cannot walk into it
    assert not isinstance(settings, (tuple, dict))
    changed = settings._replace(min_hours=0.25)
    assert (changed.min_hours, settings.min_hours, changed.api_key) == (0.25, 0.0, "kto_do_not_leak")
    with pytest.raises(AttributeError):
        settings.min_hours = 1.0  # type: ignore[misc]
