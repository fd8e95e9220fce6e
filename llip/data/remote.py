"""Remote shards: http(s) read with bounded waits, object-store URLs refused up front.

webdataset reads http(s) through `curl --connect-timeout 30 --retry 30` and gs:// through
gsutil's own retries: a shard host without network takes 20 minutes to hours to fail, and the
cause (DNS, 403, 404) never reaches the error. Here http(s) is read with the standard library:
a connect and per-read timeout (a stalled server fails in READ_TIMEOUT_S), two retries for what
can pass (a refused or reset connection, a timeout, HTTP 5xx / 429), none for what cannot (DNS,
4xx), and the cause in the message the data stream reports.

s3:// and gs:// have no reader here (webdataset has no s3 handler; its gs:// shells out to
gsutil): a run or a catalog naming them is refused before anything starts, with the pipe: form
that streams the same objects through the provider's own CLI (its credentials, its retries).
"""
import http.client
import time
import urllib.error
import urllib.request
from urllib.parse import urlparse

from webdataset.gopen import gopen_schemes

CONNECT_TIMEOUT_S = READ_TIMEOUT_S = 30
RETRIES, RETRY_DELAY_S = 2, 2.0
UNREAD_SCHEMES = {
    "s3": "pipe:aws s3 cp s3://BUCKET/shard-{000000..000099}.tar -",
    "gs": "pipe:gcloud storage cat gs://BUCKET/shard-{000000..000099}.tar",
    "gcs": "pipe:gcloud storage cat gs://BUCKET/shard-{000000..000099}.tar",
}


def unread_scheme(url: str) -> str | None:
    """The pipe: form to use instead, for an object-store URL that no reader here opens."""
    return UNREAD_SCHEMES.get(urlparse(url.strip()).scheme.lower())


def open_http(url: str, mode: str = "rb", bufsize: int = 8192, **_):
    """A webdataset gopen handler: the response stream of `url`, or an OSError naming it and
    the cause, within about (RETRIES + 1) x the timeouts."""
    if mode[0] != "r":
        raise ValueError(f"{url}: http(s) shards are read only")
    for attempt in range(RETRIES + 1):
        try:
            return urllib.request.urlopen(url, timeout=CONNECT_TIMEOUT_S)
        except urllib.error.HTTPError as exn:  # 4xx cannot pass; 5xx and 429 may
            if (exn.code < 500 and exn.code != 429) or attempt == RETRIES:
                raise OSError(f"{url}: HTTP {exn.code} {exn.reason}") from None
        except urllib.error.URLError as exn:
            if _dns(exn.reason) or attempt == RETRIES:
                raise OSError(f"{url}: {_cause(exn.reason)}") from None
        except (TimeoutError, http.client.HTTPException, ConnectionError) as exn:
            if attempt == RETRIES:
                raise OSError(f"{url}: {_cause(exn)}") from None
        time.sleep(RETRY_DELAY_S * (attempt + 1))
    raise AssertionError("unreachable")


def _dns(reason) -> bool:
    text = str(reason)
    return any(s in text for s in ("Name or service not known", "nodename nor servname",
                                   "Temporary failure in name resolution", "No address"))


def _cause(reason) -> str:
    text = str(reason)
    if _dns(reason):
        return f"cannot resolve the host (DNS: {text})"
    if isinstance(reason, TimeoutError) or "timed out" in text:
        return f"no answer within {READ_TIMEOUT_S}s (timed out)"
    if isinstance(reason, ConnectionRefusedError) or "refused" in text:
        return f"connection refused ({text})"
    return text


for _scheme in ("http", "https"):
    gopen_schemes[_scheme] = open_http
