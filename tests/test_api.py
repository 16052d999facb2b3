"""`replay.verify(...)` is the verifier, whatever was imported before and however often it is
called (issue 8 s.4: it used to turn into the submodule after first use)."""
import subprocess
import sys

import pytest

PROGRAM = """
{imports}
import inspect
import replay
from replay.model import Model, ModelConfig
from replay.records import Record, SamplingParams
m = Model.random(ModelConfig.preset("test-tiny"))
r = Record("a", [1, 2, 3], [4, 5], SamplingParams(0.0), 2, [], m.identity)
for _ in range(3):
    rep = replay.verify([r], m)
    assert rep.records[0].verdict in ("pass", "fail"), rep
assert list(inspect.signature(replay.verify).parameters)[:3] == ["batch", "model", "policy"]
from replay import verify
assert verify([r], m).n_tokens == 2
print("ok")
"""


@pytest.mark.parametrize("imports", [
    "", "import replay.verify as V; assert callable(V)", "from replay.verify import Options"])
def test_replay_verify_is_the_verifier_in_any_import_order(imports):
    r = subprocess.run([sys.executable, "-c", PROGRAM.format(imports=imports)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]
