"""Settings: `configure(**settings)` over `KEITO_*` environment variables.

Settings are an immutable snapshot swapped atomically, so hot paths read them without a lock.
Invalid values given to `configure()` raise `ValueError` naming the setting. An invalid environment
value never raises into the host (it may be read at import or inside a hook): it is ignored, one
WARNING naming the variable goes to the `keito_instrument` logger, and to stderr as well when
logging is not configured (a last resort for this one case), and `setting_problems()` keeps it
for `keito-instrument status` and `doctor`. An invalid `KEITO_BASE_URL` also holds delivery (the
records stay in the local ledger): falling back to the default URL would send staging data to
production.
"""

import logging
import math
import os
import sys
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

from . import _forksafe

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

_log = logging.getLogger("keito_instrument")

DEFAULT_BASE_URL = "https://app.keito.ai"

Rounding = Literal["nearest", "up", "down"]
ExpenseMode = Literal["cost", "units"]
Granularity = Literal["session", "hour", "day"]


_EMPTY: Mapping[str, Any] = MappingProxyType({})


class Settings:
    """Every setting of keito-instrument. Build it with `configure()`; read it with `get_settings()`.

    Immutable: `settings._replace(name=value)` gives a changed copy.
    """

    # A small frozen class rather than a dataclass (`dataclasses` imports `inspect`, which would
    # triple the cost of `import keito_instrument`) and rather than a NamedTuple (as a tuple it
    # would hand the API key to anything that serialises sequences: json.dumps, error reporters).
    # The class attributes are the defaults; an instance holds only what differs.
    api_key: str | None = None
    account_id: str | None = None
    base_url: str = DEFAULT_BASE_URL
    project_id: str | None = None
    task_id: str | None = None
    expense_category_id: str | None = None
    agent_id: str | None = None
    agent_type: str | None = None
    billable: bool = True
    ledger_path: str | None = None
    timezone: str | None = None
    disabled: bool = False
    hours_increment: float = 0.01
    rounding: Rounding = "nearest"
    min_hours: float = 0.0
    cost_multiplier: float = 1.0
    currency: str = "USD"
    exchange_rate: float | None = None
    cost_decimals: int = 6
    expense_mode: ExpenseMode = "cost"
    granularity: Granularity = "session"
    price_overrides: Mapping[str, Mapping[str, float]] = _EMPTY
    idle_timeout: float = 1800.0
    max_open_sessions: int = 10_000
    max_open_runs: int = 10_000
    max_run_age: float = 86_400.0
    max_session_age: float = 86_400.0
    capture_content: bool = False
    metadata: Mapping[str, Any] = _EMPTY
    batch_size: int = 100
    flush_interval: float = 1.0
    max_concurrency: int = 8
    request_timeout: float = 10.0
    atexit_timeout: float = 5.0
    ledger_retention_days: float = 30.0  # delivered records and old session rows pruned after (0: never)
    # Not a setting: why delivery is held although credentials are set (an invalid KEITO_BASE_URL).
    _held: str | None = None

    @property
    def has_credentials(self) -> bool:
        """True when records can be sent to Keito (an API key and an account id are set, and
        delivery is not held by an invalid base URL from the environment)."""
        return bool(self.api_key and self.account_id) and self._held is None

    @property
    def delivery_held(self) -> str | None:
        """Why records stay local although credentials are set (an invalid KEITO_BASE_URL), or None."""
        return self._held

    def tzinfo(self) -> "ZoneInfo | None":
        """The workspace time zone, or None for the machine's local time zone."""
        if not self.timezone:
            return None
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.timezone)

    def __init__(self, **values: Any) -> None:
        unknown = set(values) - _DEFAULTS.keys() - {"_held"}
        if unknown:
            raise TypeError(f"Settings got unknown settings: {sorted(unknown)}")
        self.__dict__.update(values)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Settings are immutable: use configure({name}=...) or _replace()")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Settings are immutable")

    def _replace(self, **changes: Any) -> "Settings":
        """A copy with some settings changed."""
        return Settings(**{**self.__dict__, **changes})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        same = all(getattr(self, name) == getattr(other, name) for name in _DEFAULTS)
        return same and self._held == other._held

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:  # never the API key
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in _DEFAULTS if name != "api_key")
        return f"Settings({shown})"


_ENV: dict[str, str] = {
    "api_key": "KEITO_API_KEY",
    "account_id": "KEITO_ACCOUNT_ID",
    "base_url": "KEITO_BASE_URL",
    "project_id": "KEITO_PROJECT_ID",
    "task_id": "KEITO_TASK_ID",
    "expense_category_id": "KEITO_EXPENSE_CATEGORY_ID",
    "agent_id": "KEITO_AGENT_ID",
    "agent_type": "KEITO_AGENT_TYPE",
    "billable": "KEITO_BILLABLE",
    "ledger_path": "KEITO_LEDGER",
    "timezone": "KEITO_TIMEZONE",
    "disabled": "KEITO_DISABLED",
    "hours_increment": "KEITO_HOURS_INCREMENT",
    "rounding": "KEITO_ROUNDING",
    "min_hours": "KEITO_MIN_HOURS",
    "cost_multiplier": "KEITO_COST_MULTIPLIER",
    "currency": "KEITO_CURRENCY",
    "exchange_rate": "KEITO_EXCHANGE_RATE",
    "expense_mode": "KEITO_EXPENSE_MODE",
    "granularity": "KEITO_GRANULARITY",
    "idle_timeout": "KEITO_IDLE_TIMEOUT",
    "capture_content": "KEITO_CAPTURE_CONTENT",
    "ledger_retention_days": "KEITO_LEDGER_RETENTION_DAYS",
}
ENV_VARS: Mapping[str, str] = _ENV
_DEFAULTS: Mapping[str, Any] = {
    name: getattr(Settings, name) for name in Settings.__annotations__ if not name.startswith("_")
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"keito-instrument setting {name!r}: expected true/false, got {value!r}")


def _to_number(name: str, value: Any, kind: type[float] | type[int]) -> float | int:
    if isinstance(value, bool):
        raise ValueError(f"keito-instrument setting {name!r}: expected a number, got {value!r}")
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ValueError(f"keito-instrument setting {name!r}: expected a number, got {value!r}") from None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        import ipaddress  # only when a base URL is set: not on the import path

        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(value: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"keito-instrument setting 'base_url': {value!r} is not an http(s) URL")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ValueError(
            f"keito-instrument setting 'base_url': plain http is only allowed for a loopback host "
            f"(API keys must not cross a network unencrypted), got {value!r}"
        )
    if parts.query or parts.fragment:
        raise ValueError(f"keito-instrument setting 'base_url': {value!r} must not carry a query or fragment")
    url = value.rstrip("/")
    # The official SDK's form names the API root (https://app.keito.ai/api/v2); our client adds
    # /api/v2 to every path itself, so keep the host part.
    if url.lower().endswith("/api/v2"):
        url = url[: -len("/api/v2")]
    return url


def _check_prices(value: Any) -> Mapping[str, Mapping[str, float]]:
    if not isinstance(value, Mapping):
        raise ValueError(
            "keito-instrument setting 'price_overrides': expected {model: {input: .., output: ..}}"
        )
    allowed = {"input", "output", "cache_read", "cache_write", "cache_write_1h", "input_audio", "input_image",
               "output_audio", "web_search"}
    out: dict[str, dict[str, float]] = {}
    for model, prices in value.items():
        if not isinstance(prices, Mapping) or not {"input", "output"} <= set(prices):
            raise ValueError(
                f"keito-instrument setting 'price_overrides': {model!r} needs 'input' and 'output' "
                "prices in USD per million tokens"
            )
        unknown = set(prices) - allowed
        if unknown:
            raise ValueError(
                f"keito-instrument setting 'price_overrides': {model!r} has unknown keys {unknown}"
            )
        per_m = {k: float(_to_number("price_overrides", v, float)) for k, v in prices.items()}
        if any(v < 0 for v in per_m.values()):
            raise ValueError(f"keito-instrument setting 'price_overrides': {model!r} has a negative price")
        out[str(model).lower()] = per_m
    return out


def _checked(name: str, value: Any) -> Any:
    """`_validate` for configure(): whatever goes wrong with a value (its own __str__ or __repr__
    raising, say) is a ValueError naming the setting, never another exception."""
    try:
        return _validate(name, value)
    except (ValueError, TypeError):
        raise
    except Exception as exc:
        raise ValueError(f"keito-instrument setting {name!r}: unusable value ({type(exc).__name__})") from None


def _validate(name: str, value: Any) -> Any:
    """Coerce one setting to its type and check it; raises ValueError naming the setting."""
    if name not in _DEFAULTS:
        raise ValueError(
            f"keito-instrument has no setting {name!r}; known settings: {', '.join(sorted(_DEFAULTS))}"
        )
    if value is None:
        if _DEFAULTS[name] is None:
            return None
        raise ValueError(f"keito-instrument setting {name!r} cannot be None")
    if name in ("billable", "disabled", "capture_content"):
        return _to_bool(name, value)
    if name == "base_url":
        return _check_base_url(str(value))
    if name == "timezone":
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(str(value))
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"keito-instrument setting 'timezone': unknown time zone {value!r}") from None
        return str(value)
    if name == "rounding":
        if value not in ("nearest", "up", "down"):
            raise ValueError(
                f"keito-instrument setting 'rounding': expected nearest, up or down, got {value!r}"
            )
        return value
    if name == "expense_mode":
        if value not in ("cost", "units"):
            raise ValueError(
                f"keito-instrument setting 'expense_mode': expected cost or units, got {value!r}"
            )
        return value
    if name == "granularity":
        if value not in ("session", "hour", "day"):
            raise ValueError(
                f"keito-instrument setting 'granularity': expected session, hour or day, got {value!r}"
            )
        return value
    if name == "currency":
        code = str(value).strip().upper()
        if len(code) != 3 or not code.isalpha():
            raise ValueError(
                f"keito-instrument setting 'currency': expected an ISO 4217 code like GBP, got {value!r}"
            )
        return code
    if name == "exchange_rate":
        rate = float(_to_number(name, value, float))
        if not rate > 0 or math.isinf(rate):
            raise ValueError(
                f"keito-instrument setting 'exchange_rate': expected units of the currency per US dollar "
                f"(> 0), got {value!r}"
            )
        return rate
    if name == "price_overrides":
        return _check_prices(value)
    if name == "metadata":
        if not isinstance(value, Mapping):
            raise ValueError("keito-instrument setting 'metadata': expected a mapping of extra metadata keys")
        from ._metadata import plain

        return plain(value)  # made plain JSON: it goes into every session's journal and records
    if name in (
        "hours_increment",
        "min_hours",
        "cost_multiplier",
        "idle_timeout",
        "max_run_age",
        "max_session_age",
        "flush_interval",
        "request_timeout",
        "atexit_timeout",
        "ledger_retention_days",
    ):
        number = float(_to_number(name, value, float))
        if not 0 <= number < math.inf:
            raise ValueError(f"keito-instrument setting {name!r} must be a finite number >= 0, got {value!r}")
        if name == "hours_increment" and not 0 < number <= 1:
            raise ValueError(
                f"keito-instrument setting 'hours_increment' must be in (0, 1] hours, got {value!r}"
            )
        if name == "min_hours" and number > 24:
            raise ValueError(f"keito-instrument setting 'min_hours' must be <= 24, got {value!r}")
        if name == "ledger_retention_days" and number > 36_500:  # (a cut-off before year 1 cannot be a date)
            raise ValueError(f"keito-instrument setting 'ledger_retention_days' must be <= 36500 (0: keep "
                             f"forever), got {value!r}")
        return number
    if name in ("cost_decimals", "max_open_sessions", "max_open_runs", "batch_size", "max_concurrency"):
        number_i = int(_to_number(name, value, int))
        low = 0 if name == "cost_decimals" else 1
        if number_i < low:
            raise ValueError(f"keito-instrument setting {name!r} must be >= {low}, got {value!r}")
        if name == "cost_decimals" and number_i > 12:  # (amounts are decimals of 28 digits)
            raise ValueError(f"keito-instrument setting 'cost_decimals' must be <= 12, got {value!r}")
        return number_i
    text = str(value).strip()
    return text or None


def _from_env(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """The valid settings of the environment, and the invalid ones as {variable: why}."""
    values: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for name, var in _ENV.items():
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[name] = _validate(name, raw)
        except ValueError as exc:
            problems[var] = str(exc)
    if "KEITO_API_URL" in environ and "base_url" not in values and "KEITO_BASE_URL" not in problems:
        try:  # the Keito CLI's spelling
            values["base_url"] = _check_base_url(environ["KEITO_API_URL"])
        except ValueError as exc:
            problems["KEITO_API_URL"] = str(exc)
    return values, problems


def _merge(env: dict[str, Any], problems: dict[str, str], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Environment values overlaid by `configure()` arguments; what an invalid variable implies."""
    values = {**env, **overrides}
    if values.get("currency", "USD") != "USD" and values.get("exchange_rate") is None:
        # Only reachable from the environment (configure() refuses it): warn and stay in USD.
        problems["KEITO_CURRENCY"] = (
            f"keito-instrument setting 'currency': {values.pop('currency')} needs an exchange rate and "
            "KEITO_EXCHANGE_RATE is not set (units of the currency per US dollar); amounts stay in USD"
        )
    bad_url = [var for var in ("KEITO_BASE_URL", "KEITO_API_URL") if var in problems]
    if bad_url and "base_url" not in overrides:
        values["_held"] = f"{bad_url[0]} is invalid"
    return values


def _report_problems(problems: Mapping[str, str]) -> None:
    """One WARNING per invalid variable and value, on stderr too when logging is not configured."""
    global _problems
    _problems = dict(problems)
    for var, why in problems.items():
        if (var, why) in _warned_env:
            continue
        _warned_env.add((var, why))
        text = f"ignoring {var}: {why}"
        if var in ("KEITO_BASE_URL", "KEITO_API_URL"):
            text += "; records stay in the local ledger until it is fixed (nothing is sent)"
        _log.warning("%s", text)
        if _log.isEnabledFor(logging.WARNING) and not _has_handler(_log):
            try:  # the package logger only has a NullHandler: nobody would see it otherwise
                sys.stderr.write(f"keito-instrument: WARNING: {text}\n")
                sys.stderr.flush()
            except (OSError, ValueError, AttributeError):  # no usable stderr
                pass


def _has_handler(logger: logging.Logger) -> bool:
    """True when a record of `logger` reaches a handler other than a NullHandler."""
    current: logging.Logger | None = logger
    while current is not None:
        if any(not isinstance(h, logging.NullHandler) for h in current.handlers):
            return True
        if not current.propagate:
            return False
        current = current.parent
    return False


def setting_problems() -> dict[str, str]:
    """The invalid `KEITO_*` environment variables of the settings in force, as {variable: why}."""
    get_settings()
    return dict(_problems)


_lock = threading.Lock()
_settings: Settings | None = None
_overrides: dict[str, Any] = {}
_listeners: list[Any] = []
_warned_missing: set[str] = set()
_warned_env: set[tuple[str, str]] = set()
_problems: dict[str, str] = {}


def get_settings() -> Settings:
    """The settings in force: environment variables overlaid by `configure()` arguments."""
    current = _settings
    if current is None:
        with _lock:
            if _settings is None:
                env, problems = _from_env(os.environ)
                values = _merge(env, problems, _overrides)
                _report_problems(problems)
                _install(Settings(**values))
            current = _settings
    assert current is not None
    return current


def _install(settings: Settings) -> None:
    global _settings
    _settings = settings
    if settings.has_credentials:
        for name in ("project_id", "task_id", "expense_category_id"):
            if getattr(settings, name) is None and name not in _warned_missing:
                _warned_missing.add(name)
                _log.warning(
                    "keito-instrument: %s is not set (configure(%s=...) or %s); records are kept in the "
                    "ledger until it is",
                    name,
                    name,
                    _ENV[name],
                )
    for listener in list(_listeners):
        listener(settings)


def _reset_lock_in_child() -> None:
    global _lock
    _lock = threading.Lock()  # a parent thread may have held it at fork time


_forksafe.in_child(_reset_lock_in_child)


def on_change(listener: Any) -> None:
    """Call `listener(settings)` whenever `configure()` installs new settings (e.g. the exporter)."""
    _listeners.append(listener)


def configure(**settings: Any) -> Settings:
    """Set keito-instrument's settings; every one also reads a `KEITO_*` environment variable.

    Arguments override the environment and earlier `configure()` calls. Calling it with no
    arguments re-reads the environment. Missing credentials are not an error: records then stay
    in the local ledger until `keito-instrument sync`.

    Raises:
        ValueError: a setting is unknown or its value is invalid; the message names the setting.
    """
    checked = {name: _checked(name, value) for name, value in settings.items()}
    with _lock:
        env, problems = _from_env(os.environ)
        merged = {**env, **_overrides, **checked}
        if merged.get("currency", "USD") != "USD" and merged.get("exchange_rate") is None:
            raise ValueError(
                f"keito-instrument setting 'currency': {merged['currency']} needs exchange_rate "
                f"(units of {merged['currency']} per US dollar), e.g. configure(currency="
                f"{merged['currency']!r}, exchange_rate=0.79); costs are priced in USD"
            )
        _overrides.update(checked)
        merged = _merge(env, problems, _overrides)
        _report_problems(problems)
        _install(Settings(**merged))
        assert _settings is not None
        result = _settings
    if not result.disabled:
        # configure() is where most users set us up: the warm-up starts here (a background
        # thread: the first session then costs the host's thread no more than the next).
        from . import _pipeline
        from ._guard import guard

        with guard("warm-up"):
            _pipeline.warm_up()
    return result


def saved_overrides() -> dict[str, Any]:
    """A copy of the `configure()` arguments in force, for `restore_overrides()` (the testing kit)."""
    with _lock:
        return dict(_overrides)


def restore_overrides(saved: Mapping[str, Any]) -> Settings:
    """Put back the `configure()` arguments of `saved_overrides()` and re-read the environment."""
    with _lock:
        _overrides.clear()
        _overrides.update(saved)
        env, problems = _from_env(os.environ)
        _install(Settings(**_merge(env, problems, _overrides)))
        assert _settings is not None
        return _settings


def reset_settings() -> None:
    """Forget every `configure()` argument and re-read the environment on next use (for tests)."""
    global _settings
    with _lock:
        _overrides.clear()
        _warned_missing.clear()
        _warned_env.clear()
        _problems.clear()
        _settings = None
