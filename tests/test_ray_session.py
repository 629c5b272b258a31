"""The local Ray's start-up: a failure is one line, not Ray's traceback.

Seen on an overloaded machine: Ray's own 30 s start-up timeout raised a bare Exception and the
search printed a raw traceback.
"""

from __future__ import annotations

import unittest
from unittest import mock

from latent_tune.errors import UserInputError
from latent_tune.tune import ray_session


class TestLocalRayStartFailure(unittest.TestCase):
    def test_start_timeout_is_one_line(self) -> None:
        boom = Exception("The current node timed out during startup.\nmore lines")
        with (
            mock.patch.object(ray_session, "LOOPBACK_AT_IMPORT", True),
            mock.patch.object(ray_session.ray, "init", side_effect=boom),
            self.assertRaises(UserInputError) as cm,
        ):
            ray_session.start_local_ray(num_cpus=1, include_dashboard=False)
        text = str(cm.exception)
        self.assertNotIn("\n", text)
        self.assertIn("timed out during startup", text)
        self.assertIn("--address", text)


if __name__ == "__main__":
    unittest.main()
