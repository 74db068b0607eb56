import pytest

from tests.helpers.fingerprint_runs import fingerprint_runs


@pytest.fixture(scope="session")
def gate_runs(tmp_path_factory):
    """Real example-engine runs in stats mode: base (EP=2), fp_tonight (EP=2 again), bug (double_reduce), ..."""
    return fingerprint_runs(tmp_path_factory)
