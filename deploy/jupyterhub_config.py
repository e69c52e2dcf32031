"""JupyterHub for the course on one machine, with nbgrader's exchange directory.

Students log in with their Unix account (PAM), get a JupyterLab server running as
themselves, and fetch and submit assignments in the Assignments tab (nbgrader's
``assignment_list`` extension). Instructors reach the formgrader, a shared Jupyter server
that JupyterHub runs as the service ``/services/<course>/`` under a grader account that
owns the course directory (the hub's Services menu opens it). Setup, step by step:
docs/jupyterhub.md.

Everything course-specific comes from environment variables, so this one file serves
any course (and tests/test_jupyterhub.py runs it unchanged):

    NPFL_COURSE_ID      course id (npfl-course); groups formgrade-<id>, nbgrader-<id>
    NPFL_INSTRUCTORS    comma-separated instructor accounts (instructor)
    NPFL_STUDENTS       comma-separated student accounts (none); later ones are added
                        with ``nbgrader db student add`` in the formgrader's terminal
    NPFL_GRADER_USER    Unix account that runs the formgrader (grader-<id>)
    NPFL_COURSE_DIR     the course directory, a checkout of this repository owned by the
                        grader account (/home/<grader>/npfl-course)
    NPFL_EXCHANGE_ROOT  nbgrader's exchange directory (/srv/nbgrader/exchange)
    NPFL_GRADER_PORT    local port of the formgrader service (9999)
    NPFL_HUB_BIND_URL   where the hub listens (http://127.0.0.1:8000; put TLS in front)
    NPFL_ROLE_CONFIG    Jupyter config folders per role, deploy/roles/ installed there
                        (/etc/jupyter/npfl-roles): which parts of nbgrader's JupyterLab
                        extension each role sees

The nbgrader side lives in deploy/nbgrader_config.py, installed as
/etc/jupyter/nbgrader_config.py for every account.
"""

import os

c = get_config()  # noqa: F821 - injected by traitlets when JupyterHub loads this file


def _names(variable: str, default: str = "") -> list[str]:
    return [name.strip() for name in os.environ.get(variable, default).split(",") if name.strip()]


COURSE = os.environ.get("NPFL_COURSE_ID", "npfl-course")
INSTRUCTORS = _names("NPFL_INSTRUCTORS", "instructor")
STUDENTS = _names("NPFL_STUDENTS")
GRADER = os.environ.get("NPFL_GRADER_USER", f"grader-{COURSE}")
COURSE_DIR = os.environ.get("NPFL_COURSE_DIR", f"/home/{GRADER}/npfl-course")
EXCHANGE = os.environ.get("NPFL_EXCHANGE_ROOT", "/srv/nbgrader/exchange")
GRADER_PORT = int(os.environ.get("NPFL_GRADER_PORT", "9999"))
ROLE_CONFIG = os.environ.get("NPFL_ROLE_CONFIG", "/etc/jupyter/npfl-roles")
# nbgrader finds a student's courses by these group names (JupyterHubAuthPlugin).
FORMGRADE, STUDENTS_GROUP = f"formgrade-{COURSE}", f"nbgrader-{COURSE}"

c.JupyterHub.bind_url = os.environ.get("NPFL_HUB_BIND_URL", "http://127.0.0.1:8000")

# Terminals run an interactive bash, not a login shell: /etc/profile (Debian's) would set
# PATH anew, and `nbgrader`, `npfl-course` and the course's python would not be found.
TERMINAL = "--ServerApp.terminado_settings=shell_command=/bin/bash"

# The default PAM authenticator and LocalProcessSpawner: each person is a Unix account,
# which nbgrader's exchange relies on (it names a submission after the Unix user).
c.Authenticator.allowed_users = {*INSTRUCTORS, *STUDENTS}
# Instructors can open a student's server to help; drop this line if they should not.
c.Authenticator.admin_users = set(INSTRUCTORS)

# The grader account is in formgrade-<id> because the formgrader asks the hub for its
# own courses. load_groups only ever adds: a student removed here stays in the group
# until removed with `nbgrader db student remove` or on the hub's admin page.
c.JupyterHub.load_groups = {
    FORMGRADE: {"users": [*INSTRUCTORS, GRADER]},
    STUDENTS_GROUP: {"users": STUDENTS},
}

c.JupyterHub.services = [
    {
        # nbgrader looks for the formgrader of course <id> at /services/<id>/. Its first
        # page is the formgrader itself, in a tab of its own: JupyterHub >= 4.1 forbids
        # frames, so JupyterLab's Formgrader panel would stay blank. Its JupyterLab (the
        # terminal, the sources) is at /services/<id>/lab.
        "name": COURSE,
        "url": f"http://127.0.0.1:{GRADER_PORT}",
        "command": ["jupyterhub-singleuser", "--ServerApp.default_url=/formgrader", TERMINAL],
        "user": GRADER,
        "cwd": COURSE_DIR,
        "environment": {
            "NPFL_EXCHANGE_ROOT": EXCHANGE,
            "JUPYTER_CONFIG_PATH": os.path.join(ROLE_CONFIG, "instructor"),
        },
        "oauth_no_confirm": True,
    }
]

c.JupyterHub.load_roles = [
    {
        "name": f"formgrade-{COURSE}",
        "description": "Open the formgrader and find it in the course list",
        "groups": [FORMGRADE],
        "scopes": [
            f"access:services!service={COURSE}",
            "list:services",
            f"read:services!service={COURSE}",
        ],
    },
    {
        # What JupyterHubAuthPlugin does for the formgrader: read who is in the course,
        # and add or remove students (`nbgrader db student add/remove`).
        "name": f"grader-{COURSE}",
        "services": [COURSE],
        "scopes": [
            f"read:users:name!group={FORMGRADE}",
            f"read:users:groups!group={FORMGRADE}",
            f"read:users:name!group={STUDENTS_GROUP}",
            f"read:users:groups!group={STUDENTS_GROUP}",
            f"list:groups!group={STUDENTS_GROUP}",
            f"read:groups!group={STUDENTS_GROUP}",
            f"groups!group={STUDENTS_GROUP}",
        ],
    },
]

# A server's token may always read its own user's groups (how nbgrader lists a user's
# courses); instructors' servers also look up the formgrader service for the course
# list. The hub grants each server only the part of this list that its user holds.
c.Spawner.server_token_scopes = [
    "users:activity!user",
    "access:servers!server",
    "list:services",
    f"read:services!service={COURSE}",
]
c.Spawner.default_url = "/lab"
c.Spawner.args = [TERMINAL]
c.Spawner.environment = {"NPFL_EXCHANGE_ROOT": EXCHANGE}

# nbgrader's table of extensions per role: everyone lists, fetches, submits and
# validates; instructors also get the course list (links to the formgrader); the
# formgrader itself runs only in the service (its default config enables everything).
# JupyterLab's side follows the same table, from the role's folder in ROLE_CONFIG
# (labconfig/page_config.json): students see no Formgrader, Course List or Create
# Assignment, instructors no Formgrader panel (their own server has no formgrader).
_NBGRADER = "nbgrader.server_extensions."


def _nbgrader_extensions(spawner) -> None:
    instructor = any(group.name == FORMGRADE for group in spawner.user.groups)
    enabled = {
        "assignment_list": True,
        "validate_assignment": True,
        "course_list": instructor,
        "formgrader": False,
    }
    # The spawner (and its args) outlives one server: replace, never pile up, on restarts.
    ours = f"--ServerApp.jpserver_extensions={_NBGRADER}"
    spawner.args = [
        *(arg for arg in spawner.args if not arg.startswith(ours)),
        *(f"{ours}{name}={on}" for name, on in enabled.items()),
    ]
    # The role's folder first: JUPYTER_CONFIG_PATH outranks even the user's ~/.jupyter.
    role = os.path.join(ROLE_CONFIG, "instructor" if instructor else "student")
    roles = {os.path.join(ROLE_CONFIG, name) for name in ("instructor", "student")}
    path = str(spawner.environment.get("JUPYTER_CONFIG_PATH", "")).split(os.pathsep)
    others = [folder for folder in path if folder and folder not in roles]
    # A new dict: the configured one is shared by every user's spawner.
    spawner.environment = {
        **spawner.environment,
        "JUPYTER_CONFIG_PATH": os.pathsep.join([role, *others]),
    }


c.Spawner.pre_spawn_hook = _nbgrader_extensions
