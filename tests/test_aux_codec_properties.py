"""Property-based tests of the aux-var codec (common/optimizers/aux_codec.py) against any
message a peer can send: decoding yields AuxVars or one of our own errors, and allocates
no more than the bytes the message and the payload already hold."""

from __future__ import annotations

import tracemalloc

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from common.errors import FedloomError
from common.optimizers.aux_codec import decode_aux_vars, encode_aux_vars
from common.optimizers.declearn import ScaffoldAuxVar
from common.proto import fedloom_pb2 as pb

#: Bookkeeping allowed beyond the bytes already held by the message and the arrays.
SLACK = 256 * 1024

#: Payload arrays the messages may point at: numeric, and a few that must be refused.
ARRAYS = {
    "aux/0": np.arange(6, dtype=np.float32),
    "aux/1": np.ones((2, 3), dtype=np.float64),
    "aux/2": np.array(["x"], dtype="<U1"),
    "aux/3": np.zeros(4, dtype=np.uint16),
    "aux/4": np.zeros(2, dtype=np.float16),
}
NAMES = st.sampled_from([*ARRAYS, "missing", ""])
TYPES = st.sampled_from(["ScaffoldAuxVar", "FedProxAuxVar", "AuxVar", "NoSuchAuxVar", "", "int"])
FIELD_NAMES = st.sampled_from(["delta", "clients", "state", "x", ""]) | st.text(max_size=3)
DTYPES = st.sampled_from(["<f4", "<f8", "|u1", ">f4", "<c8", "|O", "<U2", "V4", ",", "f16"])

TENSORS = st.builds(
    pb.Tensor,
    dtype=DTYPES | st.text(max_size=3),
    shape=st.lists(st.integers(-1, 2**33) | st.integers(0, 4), max_size=3),
    data=st.binary(max_size=64),
)
VECTORS = st.builds(
    pb.VectorRef,
    kind=st.sampled_from(["numpy", "torch", "jax", ""]),
    keys=st.lists(st.sampled_from(["w", "b", "c"]), max_size=3),
    arrays=st.lists(NAMES, max_size=3),
)
VALUES = st.one_of(
    st.builds(pb.AuxValue, number=st.floats(allow_nan=True)),
    st.builds(pb.AuxValue, integer=st.integers(-(2**63), 2**63 - 1)),
    st.builds(pb.AuxValue, text=st.text(max_size=5)),
    st.builds(pb.AuxValue, boolean=st.booleans()),
    st.builds(pb.AuxValue, none=st.just(True)),
    st.builds(pb.AuxValue, array=NAMES),
    st.builds(pb.AuxValue, tensor=TENSORS),
    st.builds(pb.AuxValue, vector=VECTORS),
    st.builds(
        pb.AuxValue, string_set=st.builds(pb.StringList, items=st.lists(st.text(max_size=3)))
    ),
    st.builds(
        pb.AuxValue, string_list=st.builds(pb.StringList, items=st.lists(st.text(max_size=3)))
    ),
    st.just(pb.AuxValue()),
)
MESSAGES = st.builds(
    pb.AuxVars,
    items=st.lists(
        st.builds(
            pb.AuxVar,
            module=st.sampled_from(["scaffold", "fedprox", ""]),
            type=TYPES,
            fields=st.lists(st.builds(pb.AuxVarField, name=FIELD_NAMES, value=VALUES), max_size=4),
        ),
        max_size=3,
    ),
)


def _tensor_message(dtype: str, shape: list[int], data: bytes) -> pb.AuxVars:
    value = pb.AuxValue(tensor=pb.Tensor(dtype=dtype, shape=shape, data=data))
    field = pb.AuxVarField(name="delta", value=value)
    return pb.AuxVars(items=[pb.AuxVar(module="scaffold", type="ScaffoldAuxVar", fields=[field])])


@settings(max_examples=300, deadline=None)
@given(message=MESSAGES, kind=st.sampled_from(["numpy", "torch"]))
# Found while writing these tests: numpy raises SyntaxError for the dtype ",", and an
# element count past int64 wrapped to 0, matching an empty buffer.
@example(message=_tensor_message(",", [1], b"x"), kind="numpy")
@example(message=_tensor_message("<f4", [2**32, 2**32], b""), kind="numpy")
@example(message=_tensor_message("<f4", [2**62, 4], b""), kind="torch")
def test_any_aux_var_message_decodes_or_raises_our_error_without_allocating_beyond_it(
    message, kind
):
    wire = pb.AuxVars.FromString(message.SerializeToString())
    tracemalloc.start()
    try:
        try:
            decoded = decode_aux_vars(wire, ARRAYS, kind)
        except FedloomError:
            decoded = None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()

    held = wire.ByteSize() + sum(a.nbytes for a in ARRAYS.values())
    assert peak <= held + SLACK, peak
    if decoded is not None:
        assert set(decoded) == {item.module for item in wire.items}


@settings(max_examples=100, deadline=None)
@given(
    delta=st.lists(st.floats(allow_nan=False, width=32), min_size=1, max_size=20),
    clients=st.sets(st.text(min_size=1, max_size=6), max_size=4),
)
def test_a_scaffold_aux_var_round_trips_through_the_wire(delta, clients):
    from declearn.model.sklearn import NumpyVector

    aux = {
        "scaffold": ScaffoldAuxVar(
            delta=NumpyVector({"w": np.array(delta, dtype=np.float32)}), clients=clients
        )
    }
    message, arrays = encode_aux_vars(aux)

    decoded = decode_aux_vars(pb.AuxVars.FromString(message.SerializeToString()), arrays, "numpy")

    assert decoded["scaffold"].clients == clients
    np.testing.assert_array_equal(
        decoded["scaffold"].delta.coefs["w"], np.array(delta, dtype=np.float32)
    )
