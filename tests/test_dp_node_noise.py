"""Node-level DP under SecAgg, from the curious researcher's side: the noise in the unmasked
sum, what one node's upload reveals, the sampler, and the refusals."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from common.errors import ConfigurationError, SecaggError
from common.privacy import (
    NodeLevelDP,
    distributed_zcdp_epsilon,
    parse_node_dp,
    privatize_update,
    sample_discrete_gaussian,
)
from common.proto import fedloom_pb2 as pb
from common.secagg import NodeMasker, SecureAggregation
from common.secagg.keys import SecaggKeyPair
from common.secagg.masking import sum_masked
from common.secagg.protect import protect_node_reply
from common.training_args import TrainingArgs
from researcher.privacy import check_node_dp_setup

FRACTION_BITS = 16
SCALE = 2.0**FRACTION_BITS
SHAPES = {"w": (40, 50), "b": (2000,)}  # 4000 parameters


def _seed(*parts: int) -> bytes:
    return b"".join(p.to_bytes(4, "big") for p in parts).ljust(16, b"\0")


@pytest.mark.parametrize("sigma", [0.8, 3.0, 250.0, 1.5e6])
def test_sampler_mean_and_variance_match_sigma(sigma):
    draws = sample_discrete_gaussian(sigma, 200_000, seed=_seed(7)).astype(np.float64)
    # Variance of the discrete Gaussian is within 1e-6 of sigma^2 once sigma >= 0.8.
    assert abs(draws.mean()) < 5 * sigma / math.sqrt(draws.size)
    assert draws.var() == pytest.approx(sigma**2, rel=0.02)


def test_sampler_probabilities_are_the_discrete_gaussian():
    sigma = 1.3
    draws = sample_discrete_gaussian(sigma, 400_000, seed=_seed(3))
    support = np.arange(-12, 13)
    weights = np.exp(-(support**2) / (2 * sigma**2))
    expected = weights / weights.sum()
    observed = np.array([(draws == k).mean() for k in support])
    for k, p_exp, p_obs in zip(support, expected, observed, strict=True):
        # 5 standard errors of a frequency over 400k draws
        assert abs(p_obs - p_exp) <= 5 * math.sqrt(p_exp * (1 - p_exp) / draws.size) + 1e-6, k


def test_sampler_is_reproducible_only_when_seeded():
    a = sample_discrete_gaussian(10.0, 1000, seed=_seed(1))
    assert np.array_equal(a, sample_discrete_gaussian(10.0, 1000, seed=_seed(1)))
    assert not np.array_equal(
        sample_discrete_gaussian(10.0, 1000), sample_discrete_gaussian(10.0, 1000)
    )


def _updates(n_nodes):
    rng = np.random.default_rng(0)
    global_params = {k: rng.normal(0, 0.5, size=s) for k, s in SHAPES.items()}
    # Node 0's update is far beyond the clip, the others inside it.
    trained = []
    for i in range(n_nodes):
        scale = 0.5 if i == 0 else 0.001
        trained.append(
            {k: v + rng.normal(0, scale, size=v.shape) for k, v in global_params.items()}
        )
    return global_params, trained


def _round(dp, global_params, trained, settings, draw):
    """One round as the researcher sees it: every node's masked upload, and their sum."""
    keys = [SecaggKeyPair.generate() for _ in trained]
    ids = [f"node{i}" for i in range(len(trained))]
    peers = {node_id: key.public_bytes() for node_id, key in zip(ids, keys, strict=True)}
    uploads = []
    for i, (node_id, key, params) in enumerate(zip(ids, keys, trained, strict=True)):
        masker = NodeMasker(f"session-{draw}", node_id, key, peers, settings)
        noisy = privatize_update(
            params,
            global_params,
            dp,
            noise_shares=dp.noise_shares(len(masker.participants)),
            fraction_bits=settings.fraction_bits,
            value_clip=settings.clip,
            seed=_seed(draw, i),
        )
        sections, _ = protect_node_reply(masker, noisy, 1, {}, protect_parameters=True)
        uploads.append(sections[pb.PAYLOAD_SECTION_SECAGG_PARAMS])
    return uploads


def _exact_sum(dp, global_params, trained):
    """The noiseless integer sum of the clipped, rounded contributions."""
    dimension = sum(math.prod(s) for s in SHAPES.values())
    bound = dp.clip - math.sqrt(dimension) / (2 * SCALE)
    total = {k: np.zeros(v.shape) for k, v in global_params.items()}
    for params in trained:
        deltas = {k: params[k] - global_params[k] for k in params}
        norm = math.sqrt(sum(float((d**2).sum()) for d in deltas.values()))
        factor = min(1.0, bound / norm)
        rounded = {k: np.rint(d * factor * SCALE) for k, d in deltas.items()}
        assert math.sqrt(sum(float((r**2).sum()) for r in rounded.values())) <= dp.clip * SCALE
        for k in total:
            total[k] += np.rint(global_params[k] * SCALE) + rounded[k]
    return total


def test_unmasked_sum_carries_noise_of_the_configured_sigma_though_no_node_added_it_all():
    dp = NodeLevelDP(clip=0.2, noise_multiplier=1.5)
    settings = SecureAggregation(fraction_bits=FRACTION_BITS, clip=1e4)
    global_params, trained = _updates(3)
    exact = _exact_sum(dp, global_params, trained)
    residuals, one_node = [], []
    for draw in range(10):
        uploads = _round(dp, global_params, trained, settings, draw)
        for name in SHAPES:
            total = sum_masked([u[name] for u in uploads])
            unmasked = settings.codec.decode_sum(total)
            residuals.append((unmasked * SCALE - exact[name]).ravel())
        # The same draws without the other nodes: node 0's share alone (a colluding set).
        one = privatize_update(
            trained[0],
            global_params,
            dp,
            noise_shares=3,
            fraction_bits=FRACTION_BITS,
            value_clip=settings.clip,
            seed=_seed(draw, 0),
        )
        alone = _exact_sum(dp, global_params, trained[:1])
        one_node.append(np.concatenate([(one[k] * SCALE - alone[k]).ravel() for k in SHAPES]))
    noise = np.concatenate(residuals)
    sigma = dp.z * dp.clip * SCALE  # configured sigma, integer units
    assert noise.size == 40_000
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(noise.size)
    assert noise.var() == pytest.approx(sigma**2, rel=0.03)
    # Each node added only its share, variance sigma^2 / 3.
    share = np.concatenate(one_node)
    assert share.var() == pytest.approx(sigma**2 / 3, rel=0.03)


def test_one_nodes_upload_alone_reveals_nothing_and_colluders_learn_it_only_up_to_its_noise():
    dp = NodeLevelDP(clip=0.2, noise_multiplier=1.5)
    settings = SecureAggregation(fraction_bits=FRACTION_BITS, clip=1e4)
    global_params, trained = _updates(3)
    uploads = _round(dp, global_params, trained, settings, draw=99)
    # Node 0's masked upload, decoded as if it were a sum: noise over the whole ring.
    decoded = settings.codec.decode_sum(np.ascontiguousarray(uploads[0]["b"]))
    truth = trained[0]["b"]
    assert np.median(np.abs(decoded - truth)) > 1e9
    assert abs(np.corrcoef(decoded, truth)[0, 1]) < 0.1
    # The researcher colluding with nodes 1 and 2 (it knows their exact uploads' clear
    # values) subtracts them from the sum: what is left is node 0's clipped update plus
    # its own noise share, sigma^2 / 3 in variance, never the update itself.
    total = settings.codec.decode_sum(sum_masked([u["b"] for u in uploads]))
    others = [
        privatize_update(
            trained[i],
            global_params,
            dp,
            noise_shares=3,
            fraction_bits=FRACTION_BITS,
            value_clip=settings.clip,
            seed=_seed(99, i),
        )["b"]
        for i in (1, 2)
    ]
    estimate = total - others[0] - others[1] - global_params["b"]
    delta = trained[0]["b"] - global_params["b"]
    clipped = delta * (
        dp.clip
        / math.sqrt(sum(float(((trained[0][k] - global_params[k]) ** 2).sum()) for k in SHAPES))
    )
    error = estimate - clipped
    sigma = dp.z * dp.clip
    assert error.std() == pytest.approx(sigma / math.sqrt(3), rel=0.06)
    assert error.std() > 10 * np.abs(clipped).mean()  # the update drowns in its own noise


def test_noise_leaving_the_secagg_range_fails_clearly():
    dp = NodeLevelDP(clip=1.0, noise_multiplier=5.0)
    global_params, trained = _updates(1)
    with pytest.raises(SecaggError, match=r"SecureAggregation\(clip=\.\.\.\)"):
        privatize_update(
            trained[0],
            global_params,
            dp,
            noise_shares=1,
            fraction_bits=FRACTION_BITS,
            value_clip=3.0,
        )


def test_too_few_fraction_bits_for_the_clip_fail_clearly():
    dp = NodeLevelDP(clip=1e-3, noise_multiplier=1.0)
    global_params, trained = _updates(1)
    with pytest.raises(ConfigurationError, match="fraction_bits"):
        privatize_update(
            trained[0], global_params, dp, noise_shares=1, fraction_bits=4, value_clip=1e4
        )


def test_researcher_refuses_node_dp_that_would_not_hold():
    dp = NodeLevelDP(clip=1.0, noise_multiplier=1.0)
    with pytest.raises(ConfigurationError, match="secagg=True"):
        check_node_dp_setup(dp, None, True, ())
    with pytest.raises(ConfigurationError, match="protecting the parameters"):
        check_node_dp_setup(dp, SecureAggregation(protect_parameters=False), True, ())
    with pytest.raises(ConfigurationError, match="FedAverage"):
        check_node_dp_setup(dp, SecureAggregation(), False, ())
    with pytest.raises(ConfigurationError, match="scaffold"):
        check_node_dp_setup(dp, SecureAggregation(), True, ["scaffold"])
    with pytest.raises(ConfigurationError, match=r"SecureAggregation\(clip=\.\.\.\)"):
        check_node_dp_setup(dp, SecureAggregation(clip=10.0), True, ())
    check_node_dp_setup(dp, SecureAggregation(), True, ())


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"type": "node", "noise_multiplier": 1.0}, "needs 'clip'"),
        ({"type": "node", "clip": 1.0}, "exactly one of"),
        ({"type": "node", "clip": 1.0, "noise_multiplier": 1, "target_epsilon": 2}, "exactly one"),
        ({"type": "node", "clip": -1.0, "noise_multiplier": 1.0}, "'clip'.*positive"),
        ({"type": "node", "clip": 1.0, "noise_multiplier": 1.0, "delta": 2}, "delta"),
        ({"type": "node", "clip": 1.0, "noise_multiplier": 1.0, "sigma": 2}, r"unknown key.*sigma"),
    ],
)
def test_bad_dp_blocks_are_refused_with_the_reason(block, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_node_dp(block)
    with pytest.raises(ConfigurationError, match=message):
        TrainingArgs.from_dict({"dp": block})


def test_training_args_carry_the_node_dp_block_through_json():
    args = TrainingArgs.from_dict(
        {"num_updates": 2, "dp": {"type": "node", "clip": 0.5, "noise_multiplier": 1.1}}
    )
    again = TrainingArgs.from_json(args.to_json())
    assert again.node_dp == NodeLevelDP(clip=0.5, noise_multiplier=1.1)
    assert TrainingArgs().node_dp is None


def test_distributed_bound_charges_the_sum_divergence_only_for_tiny_shares():
    # Shares of thousands of integer units: tau underflows, eps = Delta / (sqrt(n) s).
    assert distributed_zcdp_epsilon(1000.0, 800.0, 4, 10**6) == pytest.approx(1000 / (2 * 800))
    # Shares of sigma 0.3: a sum of discrete Gaussians is far from one, and the bound says so.
    assert distributed_zcdp_epsilon(1.0, 0.3, 4, 100) > 1 / (2 * 0.3) * 1.5


def test_toml_experiments_take_the_block_as_a_training_args_dp_table(tmp_path):
    from researcher.config import load_experiment_config

    path = tmp_path / "experiment.toml"
    text = """\
        tags = ["#tab"]
        rounds = 2
        secagg = true
        [plan]
        file = "plan.py"
        class = "P"
        [training_args.dp]
        type = "node"
        clip = 0.5
        {key} = 1.0
        """
    (tmp_path / "plan.py").write_text("class P: ...\n")
    path.write_text(textwrap.dedent(text.format(key="noise_multiplier")))
    config = load_experiment_config(path)
    assert TrainingArgs.from_dict(config.training_args).node_dp == NodeLevelDP(0.5, 1.0)
    path.write_text(textwrap.dedent(text.format(key="noise")))
    with pytest.raises(ConfigurationError, match=r"experiment.toml.*unknown key.*noise"):
        load_experiment_config(path)


def test_node_refuses_an_update_measured_against_a_global_model_the_plan_rewrote(tmp_path):
    """A plan could rewrite the downloaded global parameters in its scratch folder so its
    'update' is tiny while its upload carries anything: the supervisor pins them first."""
    from common.payload_files import write_sections_file
    from node.node_dp import global_params_digest, privatize_reply

    global_params, trained = _updates(1)
    path = tmp_path / "global.bin"
    write_sections_file(path, {pb.PAYLOAD_SECTION_PARAMS: global_params})
    dp_block = {"type": "node", "clip": 0.2, "noise_multiplier": 1.0}
    task = pb.WorkerTask(
        global_payload_path=str(path), training_args_json=TrainingArgs(dp=dp_block).to_json()
    )
    digest = global_params_digest(task)
    settings = SecureAggregation(fraction_bits=FRACTION_BITS, clip=1e4)
    dp = parse_node_dp(dp_block)
    noisy = privatize_reply(task, digest, trained[0], {}, dp, settings, 3)
    assert set(noisy) == set(SHAPES)
    write_sections_file(path, {pb.PAYLOAD_SECTION_PARAMS: trained[0]})  # the plan's forgery
    with pytest.raises(SecaggError, match="global parameters file changed"):
        privatize_reply(task, digest, trained[0], {}, dp, settings, 3)
    with pytest.raises(SecaggError, match="aux vars"):
        privatize_reply(task, digest, trained[0], {"scaffold": object()}, dp, settings, 3)
