"""Test-process set-up that must happen before any test module imports `ray`.

Why: the local Ray of the single-node tests must listen on loopback only, and Ray reads its
switch for that once, at import (see `latent_tune.tune.cli.start_local_ray`). Multi-node tests
start their nodes with `tests.ray_cluster.cluster_env()`, which drops the switch.
"""

import os

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
