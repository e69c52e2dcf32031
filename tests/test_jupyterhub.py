"""deploy/jupyterhub_config.py on a real JupyterHub: students fetch and submit.

The first tests load the two deploy configs as JupyterHub and nbgrader do and check
what they set up. The others share one real hub, on free ports of 127.0.0.1, with
everything (its database, the course directory, the exchange, the users' homes) in a
temporary directory. The deployment config is loaded unchanged; only what a test
machine lacks is swapped in: DummyAuthenticator for PAM, SimpleLocalProcessSpawner
(every user runs as the current Unix account, with a home in the temporary directory)
for LocalProcessSpawner, and the formgrader service runs as the current account too.

With every server running as one Unix account, nbgrader cannot name a submission after
its owner as it does on a real machine, so each student's home gets a per-user
``~/.jupyter/nbgrader_config.py`` with their id (what nbgrader would see there anyway).

The hub tests need jupyterhub and configurable-http-proxy (Node.js:
``npm install -g configurable-http-proxy``), and are skipped without them.
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
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests
from traitlets.config.loader import PyFileConfigLoader

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
COURSE = "npfl-course"
ASSIGNMENT = "ensembling"  # any assignment would do
INSTRUCTOR, STUDENT, LATECOMER = "teacher", "alice", "bob"  # bob is not in the course yet
CHP = shutil.which("configurable-http-proxy")
WAIT_S = 90  # for the hub or a server to start: generous, for a loaded 2-core machine
EXTENSION = "--ServerApp.jpserver_extensions=nbgrader.server_extensions."


def _load(path: Path, monkeypatch, **env: str):
    """The config a traitlets app (JupyterHub, nbgrader) gets from ``path`` under ``env``."""
    for name in [n for n in os.environ if n.startswith("NPFL_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader(path.name, path=str(path.parent)).load_config()


def test_hub_config_defaults_match_the_course(monkeypatch, tmp_path):
    hub = _load(DEPLOY / "jupyterhub_config.py", monkeypatch)
    course = _load(REPO / "nbgrader_config.py", monkeypatch, NPFL_COURSE_OUTPUT=str(tmp_path))
    assert course.CourseDirectory.course_id == COURSE
    assert hub.JupyterHub.services[0]["name"] == COURSE
    assert hub.JupyterHub.load_groups == {
        f"formgrade-{COURSE}": {"users": ["instructor", f"grader-{COURSE}"]},
        f"nbgrader-{COURSE}": {"users": []},
    }
    assert hub.JupyterHub.bind_url == "http://127.0.0.1:8000"
    assert hub.Spawner.environment == {"NPFL_EXCHANGE_ROOT": "/srv/nbgrader/exchange"}


def test_hub_config_takes_the_course_from_the_environment(monkeypatch):
    hub = _load(
        DEPLOY / "jupyterhub_config.py",
        monkeypatch,
        NPFL_COURSE_ID="ml101",
        NPFL_INSTRUCTORS="ann, ben",
        NPFL_STUDENTS="s1,s2,",
        NPFL_GRADER_PORT="9000",
    )
    assert hub.Authenticator.allowed_users == {"ann", "ben", "s1", "s2"}
    assert hub.Authenticator.admin_users == {"ann", "ben"}
    assert hub.JupyterHub.load_groups == {
        "formgrade-ml101": {"users": ["ann", "ben", "grader-ml101"]},
        "nbgrader-ml101": {"users": ["s1", "s2"]},
    }
    (service,) = hub.JupyterHub.services
    assert (service["name"], service["user"], service["url"]) == (
        "ml101",
        "grader-ml101",
        "http://127.0.0.1:9000",
    )
    assert service["cwd"] == "/home/grader-ml101/npfl-course"
    roles = {role["name"]: role for role in hub.JupyterHub.load_roles}
    assert roles["formgrade-ml101"]["groups"] == ["formgrade-ml101"]
    assert "access:services!service=ml101" in roles["formgrade-ml101"]["scopes"]
    assert roles["grader-ml101"]["services"] == ["ml101"]
    assert "groups!group=nbgrader-ml101" in roles["grader-ml101"]["scopes"]
    assert "read:services!service=ml101" in hub.Spawner.server_token_scopes


def test_servers_get_the_nbgrader_extensions_of_their_role(monkeypatch):
    hook = _load(DEPLOY / "jupyterhub_config.py", monkeypatch).Spawner.pre_spawn_hook

    def spawn(*groups: str) -> list[str]:
        user = SimpleNamespace(groups=[SimpleNamespace(name=name) for name in groups])
        spawner = SimpleNamespace(user=user, args=["--debug"])
        hook(spawner)
        hook(spawner)  # a restarted server: the same spawner, no duplicated arguments
        return spawner.args

    def expected(course_list: bool) -> list[str]:
        enabled = {"assignment_list": True, "validate_assignment": True}
        enabled |= {"course_list": course_list, "formgrader": False}
        return ["--debug", *(f"{EXTENSION}{name}={on}" for name, on in enabled.items())]

    assert spawn(f"nbgrader-{COURSE}") == expected(course_list=False)
    assert spawn(f"formgrade-{COURSE}", "other") == expected(course_list=True)


def test_nbgrader_config_uses_the_exchange_and_hub_groups(monkeypatch):
    config = _load(DEPLOY / "nbgrader_config.py", monkeypatch, NPFL_EXCHANGE_ROOT="/x/exchange")
    assert config.Exchange.root == "/x/exchange"
    assert config.Exchange.path_includes_course is True
    assert config.Authenticator.plugin_class.__name__ == "JupyterHubAuthPlugin"
    assert _load(DEPLOY / "nbgrader_config.py", monkeypatch).Exchange.root == (
        "/srv/nbgrader/exchange"
    )


# ---------------------------------------------------------------------------------------
# A real hub

TEST_CONFIG = """\
c = get_config()  # noqa: F821
load_subconfig({deploy!r})  # noqa: F821
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users.add({latecomer!r})  # as if added on the admin page
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r} + "/{{username}}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}  # /hub/spawn returns at once
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {extra_args!r}
c.Spawner.environment.update({server_env!r})
c.Spawner.http_timeout = c.Spawner.start_timeout = {wait}
(service,) = c.JupyterHub.services
service["command"] = [{singleuser!r}, *service["command"][1:], *{extra_args!r}]
service["environment"].update({server_env!r})
service["api_token"] = {token!r}
"""


def _free_port() -> int:
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


def _kill_tree(root: int) -> None:
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


def _nbgrader(course: Path, env: dict[str, str], *args: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "nbgrader", *args],
        cwd=course,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, f"nbgrader {' '.join(args)}:\n{result.stdout}{result.stderr}"


class Hub:
    """The running hub: its URL, folders and log, and a browser-like session per user."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.course, self.exchange, self.home = tmp / "course", tmp / "exchange", tmp / "home"
        self.log = tmp / "hub" / "hub.log"
        self.service_token = secrets.token_hex(32)
        self.hub_port = _free_port()
        self.url = f"http://127.0.0.1:{_free_port()}"
        self.env: dict[str, str] = {}
        self.sessions: dict[str, requests.Session] = {}

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

    def act(self, name: str, action: str) -> dict:
        """POSTs a fetch or submit as the Lab extension does (XSRF header from its cookie)."""
        session = self.sessions[name]
        response = session.post(
            f"{self.url}/user/{name}/assignments/{action}",
            data={"course_id": COURSE, "assignment_id": ASSIGNMENT},
            headers={"X-XSRFToken": session.cookies.get("_xsrf", path=f"/user/{name}/")},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Starts the hub and the users' servers; kills all of them at the end."""
    if importlib.util.find_spec("jupyterhub") is None:
        pytest.skip("jupyterhub is not installed: pip install jupyterhub")
    if CHP is None:
        pytest.skip("configurable-http-proxy not found: npm install -g configurable-http-proxy")
    if not Path("/proc/self/stat").exists():
        pytest.skip("the hub's processes are found in /proc (Linux)")

    hub = Hub(tmp_path_factory.mktemp("hub"))
    etc, hubdir = hub.tmp / "etc", hub.tmp / "hub"
    for folder in (hub.course / "assignments", hub.exchange, etc, hubdir):
        folder.mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", hub.course)
    shutil.copytree(REPO / "assignments" / ASSIGNMENT, hub.course / "assignments" / ASSIGNMENT)
    shutil.copy(DEPLOY / "nbgrader_config.py", etc)  # stands in for /etc/jupyter/
    for student in (STUDENT, LATECOMER):
        (hub.home / student / ".jupyter").mkdir(parents=True)
        (hub.home / student / ".jupyter" / "nbgrader_config.py").write_text(
            f"c.CourseDirectory.student_id = {student!r}\n"
        )

    server_env = {
        "JUPYTER_CONFIG_PATH": str(etc),
        "JUPYTER_RUNTIME_DIR": str(hub.tmp / "runtime"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    hub.env = {
        **os.environ,
        **server_env,
        "NPFL_COURSE_ID": COURSE,
        "NPFL_INSTRUCTORS": INSTRUCTOR,
        "NPFL_STUDENTS": STUDENT,
        "NPFL_GRADER_USER": getpass.getuser(),
        "NPFL_COURSE_DIR": str(hub.course),
        "NPFL_EXCHANGE_ROOT": str(hub.exchange),
        "NPFL_GRADER_PORT": str(_free_port()),
        "NPFL_HUB_BIND_URL": hub.url,
    }
    hub.env.pop("NPFL_COURSE_OUTPUT", None)  # the course directory is its own output folder
    (hubdir / "jupyterhub_config.py").write_text(
        TEST_CONFIG.format(
            deploy=str(DEPLOY / "jupyterhub_config.py"),
            latecomer=LATECOMER,
            home=str(hub.home),
            hub_port=hub.hub_port,
            proxy_api_port=_free_port(),
            chp=CHP,
            singleuser=str(BIN / "jupyterhub-singleuser"),
            extra_args=["--allow-root"] if os.geteuid() == 0 else [],
            server_env=server_env,
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
        # Meanwhile, the instructor's side: generate the student version and release it.
        _nbgrader(hub.course, hub.env, "generate_assignment", ASSIGNMENT, "--force")
        _nbgrader(hub.course, hub.env, "release_assignment", ASSIGNMENT)
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
        for name in (STUDENT, LATECOMER, INSTRUCTOR):  # the servers start side by side
            hub.login(name)
            hub.spawn(name)
        yield hub
    finally:
        _kill_tree(proc.pid)
        proc.wait(timeout=30)


@pytest.mark.slow
def test_student_sees_the_released_assignment(hub):
    hub.wait_for_server(STUDENT)
    listed = hub.get(STUDENT, "assignments", course_id=COURSE)
    assert [(a["course_id"], a["assignment_id"]) for a in listed] == [(COURSE, ASSIGNMENT)]
    assert listed[0]["status"] in ("released", "fetched")
    assert [nb["notebook_id"] for nb in listed[0]["notebooks"]] == [ASSIGNMENT]


@pytest.mark.slow
def test_student_fetches_and_submits_and_the_instructor_collects(hub):
    hub.wait_for_server(STUDENT)
    fetched = hub.act(STUDENT, "fetch")
    assert fetched["success"], fetched
    assert [a["status"] for a in fetched["value"]] == ["fetched"]
    assert (hub.home / STUDENT / COURSE / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").is_file()

    submitted = hub.act(STUDENT, "submit")
    assert submitted["success"], submitted
    assert sorted(a["status"] for a in submitted["value"]) == ["fetched", "submitted"]
    inbound = [p.name.split("+")[:2] for p in (hub.exchange / COURSE / "inbound").iterdir()]
    assert inbound == [[STUDENT, ASSIGNMENT]]

    _nbgrader(hub.course, hub.env, "collect", ASSIGNMENT)
    assert (hub.course / "submitted" / STUDENT / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").is_file()


@pytest.mark.slow
def test_student_outside_the_course_sees_it_once_added(hub):
    hub.wait_for_server(LATECOMER)
    assert hub.get(LATECOMER, "assignments", course_id=COURSE) == []
    assert hub.act(LATECOMER, "fetch")["value"] == []  # refused: not in the course
    assert not (hub.home / LATECOMER / COURSE).exists()

    # `nbgrader db student add` in the formgrader's terminal, with the service's token:
    # JupyterHubAuthPlugin puts the student into the nbgrader-<course> group.
    env = {
        **hub.env,
        "JUPYTERHUB_API_TOKEN": hub.service_token,
        "JUPYTERHUB_API_URL": f"http://127.0.0.1:{hub.hub_port}/hub/api",
        "JUPYTERHUB_USER": hub.env["NPFL_GRADER_USER"],
    }
    _nbgrader(hub.course, env, "db", "student", "add", LATECOMER)
    listed = hub.get(LATECOMER, "assignments", course_id=COURSE)
    assert [a["assignment_id"] for a in listed] == [ASSIGNMENT]


@pytest.mark.slow
def test_formgrader_is_a_service_for_instructors_only(hub):
    student = hub.wait_for_server(STUDENT)
    # Students' servers run without the formgrader extension ...
    response = student.get(f"{hub.url}/user/{STUDENT}/formgrader/api/status", timeout=30)
    assert response.status_code == 404
    # ... and may not open the course's formgrader service.
    response = student.get(f"{hub.url}/services/{COURSE}/formgrader/api/status", timeout=30)
    assert response.status_code == 403

    # The instructor's course list links to the service, which lists the assignment.
    teacher = hub.wait_for_server(INSTRUCTOR)
    (course,) = hub.get(INSTRUCTOR, "formgraders")
    assert course == {
        "course_id": COURSE,
        "url": f"{hub.url}/services/{COURSE}/lab?formgrader=true",
        "kind": "jupyterhub",
    }
    response = teacher.get(f"{hub.url}/services/{COURSE}/formgrader/api/assignments", timeout=60)
    assert response.status_code == 200, hub.tail()
    assert {a["name"]: a["status"] for a in response.json()} == {ASSIGNMENT: "released"}


@pytest.mark.slow
def test_no_unexpected_tracebacks_in_the_log(hub):
    hub.wait_for_server(STUDENT)
    for traceback in hub.tail(10**8).split("Traceback")[1:]:
        # nbgrader logs the refused fetch of a student outside the course as a traceback.
        assert "You do not have access to this course" in traceback[:3000], traceback[:3000]
