"""A real JupyterHub for the tests, started from deploy/jupyterhub_config.py.

:func:`running_hub` starts one on free ports of 127.0.0.1, with everything (its
database, the course directory, the exchange, the users' homes) in a temporary folder,
and kills it and every process it started at the end. The deployment config is loaded
unchanged; only what a test machine lacks is swapped in: DummyAuthenticator for PAM
(any password passes), SimpleLocalProcessSpawner (every user runs as the current Unix
account, with a home in the temporary folder) for LocalProcessSpawner, and the
formgrader service runs as the current account too.

With every server running as one Unix account, nbgrader cannot name a submission after
its owner as it does on a real machine, so each student's home gets a per-user
``~/.jupyter/nbgrader_config.py`` with their id (what nbgrader would see there anyway).

It needs jupyterhub and configurable-http-proxy (Node.js:
``npm install -g configurable-http-proxy``); :func:`require_hub` skips without them.
Used by tests/test_jupyterhub.py (through nbgrader's HTTP API) and tests/test_hub_cycle.py
(in a browser).
"""

from __future__ import annotations

import getpass
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from browsertools import write_lab_settings

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
COURSE = "npfl-course"
WAIT_S = 90  # for the hub or a server to start: generous, for a loaded 2-core machine

TEST_CONFIG = """\
c = get_config()  # noqa: F821
load_subconfig({deploy!r})  # noqa: F821
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users.update({others!r})  # as if added on the admin page
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r} + "/{{username}}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}  # /hub/spawn returns at once
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = [*c.Spawner.args, *{extra_args!r}]
c.Spawner.environment.update({server_env!r})
c.Spawner.environment["JUPYTER_CONFIG_PATH"] = {etc!r}  # after the role's folder
c.Spawner.http_timeout = c.Spawner.start_timeout = {wait}
(service,) = c.JupyterHub.services
service["command"] = [{singleuser!r}, *service["command"][1:], *{extra_args!r}]
service["environment"].update({server_env!r}, **{grader_lab!r})
service["environment"]["JUPYTER_CONFIG_PATH"] += {also_etc!r}
service["api_token"] = {token!r}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # it just ended
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (...) may hold spaces
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def kill_tree(root: int) -> None:
    """Kills ``root`` and everything below it.

    The servers start in sessions of their own, so a process-group kill would miss them;
    each process is stopped before its children are read, so none can fork away.
    """
    stopped, todo = [], [root]
    while todo:
        pid = todo.pop()
        try:
            os.kill(pid, signal.SIGSTOP)
        except ProcessLookupError:
            continue
        stopped.append(pid)
        todo.extend(_children().get(pid, []))
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_in_course(course: Path, env: dict[str, str], *command: str) -> str:
    """Runs ``command`` (``nbgrader ...``, ``npfl-course ...``, from this environment) in
    the course directory, as the formgrader's terminal would; its output. Fails the test
    if it fails."""
    program, *args = command
    result = subprocess.run(
        [str(BIN / program), *args],
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(command)}:\n{output}"
    return output


class Hub:
    """The running hub: its URL, folders and log, and a browser-like session per user."""

    def __init__(self, tmp: Path, instructor: str, students: list[str]) -> None:
        self.tmp = tmp
        self.instructor, self.students = instructor, students
        self.course, self.exchange, self.home = tmp / "course", tmp / "exchange", tmp / "home"
        self.log = tmp / "hub" / "hub.log"
        self.service_token = secrets.token_hex(32)
        self.hub_port = free_port()
        self.url = f"http://127.0.0.1:{free_port()}"
        self.env: dict[str, str] = {}
        self.sessions: dict[str, requests.Session] = {}

    @property
    def grader_env(self) -> dict[str, str]:
        """The environment of the formgrader's terminal: the service's token, with which
        nbgrader asks the hub for the course's students (``nbgrader db student add``)."""
        return {
            **self.env,
            "JUPYTERHUB_API_TOKEN": self.service_token,
            "JUPYTERHUB_API_URL": f"http://127.0.0.1:{self.hub_port}/hub/api",
            "JUPYTERHUB_USER": self.env["NPFL_GRADER_USER"],
        }

    def tail(self, chars: int = 6000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def login(self, name: str) -> requests.Session:
        """Logs in through the login form (any password passes DummyAuthenticator)."""
        session = requests.Session()
        page = session.get(f"{self.url}/hub/login", timeout=30)
        xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
        response = session.post(
            f"{self.url}/hub/login?next=",
            data={"username": name, "password": "any", "_xsrf": xsrf},
            allow_redirects=False,
            timeout=30,
        )
        assert response.status_code == 302, f"login failed:\n{self.tail()}"
        self.sessions[name] = session
        return session

    def spawn(self, name: str) -> None:
        self.sessions[name].get(f"{self.url}/hub/spawn/{name}", timeout=30)

    def wait_for_server(self, name: str) -> requests.Session:
        """Waits until the user's server answers; opening it does the OAuth dance."""
        session = self.sessions[name]
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline:
            # Until the server is up, the hub answers with its spawn-pending page.
            response = session.get(f"{self.url}/user/{name}/lab", timeout=30)
            if response.ok and f"/user/{name}/lab" in response.url:
                return session
            time.sleep(0.5)
        raise AssertionError(f"{name}'s server did not start:\n{self.tail()}")

    def get(self, name: str, path: str, **params: str) -> dict:
        """GETs a JSON API of the user's server, e.g. the Assignments tab's list."""
        response = self.sessions[name].get(
            f"{self.url}/user/{name}/{path}", params=params, timeout=60
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["success"], result["value"]
        return result["value"]

    def act(self, name: str, action: str, assignment: str) -> dict:
        """POSTs a fetch or submit as the Lab extension does (XSRF header from its cookie)."""
        session = self.sessions[name]
        response = session.post(
            f"{self.url}/user/{name}/assignments/{action}",
            data={"course_id": COURSE, "assignment_id": assignment},
            headers={"X-XSRFToken": session.cookies.get("_xsrf", path=f"/user/{name}/")},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.json()


def require_hub() -> None:
    """Skips the test without jupyterhub, configurable-http-proxy or /proc."""
    if importlib.util.find_spec("jupyterhub") is None:
        pytest.skip("jupyterhub is not installed: pip install jupyterhub")
    if shutil.which("configurable-http-proxy") is None:
        pytest.skip("configurable-http-proxy not found: npm install -g configurable-http-proxy")
    if not Path("/proc/self/stat").exists():
        pytest.skip("the hub's processes are found in /proc (Linux)")


@contextmanager
def running_hub(
    tmp: Path,
    *,
    instructor: str,
    students: Iterable[str],
    others: Iterable[str] = (),
    assignments: Callable[[Path], None],
    meanwhile: Callable[[Hub], None] | None = None,
) -> Iterator[Hub]:
    """A hub for ``instructor`` (in ``formgrade-<course>``), ``students`` (in
    ``nbgrader-<course>``) and ``others`` (may log in, in no course), serving a course
    directory with the repository's ``nbgrader_config.py`` into whose ``assignments/``
    folder ``assignments`` writes the sources. ``meanwhile(hub)`` runs while the hub
    starts. Yields once the hub's API answers; nobody is logged in yet."""
    require_hub()
    students, others = list(students), list(others)
    hub = Hub(tmp, instructor, students)
    etc, hubdir = hub.tmp / "etc", hub.tmp / "hub"
    for folder in (hub.course / "assignments", hub.exchange, etc, hubdir):
        folder.mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", hub.course)
    assignments(hub.course / "assignments")
    shutil.copy(DEPLOY / "nbgrader_config.py", etc)  # stands in for /etc/jupyter/
    for user in (instructor, *students, *others):
        jupyter = hub.home / user / ".jupyter"
        write_lab_settings(jupyter / "lab" / "user-settings")
        if user != instructor:
            (jupyter / "nbgrader_config.py").write_text(
                f"c.CourseDirectory.student_id = {user!r}\n"
            )

    # etc stands in for /etc/jupyter, after the role's folder that the deploy config sets.
    server_env = {
        "JUPYTER_RUNTIME_DIR": str(hub.tmp / "runtime"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    hub.env = {
        **os.environ,
        **server_env,
        "JUPYTER_CONFIG_PATH": str(etc),
        "NPFL_COURSE_ID": COURSE,
        "NPFL_INSTRUCTORS": instructor,
        "NPFL_STUDENTS": ",".join(students),
        "NPFL_GRADER_USER": getpass.getuser(),
        "NPFL_COURSE_DIR": str(hub.course),
        "NPFL_EXCHANGE_ROOT": str(hub.exchange),
        "NPFL_GRADER_PORT": str(free_port()),
        "NPFL_HUB_BIND_URL": hub.url,
        "NPFL_ROLE_CONFIG": str(DEPLOY / "roles"),
    }
    # The formgrader service runs with this account's home: its JupyterLab's settings and
    # workspaces go to the temporary folder instead.
    grader_lab = {
        "JUPYTERLAB_SETTINGS_DIR": str(hub.tmp / "grader-lab" / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(hub.tmp / "grader-lab" / "workspaces"),
    }
    write_lab_settings(Path(grader_lab["JUPYTERLAB_SETTINGS_DIR"]))
    hub.env.pop("NPFL_COURSE_OUTPUT", None)  # the course directory is its own output folder
    hub.env.pop("MPLBACKEND", None)  # Agg (set for CI) would keep plots out of notebooks
    (hubdir / "jupyterhub_config.py").write_text(
        TEST_CONFIG.format(
            deploy=str(DEPLOY / "jupyterhub_config.py"),
            others=others,
            home=str(hub.home),
            hub_port=hub.hub_port,
            proxy_api_port=free_port(),
            chp=shutil.which("configurable-http-proxy"),
            singleuser=str(BIN / "jupyterhub-singleuser"),
            extra_args=["--allow-root"] if os.geteuid() == 0 else [],
            server_env=server_env,
            etc=str(etc),
            also_etc=os.pathsep + str(etc),
            grader_lab=grader_lab,
            wait=WAIT_S,
            token=hub.service_token,
        )
    )
    with hub.log.open("w") as log:
        proc = subprocess.Popen(
            [str(BIN / "jupyterhub"), "-f", "jupyterhub_config.py"],
            cwd=hubdir,
            env=hub.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        if meanwhile is not None:
            meanwhile(hub)
        deadline = time.monotonic() + WAIT_S
        while True:
            assert proc.poll() is None, f"the hub exited:\n{hub.tail()}"
            assert time.monotonic() < deadline, f"the hub did not start:\n{hub.tail()}"
            try:
                if requests.get(f"{hub.url}/hub/api", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        yield hub
    finally:
        kill_tree(proc.pid)
        proc.wait(timeout=30)
