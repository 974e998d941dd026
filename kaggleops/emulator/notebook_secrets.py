"""Notebook secrets ("Add-ons > Secrets") as a Kaggle session sees them through ``kaggle_secrets``.

On Kaggle a secret belongs to the user's account and is *attached* to a notebook in that notebook's editor; a
notebook created through the API has none attached. A session reads one with
``kaggle_secrets.UserSecretsClient().get_secret(label)``, which POSTs ``{"Label": label}`` to
``$KAGGLE_URL_BASE/requests/GetUserSecretByLabelRequest`` with the session's own token
(``$KAGGLE_USER_SECRETS_TOKEN``, header ``X-Kaggle-Authorization: Bearer …``) and gets
``{"wasSuccessful": true, "result": {"secret": …}}``, or ``wasSuccessful: false`` with the reason.

The emulator does the same: :data:`SESSION_MODULE` is the ``kaggle_secrets`` every session imports (the runner
puts it on ``PYTHONPATH``), each session gets its own token, and :func:`get_secret_by_label` answers for the
kernel that token belongs to. Secrets live in memory only (never in ``state.pickle`` or ``requests.log``).
"""

from __future__ import annotations

import secrets as _random  # the standard library's
from typing import Any

from .state import Store

SECRET_BY_LABEL = "/requests/GetUserSecretByLabelRequest"
ENV_TOKEN = "KAGGLE_USER_SECRETS_TOKEN"
ENV_URL_BASE = "KAGGLE_URL_BASE"
TOKEN_HEADER = "X-Kaggle-Authorization"

SESSION_MODULE = '''"""kaggle_secrets as a Kaggle notebook session has it (kops emulator): read the secrets
attached to this notebook in its editor (Add-ons > Secrets)."""
import json
import os
import socket
import urllib.request
from urllib.error import HTTPError, URLError

TIMEOUT_S = 40


class CredentialError(Exception):
    pass


class BackendError(Exception):
    pass


class ValidationError(Exception):
    pass


class UserSecretsClient:
    GET_USER_SECRET_BY_LABEL_ENDPOINT = "@ENDPOINT@"

    def __init__(self):
        self.url_base = os.environ.get("@ENV_URL_BASE@") or "https://www.kaggle.com"
        token = os.environ.get("@ENV_TOKEN@")
        if not token:
            raise CredentialError("A user secrets token was not found. This may indicate that the notebook is "
                                  "not running in Kaggle.")
        self.headers = {"Content-type": "application/json", "@HEADER@": f"Bearer {token}"}

    def _post(self, body, endpoint):
        req = urllib.request.Request(self.url_base + endpoint, headers=self.headers,
                                     data=json.dumps(body).encode("utf-8"))
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:
                answer = json.loads(response.read())
        except HTTPError as e:
            if e.code in (401, 403):
                raise CredentialError(f"Service responded with error code {e.code}. Please ensure you have "
                                      "access to the resource.") from e
            raise BackendError("Unexpected response from the service.") from e
        except (URLError, socket.timeout) as e:
            raise ConnectionError("Connection error trying to communicate with service. Please ensure internet "
                                  "is on.") from e
        if not answer.get("wasSuccessful") or "result" not in answer:
            raise BackendError(f"Unexpected response from the service. Response: {answer}.")
        return answer["result"]

    def get_secret(self, label):
        if not label:
            raise ValidationError("Label must be non-empty.")
        result = self._post({"Label": label}, self.GET_USER_SECRET_BY_LABEL_ENDPOINT)
        if "secret" not in result:
            raise BackendError(f"Unexpected response from the service. Response: {result}")
        return result["secret"]
'''.replace("@ENDPOINT@", SECRET_BY_LABEL).replace("@ENV_URL_BASE@", ENV_URL_BASE) \
   .replace("@ENV_TOKEN@", ENV_TOKEN).replace("@HEADER@", TOKEN_HEADER)


def new_session_token(store: Store, owner: str, slug: str) -> str:
    """A fresh token for one session of kernel ``owner/slug`` (what Kaggle puts in the session's environment)."""
    token = _random.token_urlsafe(24)
    with store.lock:
        store.secret_sessions[token] = (owner, slug)
    return token


def get_secret_by_label(store: Store, authorization: str | None, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """(HTTP status, answer) of ``GetUserSecretByLabelRequest`` for the session whose token is presented."""
    scheme, _, token = (authorization or "").partition(" ")
    with store.lock:
        session = store.secret_sessions.get(token.strip()) if scheme.lower() == "bearer" else None
        if session is None:
            return 401, {"wasSuccessful": False, "errors": ["Unauthenticated: no valid user secrets token"]}
        owner, slug = session
        label = str(body.get("Label") or "")
        kernel = store.kernels.get(session)
        attached = store.secret_attachments.get(session, set()) | store.secret_attachments.get((owner, "*"), set())
        value = store.secrets.get(owner, {}).get(label)
    if not label:
        return 200, {"wasSuccessful": False, "errors": ["Label must be non-empty."]}
    if label not in attached or value is None:
        kernel_id = kernel.id if kernel is not None else 0
        return 200, {"wasSuccessful": False,
                     "errors": [f"No user secrets exist for kernel id {kernel_id} and label {label}"]}
    return 200, {"wasSuccessful": True, "result": {"secret": value, "label": label}}
