"""Joining a Ray cluster (``--address``) or starting a local Ray runtime: ``connect``, in a few seconds or a one-line
error, with Ray's own start-up noise kept off the terminal (``quiet_stderr``)."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import tempfile
from pathlib import Path


from nanopet.errors import InputError


CONNECT_TIMEOUT = 5.0  # s to reach a cluster given by --address


GCS_WAIT = "RAY_gcs_server_port_wait_time_s"  # ray.init's retries (about 1 s each) to reach the cluster's GCS


def connect(address: str | None) -> bool:
    """Start a local Ray runtime (returns True: ours to shut down) or join a cluster (False)."""
    import ray

    if ray.is_initialized():
        return False
    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                                             os.environ.get("PYTHONPATH")])),
                                "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"}}
    if address is None:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env, log_to_driver=False,
                 logging_level=logging.WARNING)
        return True
    if address != "auto":
        host, _, port = address.replace("ray://", "").rpartition(":")
        if not host or not port.isdigit():
            raise InputError(f"--address {address}: expected auto or HOST:PORT (the head's `ray start --head --port PORT`)")
        try:
            socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT).close()
        except OSError as error:
            raise InputError(f"--address {address}: no Ray cluster reachable ({error.strerror or type(error).__name__}); "
                             f"start one with `ray start --head --port {port}` or leave out --address") from None
    wait = os.environ.get(GCS_WAIT)
    os.environ[GCS_WAIT] = wait or str(int(CONNECT_TIMEOUT))  # Ray's default: ~20 one-second retries
    try:
        with quiet_stderr() as said:  # Ray's C++ client logs every failed retry on stderr
            try:
                ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
            except Exception:
                said.clear()
                raise
    except Exception as error:  # noqa: BLE001 - ConnectionError, RuntimeError, ... from ray
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InputError(f"--address {address}: cannot join the Ray cluster ({first}); "
                         "start one with `ray start --head` or leave out --address") from None
    finally:
        if wait is None:
            os.environ.pop(GCS_WAIT, None)
    return False


@contextlib.contextmanager
def quiet_stderr():
    """Hold what is written to file descriptor 2 (C++ logs included); it is replayed unless the list
    the block gets is cleared."""
    sys.stderr.flush()
    saved = os.dup(2)
    said = ["replay"]
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield said
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            if said:
                held.seek(0)
                sys.stderr.write(held.read().decode(errors="replace"))
