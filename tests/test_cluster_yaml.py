"""cluster.yaml (cloud) and clusters/onprem.yaml (provider local) pass Ray's own validation
offline, in the order `ray up` uses, and keep the dashboard on loopback with token auth."""

from __future__ import annotations

import copy
import unittest
from pathlib import Path

import yaml
from ray.autoscaler._private.util import prepare_config, validate_config  # pinned Ray 2.60

ROOT = Path(__file__).resolve().parents[1]


class ClusterYaml(unittest.TestCase):
    def _check(self, name: str) -> dict:
        cfg = yaml.safe_load((ROOT / name).read_text())
        prepared = prepare_config(copy.deepcopy(cfg))
        validate_config(prepared)
        text = (ROOT / name).read_text()
        self.assertNotIn("0.0.0.0", text)
        head = " ".join(cfg["head_start_ray_commands"])
        self.assertIn("--dashboard-host=127.0.0.1", head)
        self.assertIn("RAY_AUTH_MODE=token", head)
        self.assertIn("RAY_AUTH_MODE=token", " ".join(cfg["worker_start_ray_commands"]))
        self.assertTrue(any("auth_token" in k for k in cfg["file_mounts"]))
        self.assertTrue(any("pip install" in c and "-e" in c for c in cfg["setup_commands"]))
        self.assertTrue(any("torch" in c and "cu1" in c for c in cfg["setup_commands"]))
        return cfg

    def test_cloud(self) -> None:
        cfg = self._check("cluster.yaml")
        types = cfg["available_node_types"]
        self.assertIn(cfg["head_node_type"], types)
        self.assertTrue(any(t["resources"].get("GPU", 0) >= 1 for t in types.values()))
        for t in types.values():
            self.assertTrue(all(isinstance(v, int) for v in t["resources"].values()))
        self.assertTrue(any("/shared" in c for c in cfg["setup_commands"]))

    def test_onprem(self) -> None:
        cfg = self._check("clusters/onprem.yaml")
        self.assertEqual(cfg["provider"]["type"], "local")
        self.assertNotIn("available_node_types", cfg)

    def test_bad_config_is_refused(self) -> None:
        cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
        cfg["available_node_types"]["gpu_worker"]["resources"]["GPU"] = 0.5
        with self.assertRaises(Exception):  # noqa: B017 (jsonschema error type varies)
            validate_config(prepare_config(cfg))


if __name__ == "__main__":
    unittest.main()
