"""A real JupyterHub with deploy/jupyterhub_config.py, students fetching and submitting.

One hub for the module, on free ports of 127.0.0.1, with everything (its database, the
course directory, the exchange, the users' homes) in a temporary directory. The
deployment config is loaded unchanged; only what a test machine lacks is swapped:
DummyAuthenticator for PAM, SimpleLocalProcessSpawner (every user runs as the current
Unix account, with a home under the temporary directory) for LocalProcessSpawner, and
the formgrader service runs as the current account too.

Because every server runs as one Unix account, nbgrader cannot name a submission after
its owner as it does on a real machine, so each student's home gets a per-user
``~/.jupyter/nbgrader_config.py`` with their id (what nbgrader would see anyway).

Needs configurable-http-proxy (Node.js): ``npm install -g configurable-http-proxy``.
"""

from __future__ import annotations

import json
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

import pytest

requests = pytest.importorskip("requests")
pytest.importorskip("jupyterhub", reason="needs jupyterhub: pip install jupyterhub")

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
BIN = Path(sys.executable).parent
COURSE = "npfl-course"
ASSIGNMENT = "ensembling"  # any assignment would do; this one's notebook is small
INSTRUCTOR, STUDENT, LATECOMER = "teacher", "alice", "bob"
CHP = shutil.which("configurable-http-proxy")
START_TIMEOUT_S = 60

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sys.platform != "linux", reason="the hub test reads /proc (Linux)"),
    pytest.mark.skipif(
        CHP is None,
        reason="configurable-http-proxy not found: npm install -g configurable-http-proxy",
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _descendants(root: int) -> list[int]:
    """Pids of every process below ``root`` (servers start in new sessions: no group kill)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


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


TEST_CONFIG = """\
c = get_config()  # noqa: F821
load_subconfig({deploy!r})  # noqa: F821
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allowed_users.add({latecomer!r})  # a student not (yet) in the course
c.JupyterHub.spawner_class = "simple"
c.SimpleLocalProcessSpawner.home_dir_template = {home!r} + "/{{username}}"
c.JupyterHub.hub_bind_url = "http://127.0.0.1:{hub_port}"
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{proxy_api_port}"
c.ConfigurableHTTPProxy.command = [{chp!r}]
c.Spawner.cmd = [{singleuser!r}]
c.Spawner.args = {extra_args!r}
c.Spawner.environment.update({server_env!r})
c.Spawner.http_timeout = c.Spawner.start_timeout = {timeout}
(service,) = c.JupyterHub.services
service["command"] = [{singleuser!r}, *service["command"][1:], *{extra_args!r}]
service["environment"].update({server_env!r})
service["api_token"] = {token!r}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Starts the hub; yields its URL and folders; stops it and everything it started."""
    tmp = tmp_path_factory.mktemp("hub")
    course, exchange, home, etc, hubdir = (
        tmp / name for name in ("course", "exchange", "home", "etc", "hub")
    )
    for folder in (course / "assignments", exchange, home, etc, hubdir):
        folder.mkdir(parents=True)
    shutil.copy(REPO / "nbgrader_config.py", course)
    shutil.copytree(REPO / "assignments" / ASSIGNMENT, course / "assignments" / ASSIGNMENT)
    shutil.copy(DEPLOY / "nbgrader_config.py", etc)
    for student in (STUDENT, LATECOMER):
        (home / student / ".jupyter").mkdir(parents=True)
        (home / student / ".jupyter" / "nbgrader_config.py").write_text(
            f"c.CourseDirectory.student_id = {student!r}\n"
        )

    user = os.environ.get("USER") or __import__("getpass").getuser()
    hub_port, token = _free_port(), secrets.token_hex(32)
    server_env = {
        "JUPYTER_CONFIG_PATH": str(etc),
        "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    env = {
        **os.environ,
        **server_env,
        "NPFL_COURSE_ID": COURSE,
        "NPFL_INSTRUCTORS": INSTRUCTOR,
        "NPFL_STUDENTS": STUDENT,
        "NPFL_GRADER_USER": user,
        "NPFL_COURSE_DIR": str(course),
        "NPFL_EXCHANGE_ROOT": str(exchange),
        "NPFL_GRADER_PORT": str(_free_port()),
        "NPFL_HUB_BIND_URL": f"http://127.0.0.1:{_free_port()}",
    }
    env.pop("NPFL_COURSE_OUTPUT", None)  # the course directory is its own output folder

    # The instructor's side: generate the student version and release it.
    _nbgrader(course, env, "generate_assignment", ASSIGNMENT, "--force")
    _nbgrader(course, env, "release_assignment", ASSIGNMENT)

    (hubdir / "jupyterhub_config.py").write_text(
        TEST_CONFIG.format(
            deploy=str(DEPLOY / "jupyterhub_config.py"),
            latecomer=LATECOMER,
            home=str(home),
            hub_port=hub_port,
            proxy_api_port=_free_port(),
            chp=CHP,
            singleuser=str(BIN / "jupyterhub-singleuser"),
            extra_args=["--allow-root"] if os.geteuid() == 0 else [],
            server_env=server_env,
            timeout=START_TIMEOUT_S,
            token=token,
        )
    )
    log = (hubdir / "hub.log").open("w")
    proc = subprocess.Popen(
        [str(BIN / "jupyterhub"), "-f", "jupyterhub_config.py"],
        cwd=hubdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = env["NPFL_HUB_BIND_URL"]
    info = {
        "url": url,
        "course": course,
        "exchange": exchange,
        "home": home,
        "env": env,
        "service_token": token,
        "hub_api": f"http://127.0.0.1:{hub_port}/hub/api",
        "log": hubdir / "hub.log",
    }
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"the hub exited:\n{_tail(info)}"
            assert time.monotonic() < deadline, f"the hub did not start:\n{_tail(info)}"
            try:
                if requests.get(f"{url}/hub/api/", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.3)
        yield info
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM lets the hub stop its servers and proxy; SIGKILL whatever is left."""
    started = set(_descendants(proc.pid))
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        started |= set(_descendants(proc.pid))
        proc.kill()
        proc.wait()
    for pid in started:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _tail(hub: dict, chars: int = 4000) -> str:
    return hub["log"].read_text(errors="replace")[-chars:]


def _login(hub: dict, name: str) -> requests.Session:
    """Logs in through the hub's login form, as a browser would."""
    session = requests.Session()
    page = session.get(f"{hub['url']}/hub/login", timeout=10)
    xsrf = re.search(r'name="_xsrf" value="([^"]+)"', page.text).group(1)
    response = session.post(
        f"{hub['url']}/hub/login?next=",
        data={"username": name, "password": "x", "_xsrf": xsrf},
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302, _tail(hub)
    return session


def _start_server(hub: dict, session: requests.Session, name: str) -> None:
    """Spawns the user's server and opens it, which also does the OAuth dance."""
    session.get(f"{hub['url']}/hub/spawn/{name}", timeout=START_TIMEOUT_S)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        # Until the server is up, the hub answers with its spawn-pending page.
        response = session.get(f"{hub['url']}/user/{name}/lab", timeout=30)
        if response.ok and f"/user/{name}/lab" in response.url:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name}'s server did not start:\n{_tail(hub)}")


def _assignments(hub: dict, session: requests.Session, name: str) -> list[dict]:
    response = session.get(
        f"{hub['url']}/user/{name}/assignments", params={"course_id": COURSE}, timeout=30
    )
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["success"], result["value"]
    return result["value"]


def _post(hub: dict, session: requests.Session, name: str, action: str) -> dict:
    """POSTs an assignment action as the Lab extension does (XSRF header from the cookie)."""
    xsrf = session.cookies.get("_xsrf", path=f"/user/{name}/")
    response = session.post(
        f"{hub['url']}/user/{name}/assignments/{action}",
        data={"course_id": COURSE, "assignment_id": ASSIGNMENT},
        headers={"X-XSRFToken": xsrf},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module")
def student(hub):
    session = _login(hub, STUDENT)
    _start_server(hub, session, STUDENT)
    return session


def test_student_sees_the_released_assignment(hub, student):
    listed = _assignments(hub, student, STUDENT)
    released = [a for a in listed if a["assignment_id"] == ASSIGNMENT]
    assert released, listed
    assert released[0]["course_id"] == COURSE
    assert released[0]["status"] in ("released", "fetched")
    assert [nb["notebook_id"] for nb in released[0]["notebooks"]] == [ASSIGNMENT]


def test_student_fetches_and_submits(hub, student):
    fetched = _post(hub, student, STUDENT, "fetch")
    assert fetched["success"], fetched
    path = hub["home"] / STUDENT / COURSE / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    assert path.is_file()
    assert {a["status"] for a in fetched["value"] if a["assignment_id"] == ASSIGNMENT} >= {
        "fetched"
    }

    submitted = _post(hub, student, STUDENT, "submit")
    assert submitted["success"], submitted
    inbound = list((hub["exchange"] / COURSE / "inbound").iterdir())
    assert [p.name.split("+")[:2] for p in inbound] == [[STUDENT, ASSIGNMENT]]

    # The instructor collects it into the course directory, ready for autograding.
    _nbgrader(hub["course"], hub["env"], "collect", ASSIGNMENT)
    collected = hub["course"] / "submitted" / STUDENT / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    assert collected.is_file()


def test_students_outside_the_course_see_nothing_until_added(hub):
    session = _login(hub, LATECOMER)
    _start_server(hub, session, LATECOMER)
    assert _assignments(hub, session, LATECOMER) == []

    # `nbgrader db student add` in the formgrader's terminal: the service's token puts
    # the student into nbgrader-<course>.
    env = {
        **hub["env"],
        "JUPYTERHUB_API_TOKEN": hub["service_token"],
        "JUPYTERHUB_API_URL": hub["hub_api"],
        "JUPYTERHUB_USER": hub["env"]["NPFL_GRADER_USER"],
    }
    _nbgrader(hub["course"], env, "db", "student", "add", LATECOMER)
    listed = _assignments(hub, session, LATECOMER)
    assert [a["assignment_id"] for a in listed] == [ASSIGNMENT]


def test_formgrader_is_a_service_for_instructors_only(hub, student):
    # Students' servers run without the formgrader extension ...
    response = student.get(f"{hub['url']}/user/{STUDENT}/formgrader/api/status", timeout=10)
    assert response.status_code == 404
    # ... and may not open the course's formgrader service.
    response = student.get(f"{hub['url']}/services/{COURSE}/formgrader/api/status", timeout=30)
    assert response.status_code == 403

    teacher = _login(hub, INSTRUCTOR)
    response = teacher.get(f"{hub['url']}/services/{COURSE}/formgrader/api/assignments", timeout=60)
    assert response.status_code == 200, _tail(hub)
    assignments = {a["name"]: a for a in response.json()}
    assert assignments[ASSIGNMENT]["status"] == "released"


def test_hub_log_has_no_errors(hub):
    errors = [line for line in _tail(hub, 10**7).splitlines() if " E " in line[:40]]
    assert not errors, "\n".join(errors)
