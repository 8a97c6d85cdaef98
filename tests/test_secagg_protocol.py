"""SecAgg end to end as a library: NodeMasker on nodes, SecureSum on the researcher."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from common.errors import PayloadError, SecaggError
from common.secagg import (
    CorrectionLedger,
    NodeMasker,
    SecaggKeyPair,
    SecureAggregation,
    SecureSum,
    new_session_id,
)

SETTINGS = SecureAggregation()


class Federation:
    """In-memory participants of one session: keys, maskers and the researcher's sum."""

    def __init__(
        self,
        node_ids: Sequence[str],
        settings: SecureAggregation = SETTINGS,
        session_id: str | None = None,
    ) -> None:
        self.ids = list(node_ids)
        self.keys = {node: SecaggKeyPair.generate() for node in self.ids}
        self.publics = {node: keys.public_bytes() for node, keys in self.keys.items()}
        self.session_id = session_id or new_session_id("exp", 1)
        self.maskers = {
            node: NodeMasker(self.session_id, node, self.keys[node], self.publics, settings)
            for node in self.ids
        }
        self.researcher = SecureSum(self.session_id, self.ids, settings)


def exact_sum(rows: list[np.ndarray]) -> np.ndarray:
    stacked = np.stack([np.asarray(row, dtype=np.float64).ravel() for row in rows])
    return np.array([math.fsum(column) for column in stacked.T]).reshape(rows[0].shape)


@pytest.mark.parametrize(("n_nodes", "seed"), [(2, 0), (3, 1), (7, 2), (10, 3)])
def test_masked_sums_equal_plain_sums_within_the_stated_bound(n_nodes: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    fed = Federation([f"node-{i}" for i in range(n_nodes)])
    shapes = {"params": (int(rng.integers(1, 5000)),), "aux": (3, int(rng.integers(1, 300)))}
    plain: dict[str, list[np.ndarray]] = {name: [] for name in shapes}
    for index, node in enumerate(fed.ids):
        dtype = (np.float32, np.float64)[index % 2]
        for name, shape in shapes.items():
            values = rng.uniform(-1e3, 1e3, shape).astype(dtype)
            plain[name].append(values)
            fed.researcher.add(node, name, fed.maskers[node].mask(name, values))
    for name in shapes:
        result = fed.researcher.result(name)
        assert result.shape == shapes[name] and result.dtype == np.float64
        error = np.abs(result - exact_sum(plain[name])).max()
        assert error <= SETTINGS.sum_error_bound(n_nodes)


def test_one_nodes_masked_payload_looks_uniform_and_uncorrelated() -> None:
    fed = Federation(["a", "b", "c"])
    values = np.linspace(-1, 1, 100_000)
    masked = fed.maskers["b"].mask("params", values)
    assert abs(np.corrcoef(values, masked.astype(np.float64))[0, 1]) < 5 / np.sqrt(values.size)
    counts = np.bincount(masked.view(np.uint8), minlength=256)
    assert stats.chisquare(counts).pvalue > 1e-6


def test_same_values_under_other_payload_or_session_get_unrelated_masks() -> None:
    keys = {node: SecaggKeyPair.generate() for node in "ab"}
    publics = {node: key.public_bytes() for node, key in keys.items()}
    values = np.zeros(1000)
    outputs = []
    for session in (new_session_id("exp", 1), new_session_id("exp", 1)):
        masker = NodeMasker(session, "a", keys["a"], publics, SETTINGS)
        outputs += [masker.mask("params", values), masker.mask("aux", values)]
    for i, first in enumerate(outputs):
        for second in outputs[i + 1 :]:
            assert np.count_nonzero(first == second) < 5


def exact_survivor_sum(plain: dict[str, np.ndarray], survivors: Sequence[str]) -> np.ndarray:
    codec = SETTINGS.codec
    total = np.zeros(next(iter(plain.values())).shape, dtype=np.uint64)
    for node in survivors:
        total += codec.encode(plain[node], node_id=node, name="params")
    return codec.decode_sum(total)


@pytest.mark.parametrize("dropped", [["n3"], ["n0", "n4"], ["n1", "n2", "n3"]])
def test_dropout_recovery_gives_the_survivors_exact_sum(dropped: list[str]) -> None:
    fed = Federation([f"n{i}" for i in range(5)])
    rng = np.random.default_rng(5)
    plain = {node: rng.uniform(-5, 5, 777) for node in fed.ids}
    masked = {node: fed.maskers[node].mask("params", plain[node]) for node in fed.ids}
    for node in fed.ids:
        if node not in dropped:
            fed.researcher.add(node, "params", masked[node])
    assert set(fed.researcher.waiting_for("params")) == set(dropped)
    survivors = fed.researcher.declare_dropped(dropped)
    assert set(survivors) == set(fed.ids) - set(dropped)
    assert fed.researcher.waiting_for("params") == survivors
    for node in survivors:
        correction = fed.maskers[node].dropout_correction("params", dropped)
        fed.researcher.add_correction(node, "params", correction)
    assert np.array_equal(fed.researcher.result("params"), exact_survivor_sum(plain, survivors))


def test_corrections_for_several_payloads_share_the_one_dropped_set() -> None:
    fed = Federation(["a", "b", "c"])
    for node in ("a", "b"):
        for name in ("params", "aux"):
            fed.researcher.add(node, name, fed.maskers[node].mask(name, np.ones(10)))
    fed.maskers["c"].mask("params", np.ones(10))
    fed.researcher.declare_dropped(["c"])
    for node in ("a", "b"):
        for name in ("params", "aux"):
            correction = fed.maskers[node].dropout_correction(name, ["c"])
            fed.researcher.add_correction(node, name, correction)
    for name in ("params", "aux"):
        assert np.allclose(fed.researcher.result(name), 2.0, atol=SETTINGS.sum_error_bound(2))


def test_node_refuses_a_second_different_dropped_set() -> None:
    fed = Federation(["a", "b", "c", "d"])
    fed.maskers["a"].mask("params", np.ones(4))
    fed.maskers["a"].dropout_correction("params", ["d"])
    fed.maskers["a"].dropout_correction("params", ["d"])  # a retransmission is harmless
    with pytest.raises(SecaggError, match=r"first reported peers \['d'\].*now \['c'\]"):
        fed.maskers["a"].dropout_correction("params", ["c"])


def test_node_refuses_a_correction_leaving_fewer_than_min_survivors() -> None:
    fed = Federation(["a", "b", "c"])
    fed.maskers["a"].mask("params", np.ones(4))
    with pytest.raises(SecaggError, match=r"node 'a' refuses.*1 survivor"):
        fed.maskers["a"].dropout_correction("params", ["b", "c"])


def test_min_survivors_setting_is_enforced_by_nodes() -> None:
    fed = Federation(["a", "b", "c", "d"], settings=SecureAggregation(min_survivors=3))
    fed.maskers["a"].mask("params", np.ones(4))
    with pytest.raises(SecaggError, match="2 survivor"):
        fed.maskers["a"].dropout_correction("params", ["c", "d"])


@pytest.mark.parametrize(("dropped", "reason"), [(["a"], "itself"), (["zed"], "not participants")])
def test_node_refuses_a_correction_listing_itself_or_strangers(
    dropped: list[str], reason: str
) -> None:
    fed = Federation(["a", "b", "c"])
    fed.maskers["a"].mask("params", np.ones(4))
    with pytest.raises(SecaggError, match=reason):
        fed.maskers["a"].dropout_correction("params", dropped)


def test_node_refuses_a_correction_for_a_payload_it_never_masked() -> None:
    fed = Federation(["a", "b", "c"])
    fed.maskers["a"].mask("params", np.ones(4))
    with pytest.raises(SecaggError, match="never masked payload 'aux'"):
        fed.maskers["a"].dropout_correction("aux", ["c"])


def test_node_refuses_to_mask_the_same_payload_twice_in_a_session() -> None:
    fed = Federation(["a", "b"])
    fed.maskers["a"].mask("params", np.ones(4))
    with pytest.raises(SecaggError, match="already masked"):
        fed.maskers["a"].mask("params", np.zeros(4))


def test_out_of_range_value_names_the_node_and_does_not_burn_the_payload() -> None:
    fed = Federation(["a", "b"])
    with pytest.raises(SecaggError, match=r"node 'b'.*'params'.*clip"):
        fed.maskers["b"].mask("params", np.array([0.0, np.nan]))
    fed.maskers["b"].mask("params", np.array([0.0, 1.0]))


def test_once_per_session_rules_survive_a_node_restart(tmp_path: Path) -> None:
    keys = {node: SecaggKeyPair.generate() for node in "abc"}
    publics = {node: key.public_bytes() for node, key in keys.items()}
    path = tmp_path / "ledger.json"

    def masker() -> NodeMasker:
        ledger = CorrectionLedger(path)
        return NodeMasker("s", "a", keys["a"], publics, SETTINGS, ledger=ledger)

    masker().mask("params", np.ones((2, 3)))
    with pytest.raises(SecaggError, match="already masked"):
        masker().mask("params", np.ones((2, 3)))
    assert masker().dropout_correction("params", ["c"]).shape == (2, 3)
    with pytest.raises(SecaggError, match="first reported"):
        masker().dropout_correction("params", ["b"])


def test_corrupt_ledger_file_is_reported_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    path.write_text("{not json")
    with pytest.raises(SecaggError, match="delete the file"):
        CorrectionLedger(path)


def test_researcher_relaying_a_foreign_key_for_the_node_is_refused() -> None:
    keys = {node: SecaggKeyPair.generate() for node in "ab"}
    publics = {"a": SecaggKeyPair.generate().public_bytes(), "b": keys["b"].public_bytes()}
    with pytest.raises(SecaggError, match="not this node's own key"):
        NodeMasker("s", "a", keys["a"], publics, SETTINGS)


def test_a_lone_node_is_refused_because_its_sum_is_its_update() -> None:
    key = SecaggKeyPair.generate()
    with pytest.raises(SecaggError, match="at least 2 nodes"):
        NodeMasker("s", "a", key, {"a": key.public_bytes()}, SETTINGS)
    with pytest.raises(SecaggError, match="at least 2 nodes"):
        SecureSum("s", ["a"], SETTINGS)


def test_overflow_capacity_is_checked_when_the_session_is_configured() -> None:
    settings = SecureAggregation(clip=2.0**31, fraction_bits=30)  # 2^61 per node: room for 3
    SecureSum("s", ["a", "b", "c"], settings)
    with pytest.raises(SecaggError, match=r"4 nodes could overflow.*fraction_bits to 29"):
        SecureSum("s", ["a", "b", "c", "d"], settings)


def test_researcher_refuses_a_late_payload_from_a_dropped_node() -> None:
    fed = Federation(["a", "b", "c"])
    late = fed.maskers["c"].mask("params", np.ones(3))
    for node in ("a", "b"):
        fed.researcher.add(node, "params", fed.maskers[node].mask("params", np.ones(3)))
    fed.researcher.declare_dropped(["c"])
    with pytest.raises(SecaggError, match="node 'c' was declared dropped"):
        fed.researcher.add("c", "params", late)


def test_a_node_that_delivered_cannot_be_declared_dropped() -> None:
    fed = Federation(["a", "b", "c"])
    fed.researcher.add("c", "params", fed.maskers["c"].mask("params", np.ones(3)))
    with pytest.raises(SecaggError, match=r"\['c'\] already delivered payload 'params'"):
        fed.researcher.declare_dropped(["c"])


def test_round_with_too_few_survivors_is_declared_unrecoverable() -> None:
    fed = Federation(["a", "b", "c"])
    with pytest.raises(SecaggError, match="unrecoverable: 1 survivor"):
        fed.researcher.declare_dropped(["b", "c"])


def test_researcher_cannot_change_the_dropped_set() -> None:
    fed = Federation(["a", "b", "c", "d"])
    fed.researcher.declare_dropped(["d"])
    assert fed.researcher.declare_dropped(["d"]) == ("a", "b", "c")
    with pytest.raises(SecaggError, match="already declared"):
        fed.researcher.declare_dropped(["c"])


def test_incomplete_result_names_the_missing_nodes() -> None:
    fed = Federation(["a", "b", "c"])
    fed.researcher.add("a", "params", fed.maskers["a"].mask("params", np.ones(3)))
    with pytest.raises(SecaggError, match=r"waiting for \['b', 'c'\]"):
        fed.researcher.result("params")


def test_result_after_dropout_waits_for_every_correction() -> None:
    fed = Federation(["a", "b", "c"])
    for node in ("a", "b"):
        fed.researcher.add(node, "params", fed.maskers[node].mask("params", np.ones(3)))
    fed.researcher.declare_dropped(["c"])
    correction = fed.maskers["a"].dropout_correction("params", ["c"])
    fed.researcher.add_correction("a", "params", correction)
    with pytest.raises(SecaggError, match=r"waiting for \['b'\]"):
        fed.researcher.result("params")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (np.ones(10, dtype=np.float64), "node 'b' sent masked payload 'params' with dtype float64"),
        (np.ones(10, dtype=">u8"), "dtype >u8"),
        (np.ones(9, dtype=np.uint64), r"shape \(9,\), expected \(10,\).*set by node 'a'"),
        (bytes(79), "79 bytes, not a whole number.*truncated"),
        (bytes(72), r"9 values, expected \(10,\)"),
        ([1, 2, 3], "as list"),
    ],
)
def test_malformed_masked_payloads_are_refused_naming_the_node(
    payload: object, message: str
) -> None:
    fed = Federation(["a", "b"])
    fed.researcher.add("a", "params", fed.maskers["a"].mask("params", np.ones(10)))
    with pytest.raises(PayloadError, match=message):
        fed.researcher.add("b", "params", payload)  # type: ignore[arg-type]
    assert fed.researcher.waiting_for("params") == ("b",)


def test_scalar_and_empty_payloads_are_summed() -> None:
    fed = Federation(["a", "b", "c"])
    for node in fed.ids:
        fed.researcher.add(node, "n_steps", fed.maskers[node].mask("n_steps", np.array(7)))
        fed.researcher.add(node, "empty", fed.maskers[node].mask("empty", np.zeros((0, 4))))
    assert fed.researcher.result("n_steps") == 21.0
    assert fed.researcher.result("n_steps").shape == ()
    assert fed.researcher.result("empty").shape == (0, 4)


def test_raw_little_endian_bytes_are_accepted() -> None:
    fed = Federation(["a", "b"])
    for node in fed.ids:
        masked = fed.maskers[node].mask("params", np.full(6, 0.25))
        fed.researcher.add(node, "params", masked.astype("<u8").tobytes())
    assert np.allclose(fed.researcher.result("params"), 0.5, atol=SETTINGS.sum_error_bound(2))


def test_expected_shapes_are_enforced_from_the_first_payload() -> None:
    fed = Federation(["a", "b"])
    researcher = SecureSum(fed.session_id, fed.ids, SETTINGS, expected_shapes={"params": (2, 3)})
    with pytest.raises(PayloadError, match=r"node 'a'.*shape \(6,\), expected \(2, 3\)"):
        researcher.add("a", "params", fed.maskers["a"].mask("params", np.ones(6)))


def test_duplicates_and_strangers_are_refused() -> None:
    fed = Federation(["a", "b"])
    masked = fed.maskers["a"].mask("params", np.ones(3))
    fed.researcher.add("a", "params", masked)
    with pytest.raises(PayloadError, match="twice"):
        fed.researcher.add("a", "params", masked)
    with pytest.raises(SecaggError, match=r"node 'eve'.*not a participant"):
        fed.researcher.add("eve", "params", masked)


def test_correction_without_declared_dropout_is_refused() -> None:
    fed = Federation(["a", "b", "c"])
    with pytest.raises(SecaggError, match="not a survivor of a declared dropout"):
        fed.researcher.add_correction("a", "params", np.zeros(3, dtype=np.uint64))


def test_settings_from_experiment_argument() -> None:
    assert SecureAggregation.from_value(True) == SecureAggregation()
    assert SecureAggregation.from_value(False) is None
    assert SecureAggregation.from_value(None) is None
    custom = SecureAggregation.from_value({"clip": 10.0, "protect_parameters": False})
    assert custom == SecureAggregation(clip=10.0, protect_parameters=False)
    assert SecureAggregation.from_value(custom.to_dict()) == custom
    with pytest.raises(SecaggError, match=r"unknown SecAgg setting\(s\) \['bits'\]"):
        SecureAggregation.from_value({"bits": 3})
    with pytest.raises(SecaggError, match="min_survivors"):
        SecureAggregation(min_survivors=1)
    with pytest.raises(SecaggError, match="protect_parameters"):
        SecureAggregation(protect_parameters="yes")  # type: ignore[arg-type]


def test_default_settings_fit_a_large_cross_silo_federation() -> None:
    settings = SecureAggregation()
    assert settings.max_nodes() >= 1000
    assert settings.codec.value_error_bound() <= 1e-9
