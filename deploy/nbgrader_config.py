"""nbgrader settings for every account on the course's JupyterHub.

Install as /etc/jupyter/nbgrader_config.py (see docs/jupyterhub.md). The course's own
settings (course id, directories, time limits) stay in the repository's
nbgrader_config.py, which the formgrader reads from its working directory.
"""

import os

from nbgrader.auth import JupyterHubAuthPlugin

c = get_config()  # noqa: F821 - injected by traitlets when nbgrader loads this file

# The hub passes NPFL_EXCHANGE_ROOT to the servers it starts; a shell without it (an
# instructor over ssh) gets the same default as deploy/jupyterhub_config.py.
c.Exchange.root = os.environ.get("NPFL_EXCHANGE_ROOT", "/srv/nbgrader/exchange")
# One exchange folder per course, so several courses can share the machine.
c.Exchange.path_includes_course = True
# A student sees the courses of their nbgrader-<course> groups, an instructor those of
# their formgrade-<course> groups; `nbgrader db student add` also adds to the group.
c.Authenticator.plugin_class = JupyterHubAuthPlugin
