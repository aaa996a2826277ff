"""Token checks delegated to a separate auth service over HTTP (``POSTROOM_AUTH_URL``)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from app.services.accounts import AccountService, Caller
from app.services.errors import Unauthorized, Unavailable


class RemoteAccountService(AccountService):
    """An AccountService whose ``authenticate`` asks the auth service; the rest is local
    (both sides share the database, so registration and login give the same result)."""

    def __init__(self, base_url: str, *args, timeout: float = 3.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.verify_url = base_url.rstrip("/") + "/auth/v1/verify"
        self.timeout = timeout

    def authenticate(self, token: str) -> Caller:
        """Ask the auth service who holds ``token``."""
        request = urllib.request.Request(
            self.verify_url, data=json.dumps({"token": token}).encode(), method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                document = json.load(response)
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise Unauthorized("invalid_token", "the token is not valid") from None
            raise Unavailable("auth_unavailable", f"the auth service answered {exc.code}") from None
        except (urllib.error.URLError, TimeoutError, ValueError) as exc:
            raise Unavailable("auth_unavailable", f"the auth service is unreachable: {exc}") from None
        return Caller(document["username"], document["token_id"])
