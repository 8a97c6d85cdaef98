"""Property-based tests of the experiment TOML loader (researcher/config): any file, any
document shape, any value type ends in an ExperimentConfig or a ConfigurationError."""

from __future__ import annotations

import datetime as dt

import tomli_w
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from common.errors import FedloomError
from researcher.config import load_experiment_config

SETTINGS = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)

KEYS = [
    "name", "tags", "nodes", "rounds", "plan", "training_args", "model_args", "aggregator",
    "agg_optimizer", "strategy", "secagg", "keep_checkpoints", "node_wait_timeout", "file",
    "class", "lr", "modules", "fraction", "min_nodes", "num_updates", "epochs", "batch_size",
    "test_ratio", "round_timeout", "random_seed", "log_interval", "clip", "fraction_bits",
    "protect_parameters", "unknown",
]  # fmt: skip

SCALARS = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(["plan.py", "LogisticPlan", "#tab", "fedaverage", "sampling", "adam", "yogi"]),
    st.datetimes(max_value=dt.datetime(9999, 1, 1)),
    st.dates(),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)
    ),
    max_leaves=12,
)
DOCUMENTS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=8)


def _load(path):
    try:
        return load_experiment_config(path)
    except FedloomError as exc:
        return exc


@SETTINGS
@given(document=DOCUMENTS)
@example(
    document={
        "tags": ["#t"],
        "rounds": 1,
        "plan": {"file": "plan.py", "class": "P"},
        "training_args": {"test_ratio": "half"},
    }
)
def test_any_toml_document_loads_or_raises_a_configuration_error(tmp_path, document):
    (tmp_path / "plan.py").write_text("class P: pass\n")
    path = tmp_path / "experiment.toml"
    path.write_bytes(tomli_w.dumps(document).encode())

    _load(path)


@SETTINGS
@given(data=st.binary(max_size=200))
def test_any_file_content_loads_or_raises_a_configuration_error(tmp_path, data):
    path = tmp_path / "experiment.toml"
    path.write_bytes(data)

    _load(path)


def test_a_file_that_is_not_utf8_is_a_configuration_error(tmp_path):
    path = tmp_path / "experiment.toml"
    path.write_bytes(b"\xff\xfe")

    assert isinstance(_load(path), FedloomError)
