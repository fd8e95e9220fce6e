"""Remote shards against real servers on loopback: http(s) shards train; a 404 ends the run in
one line with its cause; a server that accepts and never answers fails a read within the
timeouts, not after curl's 30 retries; s3:// and gs:// are refused up front with the pipe: form
that reads them."""
import functools
import http.server
import os
import socket
import threading
import time

import pytest

from helpers import assert_one_error, run_cli


@pytest.fixture
def shard_server(digits):
    """An HTTP server of the digits shards' folder (a 404 for anything else), in a thread."""
    folder = os.path.dirname(digits["train"])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=folder)
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def _train(url, tmp_path, name):
    return run_cli("-m", "llip.main", "llip_tiny", f"train_data={url}", f"logs={tmp_path}",
                   f"name={name}", "train_num_samples=64", "wandb_mode=disabled", timeout=300)


def test_http_shards_train_and_a_404_is_one_line_with_its_cause(digits, shard_server,
                                                                 tmp_path):
    pattern = os.path.basename(digits["train"])
    done = _train(f"{shard_server}/{pattern}", tmp_path, "ok")
    assert done.returncode == 0, done.stderr[-2000:]
    start = time.time()
    missing = _train(f"{shard_server}/gone-{{000000..000009}}.tar", tmp_path, "gone")
    assert_one_error(missing, "yielded no samples from 20 shard reads", "HTTP 404")
    assert time.time() - start < 120


def test_a_stalled_server_fails_a_read_within_the_timeouts(monkeypatch):
    from llip.data import remote
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts connections (the kernel does), never answers
    monkeypatch.setattr(remote, "CONNECT_TIMEOUT_S", 1)
    monkeypatch.setattr(remote, "RETRY_DELAY_S", 0.1)
    start = time.time()
    with pytest.raises(OSError, match="timed out"):
        remote.open_http(f"http://127.0.0.1:{listener.getsockname()[1]}/x.tar")
    assert time.time() - start < 3 * (1 + 0.3) + 2  # three tries of one second, two pauses
    listener.close()


@pytest.mark.parametrize("url, instead", [
    ("s3://bucket/shard-{000000..000009}.tar", "pipe:aws s3 cp s3://"),
    ("gs://bucket/shard-{000000..000009}.tar", "pipe:gcloud storage cat gs://"),
])
def test_object_store_urls_are_refused_up_front_with_the_pipe_form(url, instead, tmp_path):
    assert_one_error(_train(url, tmp_path, "store"), "is not read directly", instead)
    assert not (tmp_path / "store").exists()
