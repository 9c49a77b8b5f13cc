"""What several test modules share: the repository root, the launcher, and a clean subprocess."""

import os
import subprocess
import sys

from sftlib.dist import launcher_free_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPSPEED = os.path.join(os.path.dirname(sys.executable), "deepspeed")  # the launcher of this environment
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def run_cli(args, env_extra=None, timeout=600):
    """Run a command with this environment's python, outside any process group this test joined
    (an in-process ``sftlib.train.main`` sets RANK, MASTER_PORT, ...); returns the CompletedProcess."""
    return subprocess.run(args, capture_output=True, text=True, env=launcher_free_env(env_extra),
                          timeout=timeout, cwd=ROOT)
