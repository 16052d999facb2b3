"""The README's Python examples run as written, each in a fresh interpreter (so that each imports
what it uses), and every `replay.<name>` they mention is reachable after `import replay`."""
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def test_the_readme_has_python_examples():
    assert BLOCKS


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_example_runs(i, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", BLOCKS[i]], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"README example {i}:\n{BLOCKS[i]}\n{r.stderr[-3000:]}"


def test_every_replay_attribute_the_readme_names_exists():
    import replay

    names = set(re.findall(r"\breplay\.([a-z][a-z_]*)", README))  # replay._C is private
    assert {"invariant", "bound", "hf"} <= names
    for name in sorted(names - {"cli"}):  # replay.cli is named as the module to run
        assert hasattr(replay, name), f"README names replay.{name}"
