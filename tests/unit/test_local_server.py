"""The local server's state files are trusted only as far as they prove themselves: a PID that
is not this state's supervisor (left by a reboot, then reused) is no server and is never
signalled; a start lock left empty or by a dead process does not block the next start."""

from __future__ import annotations

import json
import os
import subprocess
import time

from flows import local_server


def test_a_state_file_naming_another_process_is_no_server_and_stop_spares_it(tmp_path):
    server = local_server.LocalServer(tmp_path / "run" / "local-server")
    server.state.mkdir(parents=True)
    bystander = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        info = {"api_url": "http://127.0.0.1:9/api", "ui_url": "", "pid": bystander.pid}
        server.info_file.write_text(json.dumps(info))
        server.lock.write_text(str(bystander.pid))
        assert server.info() is None
        assert not local_server.stop(server, timeout=1)
        assert bystander.poll() is None  # not signalled
        assert not server.info_file.exists()
    finally:
        bystander.kill()
        bystander.wait()


def test_a_stale_start_lock_does_not_block_the_next_start(tmp_path):
    server = local_server.LocalServer(tmp_path / "local-server")
    server.state.mkdir(parents=True)
    server.lock.write_text("")  # its writer was killed before it wrote its PID
    assert local_server._starting(server)  # a few seconds' grace: it may be writing
    old = time.time() - 10
    os.utime(server.lock, (old, old))
    assert not local_server._starting(server)
    dead = subprocess.Popen(["true"])
    dead.wait()
    server.lock.write_text(str(dead.pid))
    assert not local_server._starting(server)
    server.lock.write_text(str(os.getpid()))
    assert local_server._starting(server)  # a live starter
    old = time.time() - local_server.START_TIMEOUT - 1
    os.utime(server.lock, (old, old))
    assert not local_server._starting(server)  # but not for ever
