"""The node-level DP accountant: Opacus's own numbers, node sampling, dropouts and top-up."""

from __future__ import annotations

import math

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent

from common.errors import ConfigurationError
from common.privacy import NodeLevelDP
from common.secagg import SecureAggregation
from common.training_args import TrainingArgs
from researcher.history import MetricsLog, RoundRecord, rounds_from_rows
from researcher.privacy import (
    NodeDPAccountant,
    NodeDPRound,
    cumulative_epsilon,
    node_dp_setup,
    resolve_noise_multiplier,
)
from researcher.privacy.accountant import RDP_ORDERS

DIMENSION = 100_000


def _dp_round(*, sample_rate: float, noise_multiplier: float) -> NodeDPRound:
    return NodeDPRound(
        sample_rate=sample_rate,
        noise_multiplier=noise_multiplier,
        survivors=2,
        noise_shares=3,
        delta=1e-5,
        round_epsilon=0.7,
        epsilon=1.9,
    )


FRACTION_BITS = 30


@pytest.mark.parametrize(("z", "q", "rounds"), [(1.1, 1.0, 3), (0.8, 0.25, 50), (2.0, 0.1, 200)])
def test_cumulative_epsilon_is_opacus_own_computation(z, q, rounds):
    delta = 1e-5
    ours = cumulative_epsilon([(q, z)] * rounds, delta)
    accountant = RDPAccountant()
    accountant.history = [(z, q, rounds)]
    assert ours == pytest.approx(accountant.get_epsilon(delta), rel=1e-12)
    orders = RDPAccountant.DEFAULT_ALPHAS
    assert orders == RDP_ORDERS
    direct, _ = get_privacy_spent(
        orders=orders,
        rdp=compute_rdp(q=q, noise_multiplier=z, steps=rounds, orders=orders),
        delta=delta,
    )
    assert ours == pytest.approx(direct, rel=1e-9)


def _charge(dp, rounds, *, eligible, participants, survivors):
    accountant = NodeDPAccountant(dp, FRACTION_BITS)
    return [
        accountant.charge(
            eligible=eligible, participants=participants, survivors=survivors, dimension=DIMENSION
        )
        for _ in range(rounds)
    ]


def test_full_participation_is_charged_the_configured_multiplier_and_sample_rate():
    dp = NodeLevelDP(clip=1.0, noise_multiplier=1.2, delta=1e-6)
    records = _charge(dp, 5, eligible=8, participants=4, survivors=4)
    assert records[-1].noise_multiplier == pytest.approx(1.2, rel=1e-12)
    assert records[-1].sample_rate == 0.5
    assert records[-1].epsilon == pytest.approx(cumulative_epsilon([(0.5, 1.2)] * 5, 1e-6))
    assert [r.epsilon for r in records] == sorted(r.epsilon for r in records)
    assert records[0].round_epsilon == pytest.approx(records[0].epsilon)


def test_dropouts_are_charged_the_reduced_noise():
    dp = NodeLevelDP(clip=1.0, noise_multiplier=1.2)
    full = _charge(dp, 3, eligible=4, participants=4, survivors=4)[-1]
    dropped = _charge(dp, 3, eligible=4, participants=4, survivors=3)[-1]
    # 3 of 4 shares of variance sigma^2 / 4 reached the sum.
    assert dropped.noise_multiplier == pytest.approx(1.2 * math.sqrt(3 / 4), rel=1e-12)
    assert dropped.noise_shares == 4 and dropped.survivors == 3
    assert dropped.epsilon > full.epsilon


def test_min_survivors_tops_the_noise_up_against_dropouts():
    dp = NodeLevelDP(clip=1.0, noise_multiplier=1.2, min_survivors=3)
    dropped = _charge(dp, 3, eligible=4, participants=4, survivors=3)[-1]
    full = _charge(dp, 3, eligible=4, participants=4, survivors=4)[-1]
    assert dropped.noise_shares == 3
    assert dropped.noise_multiplier == pytest.approx(1.2, rel=1e-12)
    assert full.noise_multiplier == pytest.approx(1.2 * math.sqrt(4 / 3), rel=1e-12)
    assert full.epsilon < dropped.epsilon


def test_target_epsilon_resolves_to_a_multiplier_that_meets_it():
    dp = NodeLevelDP(clip=1.0, target_epsilon=3.0, delta=1e-5)
    resolved = resolve_noise_multiplier(dp, 20)
    assert resolved.target_epsilon is None and resolved.z > 0
    spent = cumulative_epsilon([(1.0, resolved.z)] * 20, 1e-5)
    assert 2.9 <= spent <= 3.0


def test_setup_resolves_the_block_sent_to_nodes_and_resumes_the_accountant():
    args = TrainingArgs.from_dict(
        {"dp": {"type": "node", "clip": 0.5, "target_epsilon": 4.0, "delta": 1e-5}}
    )
    past = RoundRecord(round=1, node_dp=_dp_round(sample_rate=1.0, noise_multiplier=1.0))
    sent, accountant = node_dp_setup(
        args,
        SecureAggregation(),
        supports_secure_sum=True,
        aux_modules=(),
        round_limit=10,
        history=[past],
    )
    assert sent.node_dp is not None and sent.node_dp.noise_multiplier is not None
    assert accountant is not None
    record = accountant.charge(eligible=3, participants=3, survivors=3, dimension=DIMENSION)
    z = sent.node_dp.z
    assert record.epsilon == pytest.approx(cumulative_epsilon([(1.0, 1.0), (1.0, z)], 1e-5))
    with pytest.raises(ConfigurationError, match="round limit"):
        node_dp_setup(
            args,
            SecureAggregation(),
            supports_secure_sum=True,
            aux_modules=(),
            round_limit=None,
            history=[],
        )


def test_node_dp_rows_survive_metrics_jsonl_and_checkpoints(tmp_path):
    dp_round = _dp_round(sample_rate=0.5, noise_multiplier=1.1)
    record = RoundRecord(round=4, seconds=1.0, node_dp=dp_round)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.append(record)
    rows = MetricsLog.read(log.path)
    assert rows[0]["node_dp_epsilon"] == 1.9 and rows[0]["node_dp_delta"] == 1e-5
    assert rounds_from_rows(rows)[0].node_dp == dp_round
    assert RoundRecord.from_dict(record.to_dict()).node_dp == dp_round


def test_the_progress_display_and_report_show_epsilon(caplog, tmp_path):
    import io
    import logging

    from rich.console import Console

    from researcher.progress import LogProgress
    from researcher.report import print_summary, summarize

    caplog.set_level(logging.INFO, logger="researcher.progress")
    record = RoundRecord(
        round=1, seconds=1.0, node_dp=_dp_round(sample_rate=1.0, noise_multiplier=1.0)
    )
    progress = LogProgress()
    progress.start("exp", 1, 2)
    progress.round_finished(record)
    assert "node-level DP ε=1.9 (δ=1e-05)" in caplog.text
    out = io.StringIO()
    print_summary(Console(file=out, width=120, color_system=None), summarize([record]), "exp")
    assert "node_dp_epsilon" in out.getvalue() and "1.9" in out.getvalue()
    assert "δ = 1e-05" in out.getvalue()
