"""`keito-instrument doctor`: check the configuration and the credentials against Keito."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import Any

import httpx

from .._config import ENV_VARS, Settings, get_settings, setting_problems
from .._export.client import ANSWER_CAP, error_reason, headers
from .._spool import get_spool

Check = tuple[str, str, str]  # (ok | warn | FAIL, what, detail)


def add_parser(subparsers: Any) -> None:
    """Register `doctor`."""
    parser = subparsers.add_parser("doctor", help="check the configuration and the Keito credentials")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for Keito, in all (connecting and reading the answer)")
    parser.set_defaults(func=run)


def _setting(settings: Settings, name: str, level: str, why: str) -> Check:
    if getattr(settings, name):
        return ("ok", name, "set")
    return (level, name, f"not set: configure({name}=...) or {ENV_VARS[name]} ({why})")


def check_user(settings: Settings, timeout: float, transport: httpx.BaseTransport | None = None) -> Check:
    """`GET /api/v2/users/me` within `timeout` seconds in all: the key works and is not read-only.

    httpx's timeout bounds each read, not the whole answer (a server sending a byte every half
    second never trips it), so the request runs on a daemon thread that doctor stops waiting for
    at the deadline.
    """
    found: list[Check] = []
    worker = threading.Thread(target=lambda: found.append(_get_user(settings, timeout, transport)),
                              name="keito-doctor-check", daemon=True)
    worker.start()
    worker.join(timeout)
    if found:
        return found[0]
    return ("FAIL", "credentials", f"no complete answer from {settings.base_url} within {timeout:g} s "
            "(--timeout): Keito, a proxy or the network is too slow")


def _get_capped(client: httpx.Client, path: str) -> httpx.Response | None:
    """GET `path`, its body read up to the exporter's answer cap (None past it): a broken or
    hostile server cannot fill doctor's memory."""
    with client.stream("GET", path) as streamed:
        body = bytearray()
        for chunk in streamed.iter_bytes():
            body += chunk
            if len(body) > ANSWER_CAP:
                return None
        kept = {k: v for k, v in streamed.headers.items() if k.lower() not in ("content-encoding", "content-length")}
        return httpx.Response(streamed.status_code, headers=kept, content=bytes(body), request=streamed.request)


def _get_user(settings: Settings, timeout: float, transport: httpx.BaseTransport | None) -> Check:
    what = "credentials"
    try:
        with httpx.Client(
            base_url=settings.base_url, headers=headers(settings), timeout=timeout, transport=transport
        ) as client:
            response = _get_capped(client, "/api/v2/users/me")
    except httpx.HTTPError as exc:
        return ("FAIL", what, f"cannot reach {settings.base_url}: {type(exc).__name__}")
    if response is None:
        return ("FAIL", what, f"the answer of {settings.base_url}/api/v2/users/me is larger than "
                f"{ANSWER_CAP >> 20} MiB: is KEITO_BASE_URL right?")
    if response.status_code == 401:
        return (
            "FAIL",
            what,
            f"Keito refused the API key ({error_reason(response)}); create a new one in "
            "Settings > API & Developers",
        )
    if response.status_code in (400, 403):
        return ("FAIL", what, f"{error_reason(response)} (check KEITO_ACCOUNT_ID: the company id)")
    if response.status_code == 404:
        return ("FAIL", what, f"{settings.base_url}/api/v2/users/me answered 404: is KEITO_BASE_URL right? "
                "It is the host only, such as https://app.keito.ai")
    if response.status_code != 200:
        return ("FAIL", what, f"unexpected answer from Keito: {error_reason(response)}")
    try:
        user = response.json()
    except ValueError:
        return ("FAIL", what, "the answer of /api/v2/users/me is not JSON (is KEITO_BASE_URL right?)")
    who = user.get("email") or user.get("id") or "unknown user"
    company = user.get("company")
    if not isinstance(company, dict):
        return (
            "FAIL",
            what,
            f"{who}: this key is read-only (no company): records cannot be created; "
            "use a full-access API key",
        )
    return ("ok", what, f"{who} at {company.get('name') or company.get('id')}")


def checks(settings: Settings, timeout: float) -> list[Check]:
    """Every check, in order (the network one only when credentials are set)."""
    result: list[Check] = []
    try:
        spool = get_spool()
        counts = spool.counts()
        result.append(
            (
                "ok",
                "ledger",
                f"{spool.path} ({counts['local']} local, {counts['pending']} pending, "
                f"{counts['delivered']} delivered, {counts['dead']} dead)",
            )
        )
        if counts["dead"]:
            result.append(
                ("warn", "dead letters", f"{counts['dead']} refused by Keito: `keito-instrument status`")
            )
    except Exception as exc:  # an unusable ledger is exactly what doctor must report
        result.append(("FAIL", "ledger", f"cannot open the ledger: {exc}"))
    result.append(_setting(settings, "api_key", "FAIL", "records stay in the local ledger"))
    result.append(_setting(settings, "account_id", "FAIL", "the Keito-Account-Id header, your company id"))
    problems = setting_problems()
    for var, why in problems.items():
        result.append(("FAIL", var, f"{why}: ignored until you fix or unset it"))
    if settings.delivery_held:
        result.append(("FAIL", "base_url", f"none in use ({settings.delivery_held}): records stay in the local "
                       "ledger, nothing is sent"))
    else:
        result.append(("ok", "base_url", settings.base_url))
    for name in ("project_id", "task_id", "expense_category_id"):
        result.append(_setting(settings, name, "warn", "records without it are kept until it is set"))
    if settings.disabled:
        result.append(("warn", "disabled", "KEITO_DISABLED is set: nothing is recorded"))
    if settings.has_credentials:
        result.append(check_user(settings, timeout))
    return result


def run(args: argparse.Namespace) -> int:
    """Print the checks; exit 0 when none failed."""
    if not args.timeout > 0:
        print("keito-instrument doctor: error: --timeout must be > 0", file=sys.stderr)
        return 2
    found = checks(get_settings(), args.timeout)
    width = max(len(what) for _, what, _ in found)
    for level, what, detail in found:
        print(f"  {level:<4}  {what:<{width}}  {detail}")
    failed = [what for level, what, _ in found if level == "FAIL"]
    if failed:
        print(f"\n{len(failed)} problem(s): {', '.join(failed)}", file=sys.stderr)
        return 1
    print("\nall good")
    return 0
