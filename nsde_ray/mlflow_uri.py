"""Where a sweep's MLflow store is and how to reach it: URIs, credentials kept out of sight, the UI's address.

Credentials come from the URI the user gives or from MLflow's own environment variables
(``MLFLOW_TRACKING_URI``, ``MLFLOW_TRACKING_USERNAME``, ``MLFLOW_TRACKING_PASSWORD``); every place that
prints, stores or shows a URI masks its password (:func:`mask_uri`).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from mlflow import MlflowClient


class TrackingError(RuntimeError):
    """The MLflow store cannot be used as asked; the message says what to do."""


def resolve_tracking_uri(uri: str | None) -> str:
    """An explicit URI every Ray process can use: MLflow's default when ``None``, local paths made absolute."""
    if uri is None:
        import mlflow

        return mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + os.path.abspath(uri[len("sqlite:///") :])
    if "://" not in uri:
        return "file://" + os.path.abspath(os.path.expanduser(uri))
    return uri


MASK = "***"


def mask_uri(uri: str | None) -> str | None:
    """``uri`` as it may be shown or stored: a password in it (``user:password@host``) becomes ``user:***@host``.

    Every place that prints a tracking URI, stores it (the sweep state file), logs it or shows it
    (the dashboards) uses this; the real URI is only used to connect. A URI without a password is
    returned unchanged.
    """
    if not uri or "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    authority, sep, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if not at or ":" not in userinfo:
        return uri
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:{MASK}@{host}{sep}{path}"


def is_masked(uri: str | None) -> bool:
    """Whether ``uri`` is one that :func:`mask_uri` masked (its password is ``***``)."""
    return bool(uri) and mask_uri(uri) == uri and f":{MASK}@" in uri


def without_credentials(uri: str) -> str:
    """``uri`` without its ``user:password@`` part (MLflow then takes them from MLFLOW_TRACKING_USERNAME/PASSWORD)."""
    if "@" not in uri or "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    authority, sep, path = rest.partition("/")
    return f"{scheme}://{authority.rpartition('@')[2]}{sep}{path}"


def redact(text: str, uri: str | None) -> str:
    """``text`` (an error message) with ``uri`` masked and its password, wherever it appears, replaced by ``***``."""
    if not uri or mask_uri(uri) == uri:
        return text
    password = uri.split("://", 1)[1].partition("/")[0].rpartition("@")[0].split(":", 1)[1]
    text = text.replace(uri, mask_uri(uri))
    return text.replace(password, MASK) if password else text


def tracking_warning(what: str, err: Exception, uri: str | None = None) -> str:
    """``what`` went wrong with MLflow, and the error, as a warning's text with ``uri``'s password kept out."""
    return f"{what}: {redact(f'{type(err).__name__}: {err}', uri)}"


def resolve_resume_uri(given: str | None, stored: str | None) -> str:
    """The tracking URI of a resumed run: ``given`` (--tracking-uri) if any, else the ``stored`` one.

    A stored URI had its password masked (:func:`mask_uri`); then MLFLOW_TRACKING_URI stands in for
    it, or, with MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD set, the stored URI without
    its credentials (MLflow sends those variables as basic auth). Otherwise TrackingError.
    """
    if given:
        return resolve_tracking_uri(given)
    if not is_masked(stored):
        return resolve_tracking_uri(stored)
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return resolve_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    if os.environ.get("MLFLOW_TRACKING_USERNAME") and os.environ.get("MLFLOW_TRACKING_PASSWORD"):
        return without_credentials(stored)
    raise TrackingError(
        f"the run's tracking URI was stored with its password masked ({stored}): pass --tracking-uri "
        "with the password again, or set MLFLOW_TRACKING_URI to it, or set MLFLOW_TRACKING_USERNAME "
        "and MLFLOW_TRACKING_PASSWORD (MLflow sends them to the server) and resume again"
    )


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail in seconds if a tracking server does not answer its health check (MLflow's client retries for minutes)."""
    import base64
    import urllib.parse
    import urllib.request

    if not uri.startswith(("http://", "https://")):
        return
    request = urllib.request.Request(f"{without_credentials(uri).rstrip('/')}/health")
    parts = urllib.parse.urlsplit(uri)
    if parts.password is not None:  # urllib does not read credentials from the URL itself
        token = base64.b64encode(
            f"{urllib.parse.unquote(parts.username or '')}:{urllib.parse.unquote(parts.password)}".encode()
        ).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        urllib.request.urlopen(request, timeout=timeout)
    except (OSError, ValueError) as err:
        raise TrackingError(
            f"the MLflow tracking server {mask_uri(uri)!r} does not answer ({redact(str(err), uri)}); "
            "start it (mlflow server ...) or check --tracking-uri"
        ) from err


@contextlib.contextmanager
def store_creation_lock(uri: str) -> Iterator[None]:
    """For a SQLite store, an exclusive lock (``<database>.lock`` beside it) held while MLflow may create or migrate
    its tables; nothing for other stores.

    MLflow creates a new SQLite store's tables on first use, unguarded: two commands started together on a
    new store both try, and one fails with "table alembic_version already exists". Under this lock the
    second waits and finds the tables made.
    """
    if not uri.startswith("sqlite:///"):
        yield
        return
    path = uri[len("sqlite:///") :]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_tracking_uri(uri: str) -> None:
    """A clear :class:`TrackingError` for a URI that MLflow cannot use at all (an unknown scheme such as ``foo://``).

    A new SQLite store gets its tables here, under :func:`store_creation_lock`.
    """
    try:
        with store_creation_lock(uri):
            client = MlflowClient(uri)
            if uri.startswith("sqlite:"):
                client.search_experiments(max_results=1)  # creates the tables of a new store
    except Exception as err:  # MLflow raises MlflowException subclasses for unsupported schemes
        raise TrackingError(
            f"MLflow cannot use the tracking URI {mask_uri(uri)!r}: {redact(str(err), uri)}; "
            "pass --tracking-uri http(s)://HOST:PORT (an mlflow server), sqlite:///PATH or a "
            "directory"
        ) from err


def is_local_store(uri: str) -> bool:
    """Whether only processes on this machine can reach the store (not so an ``http(s)://`` server)."""
    return uri.startswith(("sqlite:", "file:"))


LOCAL_UI = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default


def ui_command(uri: str) -> str:
    """The command that browses ``uri`` (bound to 127.0.0.1, MLflow's default)."""
    if uri.startswith(("http://", "https://")):
        return f"open {without_credentials(uri)} in a browser"
    return f"mlflow ui --backend-store-uri {mask_uri(uri)}"


def ui_address(uri: str) -> str:
    """Where MLflow's UI over ``uri`` is: the tracking server itself, or :data:`LOCAL_UI` for a local store."""
    return without_credentials(uri) if uri.startswith(("http://", "https://")) else LOCAL_UI
