"""Start, wait for, talk to and stop a MONAI Label server running a local bundle.

The server runs in the MONAI Label environment (:mod:`tumoraware.label_server.env`) as a
subprocess in its own process group, so stopping it by its PID also ends the training
subprocess MONAI Label starts for ``/train``. Offline it must not look for the Model Zoo or
SAM2 weights (``--conf zoo_source local --conf sam2 false``), and it listens on 127.0.0.1 unless
told otherwise (MONAI Label's own default is every interface).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from tumoraware.label_server.env import LabelEnv

__all__ = ["LabelServer", "LabelServerError", "free_port"]


class LabelServerError(RuntimeError):
    """The server did not start, died, or answered a request with an error."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now (for tests and parallel servers)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


class LabelServer:
    """``monailabel start_server`` for one app and studies folder, as a context manager.

    Args:
        env: the MONAI Label environment.
        app_dir: the MONAI Label app (``monaibundle``) with the bundle in ``model/<name>``.
        studies: the studies folder (images; labels in ``labels/final``).
        models: bundle name(s) under ``app_dir/model`` (``--conf models``).
        host, port: where to listen (127.0.0.1 keeps it off the network).
        log_file: where the server's output goes; ``None`` leaves it on this terminal.
        env_vars: extra environment variables for the server (e.g. ``OMP_NUM_THREADS``).

    Example::

        with LabelServer(env, app, studies, "lung_mri_tumor_segmentation", port=8000) as server:
            server.wait_ready()
            print(server.get("/info/")["models"])
    """

    def __init__(
        self,
        env: LabelEnv,
        app_dir: str | os.PathLike,
        studies: str | os.PathLike,
        models: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        log_file: str | os.PathLike | None = None,
        env_vars: dict[str, str] | None = None,
    ) -> None:
        # absolute: the server runs from the app folder
        self.env, self.app_dir, self.studies = env, Path(app_dir).resolve(), Path(studies).resolve()
        self.models, self.host, self.port = models, host, int(port)
        self.log_file = Path(log_file) if log_file else None
        self.env_vars = dict(env_vars or {})
        self.process: subprocess.Popen | None = None
        self._log_handle: BinaryIO | None = None

    @property
    def url(self) -> str:
        """``http://host:port`` (``localhost`` when listening on every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def command(self) -> list[str]:
        """The exact ``start_server`` command line (printed by ``tumoraware monailabel serve``)."""
        return [str(self.env.python), "-m", "monailabel.main", "start_server",
                "--app", str(self.app_dir), "--studies", str(self.studies),
                "--conf", "models", self.models, "--conf", "zoo_source", "local",
                "--conf", "sam2", "false",
                "--host", self.host, "--port", str(self.port)]  # fmt: skip

    def start(self) -> None:
        """Start the server in its own process group (returns at once; see :meth:`wait_ready`)."""
        if self.process is not None:
            raise LabelServerError("LabelServer.start: already started")
        if _port_in_use(self.host, self.port):
            raise LabelServerError(
                f"port {self.port} on {self.host} is in use (another MONAI Label server?). "
                f"Fix: stop it, or pick another port (--port {self.port + 1})."
            )
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self.log_file, "wb")  # noqa: SIM115 (closed in stop())
        env = {**self.env.run_env(), "PYTHONUNBUFFERED": "1", **self.env_vars}
        self.process = subprocess.Popen(
            self.command(),
            cwd=self.app_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT if self._log_handle else None,
            start_new_session=True,  # its own process group: killpg ends the trainer too
        )

    def log_tail(self, n_chars: int = 4000) -> str:
        """The end of the server's output (when it goes to ``log_file``) or of its app log."""
        path = self.log_file if self.log_file else self.app_dir / "logs" / "app.log"
        if path is None or not path.exists():
            return "(no log)"
        return path.read_text(errors="replace")[-n_chars:]

    def wait_ready(self, timeout_s: float = 300.0) -> dict[str, Any]:
        """Poll ``/info/`` until the server answers; return that answer.

        Raises:
            LabelServerError: the server exited, or did not answer within ``timeout_s``
                (the message quotes the end of its log).
        """
        if self.process is None:
            raise LabelServerError("LabelServer.wait_ready: call start() first")
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                raise LabelServerError(
                    f"MONAI Label exited with code {code} before it was ready. Log tail:\n"
                    f"{self.log_tail()}"
                )
            try:
                return self.get("/info/", timeout_s=5.0)
            except OSError:  # URLError, refused or reset connections and timeouts are all OSErrors
                pass
            if time.monotonic() > deadline:
                raise LabelServerError(
                    f"MONAI Label did not answer {self.url}/info/ within {timeout_s:.0f} s. "
                    f"Log tail:\n{self.log_tail()}"
                )
            time.sleep(0.5)

    def stop(self, grace_s: float = 10.0) -> None:
        """Stop the server and everything it started (SIGTERM to its group, then SIGKILL)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass
        if process is not None:  # the trainer MONAI Label started may outlive the server itself
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def __enter__(self) -> LabelServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        timeout_s: float = 600.0,
        form: dict[str, str] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """One HTTP request; returns ``(body bytes, headers)``. JSON ``body`` or urlencoded
        ``form`` fields when given.

        Raises:
            LabelServerError: an HTTP error status (the message has the server's answer and
                the end of its log).
        """
        url = self.url + path + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data, headers = None, {}
        if body is not None:
            data, headers = json.dumps(body).encode(), {"Content-Type": "application/json"}
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
        req = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as response:
                return response.read(), dict(response.headers)
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:2000]
            raise LabelServerError(
                f"{method} {path} answered {error.code}: {detail}\nServer log tail:\n"
                f"{self.log_tail()}"
            ) from error

    def get(self, path: str, timeout_s: float = 60.0, **query: str) -> Any:
        """``GET path`` decoded from JSON."""
        return json.loads(self.request("GET", path, query or None, timeout_s=timeout_s)[0])

    def infer(
        self,
        model: str,
        image_id: str,
        out_file: str | os.PathLike,
        params: dict[str, Any] | None = None,
    ) -> Path:
        """``POST /infer/<model>?image=<id>&output=image``: the mask, written to ``out_file``.

        ``params`` go in the ``params`` form field (e.g. a bundle's ``displayable_configs``).
        """
        content, _ = self.request("POST", f"/infer/{model}", {"image": image_id, "output": "image"},
                                  form={"params": json.dumps(params or {})})  # fmt: skip
        out = Path(out_file)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(content)
        return out

    def train(
        self, model: str, params: dict[str, Any], timeout_s: float = 600.0, poll_s: float = 1.0
    ) -> dict[str, Any]:
        """``POST /train/<model>`` with ``params``, then poll ``/train/`` until it ends.

        Returns the finished task (``status`` ``DONE``). Raises :class:`LabelServerError`
        when it ends otherwise or runs past ``timeout_s``, with the task's last output lines.
        """
        task = json.loads(self.request("POST", f"/train/{model}", body=params)[0])
        task_id = task.get("id")
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.get("/train/", all="true")
            task = next((t for t in status if t.get("id") == task_id), task)
            if task.get("status") not in ("SUBMITTED", "RUNNING"):
                break
            if time.monotonic() > deadline:
                raise LabelServerError(
                    f"training {model} ran past {timeout_s:.0f} s; last output:\n"
                    + "\n".join(task.get("details", []))
                )
            time.sleep(poll_s)
        if task.get("status") != "DONE":
            raise LabelServerError(
                f"training {model} ended with status {task.get('status')}; last output:\n"
                + "\n".join(task.get("details", []))
                + f"\nServer log tail:\n{self.log_tail()}"
            )
        return task
