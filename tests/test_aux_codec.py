"""Aux vars to protobuf + payload arrays and back: Scaffold both ways, SecAgg splits, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from declearn.model.sklearn import NumpyVector
from declearn.model.torch import TorchVector

from common.errors import ConfigurationError, PayloadError
from common.optimizers.aux_codec import (
    INLINE_ARRAY_MAX_BYTES,
    build_aux_var,
    decode_aux_fields,
    decode_aux_vars,
    encode_aux_fields,
    encode_aux_vars,
)
from common.optimizers.declearn import AuxVar, ScaffoldAuxVar
from common.proto import fedloom_pb2 as pb

BIG = 50_000  # coefficients: far above anything a control message should carry


def _torch_delta() -> TorchVector:
    gen = torch.Generator().manual_seed(0)
    return TorchVector(
        {"fc.weight": torch.randn(BIG, generator=gen), "fc.bias": torch.randn(3, generator=gen)}
    )


def _wire(message: pb.AuxVars) -> pb.AuxVars:
    return pb.AuxVars.FromString(message.SerializeToString())


def _assert_vectors_equal(actual, expected) -> None:
    assert type(actual) is not None and list(actual.coefs) == list(expected.coefs)
    for key in expected.coefs:
        want = expected.coefs[key]
        want = want.numpy() if isinstance(want, torch.Tensor) else want
        got = actual.coefs[key]
        got = got.numpy() if isinstance(got, torch.Tensor) else got
        np.testing.assert_array_equal(got, want)
        assert got.dtype == want.dtype


def test_scaffold_client_aux_var_round_trips_from_torch_to_numpy() -> None:
    aux = {"scaffold": ScaffoldAuxVar(delta=_torch_delta(), clients={"node-b", "node-a"})}
    message, arrays = encode_aux_vars(aux, prefix="aux")
    assert message.ByteSize() < 1_000
    assert sum(a.nbytes for a in arrays.values()) >= BIG * 4
    assert all(name.startswith("aux/") for name in arrays)
    decoded = decode_aux_vars(_wire(message), arrays, vector_kind="numpy")
    assert set(decoded) == {"scaffold"}
    value = decoded["scaffold"]
    assert isinstance(value, ScaffoldAuxVar) and value.state is None
    assert isinstance(value.delta, NumpyVector)
    _assert_vectors_equal(value.delta, aux["scaffold"].delta)
    assert value.clients == {"node-a", "node-b"}


def test_scaffold_server_aux_var_round_trips_from_numpy_to_torch() -> None:
    state = NumpyVector({"w": np.linspace(0, 1, 7, dtype=np.float32)})
    message, arrays = encode_aux_vars({"scaffold": ScaffoldAuxVar(state=state)})
    decoded = decode_aux_vars(_wire(message), arrays, vector_kind="torch")["scaffold"]
    assert isinstance(decoded.state, TorchVector)
    _assert_vectors_equal(decoded.state, state)
    assert decoded.delta is None and decoded.clients == set()


def test_scaffold_initial_server_state_travels_as_a_number() -> None:
    message, arrays = encode_aux_vars({"scaffold": ScaffoldAuxVar(state=0.0)})
    assert arrays == {}
    decoded = decode_aux_vars(_wire(message), arrays, vector_kind="torch")["scaffold"]
    assert decoded.state == 0.0 and decoded.delta is None


def test_secagg_split_of_scaffold_aux_var_round_trips_and_rebuilds() -> None:
    original = ScaffoldAuxVar(delta=NumpyVector({"w": np.arange(5.0)}), clients={"c1"})
    secure, clear = original.prepare_for_secagg()
    secure_fields, secure_arrays = encode_aux_fields(secure, prefix="secagg")
    clear_fields, clear_arrays = encode_aux_fields(clear or {}, prefix="clear")
    arrays = {**secure_arrays, **clear_arrays}
    wire = [pb.AuxVarField.FromString(f.SerializeToString()) for f in secure_fields + clear_fields]
    fields = decode_aux_fields(wire, arrays, vector_kind="numpy")
    rebuilt = build_aux_var("ScaffoldAuxVar", fields)
    assert rebuilt.clients == {"c1"}
    _assert_vectors_equal(rebuilt.delta, original.delta)
    # the rebuilt value aggregates like the original does
    total = rebuilt + original
    np.testing.assert_array_equal(total.delta.coefs["w"], 2 * np.arange(5.0))


@dataclasses.dataclass
class CodecProbeAuxVar(AuxVar):
    """Test-only AuxVar covering every field kind the codec supports."""

    number: float = 0.0
    integer: int = 0
    text: str = ""
    flag: bool = False
    nothing: None = None
    names: list[str] = dataclasses.field(default_factory=list)
    ids: set[str] = dataclasses.field(default_factory=set)
    small: np.ndarray | None = None
    large: np.ndarray | None = None
    vector: NumpyVector | None = None


def test_every_supported_field_kind_round_trips() -> None:
    probe = CodecProbeAuxVar(
        number=1.5,
        integer=-(2**40),
        text="hé",
        flag=True,
        names=["b", "a"],
        ids={"x"},
        small=np.arange(6, dtype=">i2").reshape(2, 3),
        large=np.arange(INLINE_ARRAY_MAX_BYTES // 4 + 1, dtype=np.float32).reshape(1, -1),
        vector=NumpyVector({"k": np.zeros((2, 2), dtype=np.float64)}),
    )
    message, arrays = encode_aux_vars({"probe": probe}, prefix="p")
    kinds = {f.name: f.value.WhichOneof("kind") for f in message.items[0].fields}
    assert kinds["small"] == "tensor" and kinds["large"] == "array" and kinds["nothing"] == "none"
    decoded = decode_aux_vars(_wire(message), arrays, vector_kind="numpy")["probe"]
    assert (decoded.number, decoded.integer, decoded.text, decoded.flag) == (
        1.5,
        -(2**40),
        "hé",
        True,
    )
    assert decoded.nothing is None and decoded.names == ["b", "a"] and decoded.ids == {"x"}
    np.testing.assert_array_equal(decoded.small, probe.small)
    assert decoded.small.dtype == np.int16
    np.testing.assert_array_equal(decoded.large, probe.large)
    _assert_vectors_equal(decoded.vector, probe.vector)


def test_decoded_arrays_are_independent_of_the_payload_buffer() -> None:
    message, arrays = encode_aux_vars(
        {"scaffold": ScaffoldAuxVar(delta=NumpyVector({"w": np.zeros(3)}))}
    )
    readonly = {}
    for name, array in arrays.items():
        view = array.copy()
        view.setflags(write=False)
        readonly[name] = view
    decoded = decode_aux_vars(message, readonly, vector_kind="torch")["scaffold"]
    decoded.delta.coefs["w"].add_(1.0)
    assert all(not a.any() for a in readonly.values())


# ---------------------------------------------------------------------------- refusals


def _scaffold_message() -> tuple[pb.AuxVars, dict[str, np.ndarray]]:
    aux = {"scaffold": ScaffoldAuxVar(delta=NumpyVector({"w": np.ones(3)}), clients={"c"})}
    return encode_aux_vars(aux)


def _field(message: pb.AuxVars, name: str) -> pb.AuxVarField:
    return next(f for f in message.items[0].fields if f.name == name)


def test_unknown_aux_var_type_is_refused() -> None:
    message, arrays = _scaffold_message()
    message.items[0].type = "FedNovaAuxVar"
    with pytest.raises(PayloadError, match="unknown aux-var type 'FedNovaAuxVar'"):
        decode_aux_vars(message, arrays, vector_kind="numpy")


def test_unknown_field_is_refused() -> None:
    message, arrays = _scaffold_message()
    message.items[0].fields.add(name="momentum", value=pb.AuxValue(number=1.0))
    with pytest.raises(PayloadError, match="no field"):
        decode_aux_vars(message, arrays, vector_kind="numpy")


def test_missing_payload_array_is_refused() -> None:
    message, _ = _scaffold_message()
    with pytest.raises(PayloadError, match="does not contain"):
        decode_aux_vars(message, {}, vector_kind="numpy")


def test_field_without_value_is_refused() -> None:
    message, arrays = _scaffold_message()
    _field(message, "clients").ClearField("value")
    with pytest.raises(PayloadError, match="carries no value"):
        decode_aux_vars(message, arrays, vector_kind="numpy")


def test_duplicate_module_and_field_are_refused() -> None:
    message, arrays = _scaffold_message()
    message.items.append(message.items[0])
    with pytest.raises(PayloadError, match="twice"):
        decode_aux_vars(message, arrays, vector_kind="numpy")
    message, arrays = _scaffold_message()
    message.items[0].fields.append(_field(message, "clients"))
    with pytest.raises(PayloadError, match="twice"):
        decode_aux_vars(message, arrays, vector_kind="numpy")


def test_vector_with_mismatched_keys_and_arrays_is_refused() -> None:
    message, arrays = _scaffold_message()
    _field(message, "delta").value.vector.keys.append("extra")
    with pytest.raises(PayloadError, match="1 arrays"):
        decode_aux_vars(message, arrays, vector_kind="numpy")


def test_inline_tensor_with_wrong_byte_count_is_refused() -> None:
    message = pb.AuxVars()
    item = message.items.add(module="probe", type="CodecProbeAuxVar")
    item.fields.add(
        name="small", value=pb.AuxValue(tensor=pb.Tensor(dtype="<f4", shape=[3], data=b"\0" * 8))
    )
    with pytest.raises(PayloadError, match="expected 12"):
        decode_aux_vars(message, {}, vector_kind="numpy")
    item.fields[0].value.tensor.dtype = "|O"
    with pytest.raises(PayloadError, match="non-numeric"):
        decode_aux_vars(message, {}, vector_kind="numpy")


def test_non_numeric_payload_array_is_refused() -> None:
    message, arrays = _scaffold_message()
    arrays = {name: np.array(["x"] * 3, dtype=object) for name in arrays}
    with pytest.raises(PayloadError, match="non-numeric"):
        decode_aux_vars(message, arrays, vector_kind="numpy")


def test_inconsistent_scaffold_content_is_refused() -> None:
    message, arrays = _scaffold_message()
    _field(message, "state").value.number = 0.0
    with pytest.raises(PayloadError, match="invalid ScaffoldAuxVar"):
        decode_aux_vars(message, arrays, vector_kind="numpy")


def test_unsupported_vector_kind_and_values_are_refused() -> None:
    message, arrays = _scaffold_message()
    with pytest.raises(ConfigurationError, match="vector kind"):
        decode_aux_vars(message, arrays, vector_kind="jax")  # type: ignore[arg-type]
    with pytest.raises(PayloadError, match="cannot encode a dict"):
        encode_aux_fields({"weird": {"a": 1}}, prefix="x")
    with pytest.raises(PayloadError, match="64 bits"):
        encode_aux_fields({"huge": 2**70}, prefix="x")
