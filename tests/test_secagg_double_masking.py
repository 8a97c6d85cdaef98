"""Double-masking SecAgg, driver and node side together in-process, played from the attacker's side.

Real crypto and real masking: the researcher driver (researcher.secagg) talks to the nodes'
phase handlers (node.secagg_tasks) through an exchange that calls them directly, and each
node masks its update with the masker the train request's shares open.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pytest
from declearn.model.sklearn import NumpyVector
from declearn.optimizer.modules import ScaffoldAuxVar

from common.errors import RoundFailedError, SecaggError
from common.proto import fedloom_pb2 as pb
from common.secagg import SecureAggregation
from common.secagg.advert import NodeIdentity
from common.secagg.double_masking import removal_seeds
from common.secagg.kdf import agree, mask_seed
from common.secagg.keys import SecaggKeyPair
from common.secagg.masking import sum_and_mask
from common.secagg.protect import mask_label, protect_node_reply
from common.tls import add_node_cert, init_certs
from node.secagg_tasks import SecaggTasks
from researcher.secagg import (
    CollectedReplies,
    CollectedReply,
    Participant,
    SecureRoundSession,
)

SETTINGS = SecureAggregation()
MASKED_PARAMS = pb.PAYLOAD_SECTION_SECAGG_PARAMS
# The label node and researcher derive the weight's masks from.
WEIGHT_LABEL = mask_label(MASKED_PARAMS, "weight")
PARAM_SHAPES = {"weight": (40, 25), "bias": (25,)}
TIMEOUT = 10.0

# Tamper hook: sees every task before it reaches a node and may rewrite it.
Tamper = Callable[[str, pb.TaskRequest], pb.TaskRequest]


class Federation:
    """Nodes answering SecAgg phase tasks in-process, and an exchange that reaches them."""

    def __init__(self, tmp_path: Path, node_ids: list[str], *, signed: bool = True) -> None:
        self.node_ids = node_ids
        self.certs = init_certs(tmp_path / "certs", ["localhost"], node_ids) if signed else None
        self.nodes = {
            node: SecaggTasks(node, tmp_path / "homes" / node, self.identity(node))
            for node in node_ids
        }
        self.offline: set[str] = set()
        self.tamper: Tamper | None = None
        self.kept_replies: list[CollectedReply] = []  # everything a curious researcher sees
        rng = np.random.default_rng(7)
        self.params = {
            node: {k: rng.normal(0, 1, s).astype(np.float32) for k, s in PARAM_SHAPES.items()}
            for node in node_ids
        }
        self.samples = {node: int(rng.integers(10, 500)) for node in node_ids}

    def identity(self, node: str) -> NodeIdentity | None:
        if self.certs is None:
            return None
        paths = self.certs.node(node)
        return NodeIdentity.load(ca=paths.ca, cert=paths.cert, key=paths.key)

    def run_tasks(self, tasks: Mapping[str, pb.TaskRequest], timeout: float) -> CollectedReplies:
        result = CollectedReplies()
        for node, task in tasks.items():
            if node in self.offline:
                result.failures[node] = "timed out"
                continue
            if self.tamper is not None:
                task = self.tamper(node, task)
            try:
                reply = self.nodes[node].run(task)
            except SecaggError as err:
                reply = pb.TaskReply(
                    task_id=task.task_id,
                    ok=False,
                    error=pb.TaskError(kind="SecaggError", message=str(err)),
                )
            received = CollectedReply(reply)
            self.kept_replies.append(received)
            result.replies[node] = received
        return result

    def train(
        self, node: str, context: pb.SecaggContext, aux: dict | None = None
    ) -> tuple[dict, pb.AuxVars]:
        """What the node's training process uploads: its masked reply."""
        masker = self.nodes[node].participant.masker(context)
        return protect_node_reply(
            masker, self.params[node], self.samples[node], aux or {}, protect_parameters=True
        )

    def session(self, threshold: int | None = None) -> SecureRoundSession:
        settings = SecureAggregation(threshold=threshold)
        return SecureRoundSession(
            settings, "exp", 1, [Participant(n, f"site-{n}") for n in self.node_ids]
        )

    def clear_sum(self, survivors: list[str]) -> dict[str, np.ndarray]:
        return {
            k: sum(self.samples[n] * self.params[n][k].astype(np.float64) for n in survivors)
            for k in PARAM_SHAPES
        }


def run_round(
    fed: Federation,
    session: SecureRoundSession,
    *,
    upload_missing: set[str] = frozenset(),
    answered_missing: set[str] = frozenset(),
) -> tuple[dict[str, dict], object]:
    """Setup, train every remaining node, unmask; returns the uploads and the result."""
    remaining = session.setup(fed, TIMEOUT)
    uploads = {}
    for node in remaining:
        if node in upload_missing:
            continue
        arrays, aux = fed.train(node, session.train_context(node))
        uploads[node] = arrays
        if node not in answered_missing:
            session.add_masked(node, arrays, aux)
    answered = [n for n in remaining if n not in upload_missing and n not in answered_missing]
    return uploads, session.unmask(fed, answered, TIMEOUT)


def assert_matches_clear(fed: Federation, result: object, survivors: list[str]) -> None:
    clear = fed.clear_sum(survivors)
    bound = SETTINGS.sum_error_bound(len(survivors))
    for key, expected in clear.items():
        assert np.abs(result.param_sums[key] - expected).max() <= bound  # type: ignore[attr-defined]
    assert result.total_samples == sum(fed.samples[n] for n in survivors)  # type: ignore[attr-defined]


def test_secure_fedavg_sums_equal_the_clear_ones_within_the_fixed_point_bound(
    tmp_path: Path,
) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    _, result = run_round(fed, fed.session())
    assert_matches_clear(fed, result, ["a", "b", "c"])


def test_scaffold_aux_vars_are_summed_securely_and_clear_fields_merged(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    session = fed.session()
    remaining = session.setup(fed, TIMEOUT)
    deltas = {n: np.full(5, float(i + 1)) for i, n in enumerate(remaining)}
    for node in remaining:
        aux = {"scaffold": ScaffoldAuxVar(delta=NumpyVector({"w": deltas[node]}), clients={node})}
        arrays, message = fed.train(node, session.train_context(node), aux)
        session.add_masked(node, arrays, message)
    result = session.unmask(fed, remaining, TIMEOUT)
    scaffold = result.aux["scaffold"]
    assert scaffold.clients == {"a", "b", "c"}
    np.testing.assert_allclose(scaffold.delta.coefs["w"], sum(deltas.values()), atol=1e-8)


def test_insecure_nodes_run_unsigned(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"], signed=False)
    _, result = run_round(fed, fed.session())
    assert_matches_clear(fed, result, ["a", "b", "c"])


# -- dropouts at every phase -----------------------------------------------------------------


def test_dropout_during_key_advertisement_is_recovered(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d", "e"])
    session = fed.session()
    fed.offline = {"e"}
    _, result = run_round(fed, session)
    assert_matches_clear(fed, result, ["a", "b", "c", "d"])


def test_dropout_after_key_exchange_is_recovered(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d", "e"])
    session = fed.session()

    def drop_e_at_sharing(node: str, task: pb.TaskRequest) -> pb.TaskRequest:
        if task.WhichOneof("kind") == "secagg_share":
            fed.offline.add("e")
        return task

    fed.tamper = drop_e_at_sharing
    remaining = session.setup(fed, TIMEOUT)
    fed.tamper = None
    assert remaining == ["a", "b", "c", "d"]
    for node in remaining:
        session.add_masked(node, *fed.train(node, session.train_context(node)))
    result = session.unmask(fed, remaining, TIMEOUT)
    assert_matches_clear(fed, result, remaining)


@pytest.mark.parametrize("dropped", [["c"], ["b", "e"]])
def test_dropout_after_share_distribution_is_recovered(tmp_path: Path, dropped: list[str]) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d", "e"])
    _, result = run_round(fed, fed.session(), upload_missing=set(dropped))
    assert_matches_clear(fed, result, [n for n in fed.node_ids if n not in dropped])


def test_dropout_after_masked_upload_is_recovered_and_the_upload_never_folded(
    tmp_path: Path,
) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d"])
    session = fed.session()
    remaining = session.setup(fed, TIMEOUT)
    for node in remaining:
        session.add_masked(node, *fed.train(node, session.train_context(node)))
    # "d" uploaded, but the engine declared it dropped (its reply came after the deadline).
    result = session.unmask(fed, ["a", "b", "c"], TIMEOUT)
    assert_matches_clear(fed, result, ["a", "b", "c"])


def test_dropout_of_a_survivor_during_unmasking_is_recovered(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d", "e"])
    session = fed.session()
    remaining = session.setup(fed, TIMEOUT)
    for node in remaining:
        session.add_masked(node, *fed.train(node, session.train_context(node)))
    fed.offline = {"b", "e"}  # they uploaded, then vanished before answering the unmask
    result = session.unmask(fed, remaining, TIMEOUT)
    assert_matches_clear(fed, result, remaining)


def test_below_threshold_the_error_names_the_missing_nodes_and_t(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d", "e"])
    session = fed.session()
    fed.offline = {"c", "d", "e"}
    with pytest.raises(RoundFailedError, match=r"t=3") as info:
        session.setup(fed, TIMEOUT)
    for label in ("site-c", "site-d", "site-e"):
        assert label in str(info.value)


def test_too_many_dropouts_after_upload_fail_naming_them(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d", "e"])
    with pytest.raises(RoundFailedError, match=r"t=3.*site-d.*site-e"):
        run_round(fed, fed.session(), upload_missing={"c", "d", "e"})


def test_threshold_is_a_majority_by_default_and_configurable_upward(tmp_path: Path) -> None:
    assert SecureAggregation().threshold_for(2) == 2
    assert SecureAggregation().threshold_for(3) == 2
    assert SecureAggregation().threshold_for(10) == 6
    assert SecureAggregation(threshold=9).threshold_for(10) == 9
    with pytest.raises(SecaggError, match="not a majority"):
        SecureAggregation(threshold=5).threshold_for(10)
    with pytest.raises(SecaggError, match="exceeds"):
        SecureAggregation(threshold=4).threshold_for(3)
    fed = Federation(tmp_path, ["a", "b", "c", "d", "e"])
    with pytest.raises(RoundFailedError, match="t=5"):
        run_round(fed, fed.session(threshold=5), upload_missing={"e"})


# -- the curious researcher -----------------------------------------------------------------


def decode_without_self_mask(
    fed: Federation,
    session: SecureRoundSession,
    node: str,
    masked_weight: np.ndarray,
    dropped_key: SecaggKeyPair,
) -> np.ndarray:
    """The attacker's best effort on a late upload: strip every pairwise mask of ``node``
    (its mask key rebuilt from the survivors' shares) and decode what is left."""
    name = WEIGHT_LABEL
    survivors = [n for n in session.participants if n != node]
    seeds = []
    for peer in survivors:
        pair = agree(
            dropped_key,
            my_id=node,
            peer_id=peer,
            peer_public=bytes(session._adverts[peer].mask_public_key),
        )
        sign = 1 if peer > node else -1
        seeds.append((mask_seed(pair, session_id=session.session_id, payload=name), -sign))
    stripped = sum_and_mask([masked_weight], seeds, PARAM_SHAPES["weight"])
    return SETTINGS.codec.decode_sum(stripped) / fed.samples[node]


def test_late_upload_of_a_dropped_node_reveals_nothing_to_a_curious_researcher(
    tmp_path: Path,
) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d"])
    session = fed.session()
    remaining = session.setup(fed, TIMEOUT)
    uploads = {}
    for node in remaining:
        uploads[node] = fed.train(node, session.train_context(node))
        if node != "d":
            session.add_masked(node, *uploads[node])
    result = session.unmask(fed, ["a", "b", "c"], TIMEOUT)
    assert_matches_clear(fed, result, ["a", "b", "c"])  # the honest sum is exact

    # "d"'s upload arrives late; the researcher keeps it and every share it ever received.
    with pytest.raises(SecaggError, match="after SecAgg session"):
        session.add_masked("d", *uploads["d"])
    late = uploads["d"][0][MASKED_PARAMS]["weight"]
    key_shares: dict[int, np.ndarray] = {}
    self_shares: dict[int, np.ndarray] = {}
    for received in fed.kept_replies:
        if received.reply.secagg.WhichOneof("kind") == "unmask":
            for share in received.reply.secagg.unmask.mask_key:
                if share.owner == "d":
                    key_shares[share.x] = np.asarray(share.y, dtype=np.uint64)
            for share in received.reply.secagg.unmask.self_mask:
                if share.owner == "d":
                    self_shares[share.x] = np.asarray(share.y, dtype=np.uint64)
    assert not self_shares, "a node revealed the self-mask shares of a dropped node"
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    from common.secagg.shamir import reconstruct

    d_key = SecaggKeyPair(X25519PrivateKey.from_private_bytes(reconstruct(key_shares, 3)[0]))
    guess = decode_without_self_mask(fed, session, "d", late, d_key)
    truth = fed.params["d"]["weight"].astype(np.float64)
    # What is left is the self mask read as fixed point: values spread over the whole ring,
    # millions of times the update's scale, and uncorrelated with it.
    assert np.median(np.abs(guess - truth)) > 1e3
    assert abs(np.corrcoef(guess.ravel(), truth.ravel())[0, 1]) < 0.1

    # Asking the survivors again, now with "d" as a survivor, is refused by every node.
    for node in ["a", "b", "c"]:
        again = pb.TaskRequest(
            task_id="again",
            secagg_unmask=pb.SecaggUnmaskRequest(
                session_id=session.session_id, survivors=["a", "b", "c", "d"]
            ),
        )
        with pytest.raises(SecaggError, match="second, different dropped set"):
            fed.nodes[node].run(again)


def test_the_same_late_upload_with_pairwise_masks_only_would_have_leaked(tmp_path: Path) -> None:
    """Control: without the self mask the same attack gives the update exactly (why it exists)."""
    fed = Federation(tmp_path, ["a", "b", "c", "d"])
    session = fed.session()
    remaining = session.setup(fed, TIMEOUT)
    uploads = {n: fed.train(n, session.train_context(n)) for n in remaining}
    for node in ["a", "b", "c"]:
        session.add_masked(node, *uploads[node])
    session.unmask(fed, ["a", "b", "c"], TIMEOUT)
    state = fed.nodes["d"].participant.store.require(session.session_id)
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    # Read from d's own home (the attacker cannot): its seed, to strip the self mask as well.
    assert state["secrets"]["seed"], "d never unmasked, so it still holds its seed"
    seed = bytes.fromhex(state["secrets"]["seed"])
    mask_key = SecaggKeyPair(
        X25519PrivateKey.from_private_bytes(bytes.fromhex(state["secrets"]["mask"]))
    )
    seeds = removal_seeds(
        session_id=session.session_id,
        payload=WEIGHT_LABEL,
        survivor_seeds={"d": seed},
        dropped_keys={},
        mask_public_keys={},
    )
    partially = sum_and_mask([uploads["d"][0][MASKED_PARAMS]["weight"]], seeds, (40, 25))
    guess = decode_without_self_mask(fed, session, "d", partially, mask_key)
    np.testing.assert_allclose(guess, fed.params["d"]["weight"], atol=1e-6)


# -- the malicious researcher ---------------------------------------------------------------


def share_phase_refusal(fed: Federation, session: SecureRoundSession) -> str:
    """Run setup, which every node refuses at the share phase; the error quotes their reasons."""
    with pytest.raises(RoundFailedError) as info:
        session.setup(fed, TIMEOUT)
    return str(info.value)


def edit_adverts(edit: Callable[[pb.SecaggKeyAdvert], None]) -> Tamper:
    """A researcher rewriting the adverts it relays in the share phase."""

    def tamper(node: str, task: pb.TaskRequest) -> pb.TaskRequest:
        if task.WhichOneof("kind") != "secagg_share":
            return task
        task = pb.TaskRequest.FromString(task.SerializeToString())
        for advert in task.secagg_share.adverts:
            edit(advert)
        return task

    return tamper


def test_substituted_round_keys_are_detected_and_refused(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    attacker_key = SecaggKeyPair.generate().public_bytes()

    def substitute_b(advert: pb.SecaggKeyAdvert) -> None:
        if advert.node_id == "b":
            advert.mask_public_key = attacker_key

    fed.tamper = edit_adverts(substitute_b)
    message = share_phase_refusal(fed, fed.session())
    assert "do not match their signature" in message
    assert "not the ones it advertised" in message  # b itself sees its keys replaced


def test_an_invented_participant_is_detected_and_refused(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    # The researcher's Sybil: a certificate for "sybil" from a CA of its own.
    rogue = init_certs(tmp_path / "rogue", ["localhost"], ["sybil"]).node("sybil")
    identity = NodeIdentity.load(ca=rogue.ca, cert=rogue.cert, key=rogue.key)
    fed.nodes["sybil"] = SecaggTasks("sybil", tmp_path / "homes" / "sybil", identity)
    fed.node_ids = ["a", "b", "c", "sybil"]
    assert "the federation CA did not issue" in share_phase_refusal(fed, fed.session())


def test_a_node_posing_as_another_is_detected(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    paths = add_node_cert(tmp_path / "certs", "mallory")
    mallory = NodeIdentity.load(ca=paths.ca, cert=paths.cert, key=paths.key)
    # Keys for "c", signed with mallory's genuine certificate.
    as_c = NodeIdentity("c", mallory.certificate_pem, mallory.private_key, mallory.ca_certificates)

    def c_signed_by_mallory(advert: pb.SecaggKeyAdvert) -> None:
        if advert.node_id == "c":
            advert.mask_public_key = SecaggKeyPair.generate().public_bytes()
            as_c.sign(advert)

    fed.tamper = edit_adverts(c_signed_by_mallory)
    assert "certificate of node 'mallory'" in share_phase_refusal(fed, fed.session())


def test_unsigned_adverts_are_refused_by_nodes_with_certificates(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    fed.tamper = edit_adverts(lambda advert: advert.ClearField("signature"))
    assert "are unsigned" in share_phase_refusal(fed, fed.session())


def test_nodes_shown_different_rosters_refuse_the_round(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d"])
    session = fed.session()

    def hide_d_from_a(node: str, task: pb.TaskRequest) -> pb.TaskRequest:
        if node == "a" and task.WhichOneof("kind") == "secagg_advertise":
            task = pb.TaskRequest.FromString(task.SerializeToString())
            del task.secagg_advertise.participants[:]
            task.secagg_advertise.participants.extend(["a", "b", "c"])
        return task

    fed.tamper = hide_d_from_a
    with pytest.raises(RoundFailedError) as info:
        session.setup(fed, TIMEOUT)
    message = str(info.value)
    # Every node sees, in a signed advert, that another node was told another roster.
    assert message.count("the researcher shows nodes different rosters") == 4


def unmasked_session(fed: Federation) -> SecureRoundSession:
    session = fed.session()
    for node in session.setup(fed, TIMEOUT):
        session.add_masked(node, *fed.train(node, session.train_context(node)))
    return session


def signed_unmask_request(
    fed: Federation,
    session: SecureRoundSession,
    survivors: list[str],
    dropped: list[str],
    signers: list[str] | None = None,
) -> pb.SecaggUnmaskRequest:
    """An unmask request carrying ``signers``' (default: the survivors') signatures over
    ``survivors``; a node that already signed another set refuses and is left out."""
    check = pb.SecaggConsistencyRequest(session_id=session.session_id, survivors=survivors)
    signatures = []
    for node in signers if signers is not None else survivors:
        try:
            reply = fed.nodes[node].run(pb.TaskRequest(secagg_consistency=check))
        except SecaggError:
            continue
        signatures.append(reply.secagg.consistency)
    return pb.SecaggUnmaskRequest(
        session_id=session.session_id, survivors=survivors, dropped=dropped, signatures=signatures
    )


def test_survivors_shown_different_survivor_sets_refuse_to_unmask(tmp_path: Path) -> None:
    """The researcher tells "a" that everyone survived (to get self-mask shares) and the others
    that "a" dropped (to get a's mask key): with fewer than t signatures on either story,
    the node told the minority story refuses."""
    fed = Federation(tmp_path, ["a", "b", "c", "d", "e"])
    session = unmasked_session(fed)
    everyone = ["a", "b", "c", "d", "e"]
    without_a = ["b", "c", "d", "e"]
    for_others = signed_unmask_request(fed, session, without_a, ["a"])
    for_a = signed_unmask_request(fed, session, everyone, [], signers=["a"])
    assert len(for_others.signatures) == 4 and len(for_a.signatures) == 1
    with pytest.raises(SecaggError, match="only 1 survivor"):
        fed.nodes["a"].run(pb.TaskRequest(secagg_unmask=for_a))
    # Nor can it borrow the others' signatures: they signed another set.
    for_a.signatures.extend(for_others.signatures)
    with pytest.raises(SecaggError, match="do not match their signature"):
        fed.nodes["a"].run(pb.TaskRequest(secagg_unmask=for_a))
    # A node refuses to sign a second survivor set.
    with pytest.raises(SecaggError, match="already signed survivors"):
        fed.nodes["b"].run(
            pb.TaskRequest(
                secagg_consistency=pb.SecaggConsistencyRequest(
                    session_id=session.session_id, survivors=everyone
                )
            )
        )


def test_a_request_for_both_kinds_of_share_for_one_node_is_refused(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d"])
    session = unmasked_session(fed)
    both = pb.TaskRequest(
        secagg_unmask=pb.SecaggUnmaskRequest(
            session_id=session.session_id, survivors=["a", "b", "c", "d"], dropped=["d"]
        )
    )
    with pytest.raises(SecaggError, match=r"both the self-mask and the mask-key shares of \['d'\]"):
        fed.nodes["a"].run(both)


def test_a_second_different_dropped_set_is_refused_even_after_a_restart(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d"])
    session = unmasked_session(fed)

    def ask(survivors: list[str], dropped: list[str]) -> pb.TaskReply:
        request = signed_unmask_request(fed, session, survivors, dropped)
        restarted = SecaggTasks("a", tmp_path / "homes" / "a", fed.identity("a"))
        return restarted.run(pb.TaskRequest(secagg_unmask=request))

    first = ask(["a", "b", "c"], ["d"])
    assert [s.owner for s in first.secagg.unmask.mask_key] == ["d"]
    assert ask(["a", "b", "c"], ["d"]) == first  # a retry of the same request is answered
    with pytest.raises(SecaggError, match="second, different dropped set"):
        ask(["a", "b", "d"], ["c"])


def test_an_unmask_request_naming_strangers_or_few_survivors_is_refused(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c", "d"])
    session = unmasked_session(fed)
    node = fed.nodes["a"]

    def request(survivors: list[str], dropped: list[str]) -> pb.TaskRequest:
        return pb.TaskRequest(
            secagg_unmask=pb.SecaggUnmaskRequest(
                session_id=session.session_id, survivors=survivors, dropped=dropped
            )
        )

    with pytest.raises(SecaggError, match=r"name \['x'\], which did not share secrets"):
        node.run(request(["a", "b", "c", "d", "x"], []))
    with pytest.raises(SecaggError, match="fewer than the threshold"):
        node.run(request(["a", "b"], ["c", "d"]))


def test_a_node_masks_each_payload_once_and_never_after_unmasking(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    session = fed.session()
    remaining = session.setup(fed, TIMEOUT)
    masker = fed.nodes["a"].participant.masker(session.train_context("a"))
    masker.mask(WEIGHT_LABEL, np.zeros(3))
    with pytest.raises(SecaggError, match="already masked"):
        masker.mask(WEIGHT_LABEL, np.ones(3))
    for node in remaining:
        if node != "a":
            session.add_masked(node, *fed.train(node, session.train_context(node)))
    session.unmask(fed, ["b", "c"], TIMEOUT)
    with pytest.raises(SecaggError, match="already answered an unmask"):
        fed.nodes["b"].participant.masker(session.train_context("b"))


def test_a_share_relayed_to_another_node_does_not_open(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    session = fed.session()
    session.setup(fed, TIMEOUT)
    # The researcher hands b the share c sealed for a, in place of the one c sealed for b.
    for_a = {s.sender: s for s in session.train_context("a").shares}
    context = session.train_context("b")
    for share in context.shares:
        if share.sender == "c":
            share.ciphertext = for_a["c"].ciphertext
    with pytest.raises(SecaggError, match=r"from node 'c' to 'b'.*does not authenticate"):
        fed.nodes["b"].participant.masker(context)


def test_a_refused_masked_reply_leaves_no_trace(tmp_path: Path) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    session = fed.session()
    remaining = session.setup(fed, TIMEOUT)
    uploads = {n: fed.train(n, session.train_context(n)) for n in remaining}
    session.add_masked("a", *uploads["a"])
    broken = {section: dict(arrays) for section, arrays in uploads["b"][0].items()}
    broken[MASKED_PARAMS]["bias"] = broken[MASKED_PARAMS]["bias"][:-1]
    with pytest.raises(Exception, match="site-b"):
        session.add_masked("b", broken, uploads["b"][1])
    session.add_masked("b", *uploads["b"])  # the intact reply is still accepted afterwards
    session.add_masked("c", *uploads["c"])
    assert_matches_clear(fed, session.unmask(fed, remaining, TIMEOUT), remaining)


def test_session_state_is_owner_only_and_round_keys_are_forgotten_after_unmasking(
    tmp_path: Path,
) -> None:
    fed = Federation(tmp_path, ["a", "b", "c"])
    session = unmasked_session(fed)
    store = fed.nodes["a"].participant.store
    path = next(store.directory.glob("*.json"))
    assert path.stat().st_mode & 0o777 == 0o600
    assert store.require(session.session_id)["secrets"]["seed"]
    session.unmask(fed, ["a", "b", "c"], TIMEOUT)
    # A later theft of this home yields no round key, and only one share of each peer's.
    assert store.require(session.session_id)["secrets"] == {"cipher": "", "mask": "", "seed": ""}
