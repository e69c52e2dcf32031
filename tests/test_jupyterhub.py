"""deploy/jupyterhub_config.py on a real JupyterHub: students fetch and submit.

The first tests load the two deploy configs as JupyterHub and nbgrader do and check
what they set up. The others share one real hub (tests/hubtools.py: on free ports of
127.0.0.1, everything in a temporary directory, DummyAuthenticator and
SimpleLocalProcessSpawner in place of PAM and Unix accounts) and use nbgrader's HTTP API
as the Assignments tab does; tests/test_hub_cycle.py drives the same hub in a browser.

The hub tests need jupyterhub and configurable-http-proxy (Node.js:
``npm install -g configurable-http-proxy``), and are skipped without them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import nbgrader
import pytest
from hubtools import COURSE, DEPLOY, REPO, Hub, run_in_course, running_hub
from traitlets.config.loader import PyFileConfigLoader

ASSIGNMENT = "ensembling"  # any assignment would do
INSTRUCTOR, STUDENT, LATECOMER = "teacher", "alice", "bob"  # bob is not in the course yet
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
    (service,) = hub.JupyterHub.services
    assert service["environment"]["JUPYTER_CONFIG_PATH"] == "/etc/jupyter/npfl-roles/instructor"
    # The hub's Services menu opens the formgrader itself, not a blank JupyterLab panel.
    assert "--ServerApp.default_url=/formgrader" in service["command"]
    # Terminals keep the server's PATH (a login shell would reset it): the course's tools.
    terminal = "--ServerApp.terminado_settings=shell_command=/bin/bash"
    assert terminal in service["command"]
    assert hub.Spawner.args == [terminal]


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
    hook = _load(
        DEPLOY / "jupyterhub_config.py", monkeypatch, NPFL_ROLE_CONFIG="/r"
    ).Spawner.pre_spawn_hook
    shared = {"A": "1", "JUPYTER_CONFIG_PATH": "/etc/x"}

    def spawn(*groups: str) -> tuple[list[str], str]:
        user = SimpleNamespace(groups=[SimpleNamespace(name=name) for name in groups])
        spawner = SimpleNamespace(user=user, args=["--debug"], environment=shared)
        hook(spawner)
        hook(spawner)  # a restarted server: the same spawner, no duplicated arguments
        assert spawner.environment["A"] == "1"
        return spawner.args, spawner.environment["JUPYTER_CONFIG_PATH"]

    def expected(course_list: bool) -> list[str]:
        enabled = {"assignment_list": True, "validate_assignment": True}
        enabled |= {"course_list": course_list, "formgrader": False}
        return ["--debug", *(f"{EXTENSION}{name}={on}" for name, on in enabled.items())]

    assert spawn(f"nbgrader-{COURSE}") == (expected(False), "/r/student:/etc/x")
    assert spawn(f"formgrade-{COURSE}", "other") == (expected(True), "/r/instructor:/etc/x")
    assert shared == {"A": "1", "JUPYTER_CONFIG_PATH": "/etc/x"}  # every spawner's


def test_each_role_sees_its_part_of_nbgraders_lab_extension():
    """deploy/roles/<role>/labconfig/page_config.json name plugins of nbgrader's JupyterLab
    extension that exist: students see none of the instructors' tools, and nobody the
    Formgrader panel (JupyterHub >= 4.1 forbids its frame; the service is its own tab)."""
    static = Path(nbgrader.__file__).parent / "labextension" / "static"
    plugins = set()
    for script in static.glob("*.js"):
        plugins |= set(re.findall(r'"(@jupyter/nbgrader:[a-z-]+)"', script.read_text()))
    assert "@jupyter/nbgrader:assignment-list" in plugins, sorted(plugins)

    def disabled(role: str) -> set[str]:
        page_config = DEPLOY / "roles" / role / "labconfig" / "page_config.json"
        names = json.loads(page_config.read_text())["disabledExtensions"]
        assert set(names) <= plugins
        return {name.split(":")[1] for name, off in names.items() if off}

    assert disabled("student") == {"formgrader", "course-list", "create-assignment"}
    assert disabled("instructor") == {"formgrader"}


def test_nbgrader_config_uses_the_exchange_and_hub_groups(monkeypatch):
    config = _load(DEPLOY / "nbgrader_config.py", monkeypatch, NPFL_EXCHANGE_ROOT="/x/exchange")
    assert config.Exchange.root == "/x/exchange"
    assert config.Exchange.path_includes_course is True
    assert config.Authenticator.plugin_class.__name__ == "JupyterHubAuthPlugin"
    assert _load(DEPLOY / "nbgrader_config.py", monkeypatch).Exchange.root == (
        "/srv/nbgrader/exchange"
    )


# ---------------------------------------------------------------------------------------
# A real hub (tests/hubtools.py)


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Starts the hub and the users' servers; kills all of them at the end."""

    def release(hub: Hub) -> None:
        # While the hub starts, the instructor's side: generate and release the assignment.
        run_in_course(hub.course, hub.env, "nbgrader", "generate_assignment", ASSIGNMENT, "--force")
        run_in_course(hub.course, hub.env, "nbgrader", "release_assignment", ASSIGNMENT)

    with running_hub(
        tmp_path_factory.mktemp("hub"),
        instructor=INSTRUCTOR,
        students=[STUDENT],
        others=[LATECOMER],
        assignments=lambda folder: shutil.copytree(
            REPO / "assignments" / ASSIGNMENT, folder / ASSIGNMENT
        ),
        meanwhile=release,
    ) as hub:
        for name in (STUDENT, LATECOMER, INSTRUCTOR):  # the servers start side by side
            hub.login(name)
            hub.spawn(name)
        yield hub


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
    fetched = hub.act(STUDENT, "fetch", ASSIGNMENT)
    assert fetched["success"], fetched
    assert [a["status"] for a in fetched["value"]] == ["fetched"]
    assert (hub.home / STUDENT / COURSE / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").is_file()

    submitted = hub.act(STUDENT, "submit", ASSIGNMENT)
    assert submitted["success"], submitted
    assert sorted(a["status"] for a in submitted["value"]) == ["fetched", "submitted"]
    inbound = [p.name.split("+")[:2] for p in (hub.exchange / COURSE / "inbound").iterdir()]
    assert inbound == [[STUDENT, ASSIGNMENT]]

    run_in_course(hub.course, hub.env, "nbgrader", "collect", ASSIGNMENT)
    assert (hub.course / "submitted" / STUDENT / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").is_file()


@pytest.mark.slow
def test_student_outside_the_course_sees_it_once_added(hub):
    hub.wait_for_server(LATECOMER)
    assert hub.get(LATECOMER, "assignments", course_id=COURSE) == []
    assert hub.act(LATECOMER, "fetch", ASSIGNMENT)["value"] == []  # refused: not in the course
    assert not (hub.home / LATECOMER / COURSE).exists()

    # `nbgrader db student add` in the formgrader's terminal, with the service's token:
    # JupyterHubAuthPlugin puts the student into the nbgrader-<course> group.
    run_in_course(hub.course, hub.grader_env, "nbgrader", "db", "student", "add", LATECOMER)
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
