from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ArraySpec(_message.Message):
    __slots__ = ("name", "dtype", "shape", "offset", "nbytes")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    NBYTES_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    offset: int
    nbytes: int
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., offset: _Optional[int] = ..., nbytes: _Optional[int] = ...) -> None: ...

class PayloadManifest(_message.Message):
    __slots__ = ("arrays", "total_bytes")
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    arrays: _containers.RepeatedCompositeFieldContainer[ArraySpec]
    total_bytes: int
    def __init__(self, arrays: _Optional[_Iterable[_Union[ArraySpec, _Mapping]]] = ..., total_bytes: _Optional[int] = ...) -> None: ...

class PayloadChunk(_message.Message):
    __slots__ = ("protocol_version", "payload_id", "manifest", "offset", "data")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    payload_id: str
    manifest: PayloadManifest
    offset: int
    data: bytes
    def __init__(self, protocol_version: _Optional[int] = ..., payload_id: _Optional[str] = ..., manifest: _Optional[_Union[PayloadManifest, _Mapping]] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ...) -> None: ...

class DownloadRequest(_message.Message):
    __slots__ = ("protocol_version", "node_id", "payload_id")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    node_id: str
    payload_id: str
    def __init__(self, protocol_version: _Optional[int] = ..., node_id: _Optional[str] = ..., payload_id: _Optional[str] = ...) -> None: ...

class UploadAck(_message.Message):
    __slots__ = ("protocol_version", "payload_id", "received_bytes")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_BYTES_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    payload_id: str
    received_bytes: int
    def __init__(self, protocol_version: _Optional[int] = ..., payload_id: _Optional[str] = ..., received_bytes: _Optional[int] = ...) -> None: ...

class Tensor(_message.Message):
    __slots__ = ("dtype", "shape", "data")
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    data: bytes
    def __init__(self, dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., data: _Optional[bytes] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, items: _Optional[_Iterable[str]] = ...) -> None: ...

class VectorRef(_message.Message):
    __slots__ = ("kind", "keys", "arrays")
    KIND_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    ARRAYS_FIELD_NUMBER: _ClassVar[int]
    kind: str
    keys: _containers.RepeatedScalarFieldContainer[str]
    arrays: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, kind: _Optional[str] = ..., keys: _Optional[_Iterable[str]] = ..., arrays: _Optional[_Iterable[str]] = ...) -> None: ...

class AuxValue(_message.Message):
    __slots__ = ("number", "integer", "text", "boolean", "string_list", "string_set", "array", "vector", "none", "tensor")
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    STRING_LIST_FIELD_NUMBER: _ClassVar[int]
    STRING_SET_FIELD_NUMBER: _ClassVar[int]
    ARRAY_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    number: float
    integer: int
    text: str
    boolean: bool
    string_list: StringList
    string_set: StringList
    array: str
    vector: VectorRef
    none: bool
    tensor: Tensor
    def __init__(self, number: _Optional[float] = ..., integer: _Optional[int] = ..., text: _Optional[str] = ..., boolean: _Optional[bool] = ..., string_list: _Optional[_Union[StringList, _Mapping]] = ..., string_set: _Optional[_Union[StringList, _Mapping]] = ..., array: _Optional[str] = ..., vector: _Optional[_Union[VectorRef, _Mapping]] = ..., none: _Optional[bool] = ..., tensor: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class AuxVarField(_message.Message):
    __slots__ = ("name", "value")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: AuxValue
    def __init__(self, name: _Optional[str] = ..., value: _Optional[_Union[AuxValue, _Mapping]] = ...) -> None: ...

class AuxVar(_message.Message):
    __slots__ = ("module", "type", "fields")
    MODULE_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    module: str
    type: str
    fields: _containers.RepeatedCompositeFieldContainer[AuxVarField]
    def __init__(self, module: _Optional[str] = ..., type: _Optional[str] = ..., fields: _Optional[_Iterable[_Union[AuxVarField, _Mapping]]] = ...) -> None: ...

class AuxVars(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[AuxVar]
    def __init__(self, items: _Optional[_Iterable[_Union[AuxVar, _Mapping]]] = ...) -> None: ...

class SecaggPeer(_message.Message):
    __slots__ = ("node_id", "public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    public_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., public_key: _Optional[bytes] = ...) -> None: ...

class SecaggContext(_message.Message):
    __slots__ = ("enabled", "peers", "clip", "fraction_bits", "protect_parameters", "session_id")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    FRACTION_BITS_FIELD_NUMBER: _ClassVar[int]
    PROTECT_PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    peers: _containers.RepeatedCompositeFieldContainer[SecaggPeer]
    clip: float
    fraction_bits: int
    protect_parameters: bool
    session_id: str
    def __init__(self, enabled: _Optional[bool] = ..., peers: _Optional[_Iterable[_Union[SecaggPeer, _Mapping]]] = ..., clip: _Optional[float] = ..., fraction_bits: _Optional[int] = ..., protect_parameters: _Optional[bool] = ..., session_id: _Optional[str] = ...) -> None: ...

class DatasetInfo(_message.Message):
    __slots__ = ("name", "tags", "n_samples", "shape", "data_type", "columns", "target")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DATA_TYPE_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    name: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    n_samples: int
    shape: _containers.RepeatedScalarFieldContainer[int]
    data_type: str
    columns: _containers.RepeatedScalarFieldContainer[str]
    target: str
    def __init__(self, name: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ..., n_samples: _Optional[int] = ..., shape: _Optional[_Iterable[int]] = ..., data_type: _Optional[str] = ..., columns: _Optional[_Iterable[str]] = ..., target: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("node_id", "node_name", "datasets", "software_version", "secagg_public_key")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    SECAGG_PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    node_name: str
    datasets: _containers.RepeatedCompositeFieldContainer[DatasetInfo]
    software_version: str
    secagg_public_key: bytes
    def __init__(self, node_id: _Optional[str] = ..., node_name: _Optional[str] = ..., datasets: _Optional[_Iterable[_Union[DatasetInfo, _Mapping]]] = ..., software_version: _Optional[str] = ..., secagg_public_key: _Optional[bytes] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time", "state", "task_id")
    TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    time: float
    state: str
    task_id: str
    def __init__(self, time: _Optional[float] = ..., state: _Optional[str] = ..., task_id: _Optional[str] = ...) -> None: ...

class TrainingPlanSource(_message.Message):
    __slots__ = ("class_name", "sha256", "source")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    sha256: str
    source: str
    def __init__(self, class_name: _Optional[str] = ..., sha256: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("plan", "params_payload_id", "aux_vars", "training_args_json", "model_args_json", "dataset_name", "secagg")
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PARAMS_PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    AUX_VARS_FIELD_NUMBER: _ClassVar[int]
    TRAINING_ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    MODEL_ARGS_JSON_FIELD_NUMBER: _ClassVar[int]
    DATASET_NAME_FIELD_NUMBER: _ClassVar[int]
    SECAGG_FIELD_NUMBER: _ClassVar[int]
    plan: TrainingPlanSource
    params_payload_id: str
    aux_vars: AuxVars
    training_args_json: str
    model_args_json: str
    dataset_name: str
    secagg: SecaggContext
    def __init__(self, plan: _Optional[_Union[TrainingPlanSource, _Mapping]] = ..., params_payload_id: _Optional[str] = ..., aux_vars: _Optional[_Union[AuxVars, _Mapping]] = ..., training_args_json: _Optional[str] = ..., model_args_json: _Optional[str] = ..., dataset_name: _Optional[str] = ..., secagg: _Optional[_Union[SecaggContext, _Mapping]] = ...) -> None: ...

class SecaggCorrectionRequest(_message.Message):
    __slots__ = ("session_id", "dropped", "payload_names")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_NAMES_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    dropped: _containers.RepeatedScalarFieldContainer[str]
    payload_names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session_id: _Optional[str] = ..., dropped: _Optional[_Iterable[str]] = ..., payload_names: _Optional[_Iterable[str]] = ...) -> None: ...

class TaskRequest(_message.Message):
    __slots__ = ("task_id", "experiment_id", "round", "timeout_seconds", "train", "secagg_correction")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TRAIN_FIELD_NUMBER: _ClassVar[int]
    SECAGG_CORRECTION_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    experiment_id: str
    round: int
    timeout_seconds: float
    train: TrainRequest
    secagg_correction: SecaggCorrectionRequest
    def __init__(self, task_id: _Optional[str] = ..., experiment_id: _Optional[str] = ..., round: _Optional[int] = ..., timeout_seconds: _Optional[float] = ..., train: _Optional[_Union[TrainRequest, _Mapping]] = ..., secagg_correction: _Optional[_Union[SecaggCorrectionRequest, _Mapping]] = ...) -> None: ...

class CancelTask(_message.Message):
    __slots__ = ("task_id", "reason")
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    reason: str
    def __init__(self, task_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class TaskError(_message.Message):
    __slots__ = ("kind", "message", "traceback")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TRACEBACK_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    traceback: str
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ..., traceback: _Optional[str] = ...) -> None: ...

class TaskReply(_message.Message):
    __slots__ = ("task_id", "experiment_id", "round", "ok", "error", "payload_id", "n_samples", "aux_vars", "metrics", "losses", "train_seconds", "n_steps")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_ID_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_ID_FIELD_NUMBER: _ClassVar[int]
    N_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    AUX_VARS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOSSES_FIELD_NUMBER: _ClassVar[int]
    TRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    N_STEPS_FIELD_NUMBER: _ClassVar[int]
    task_id: str
    experiment_id: str
    round: int
    ok: bool
    error: TaskError
    payload_id: str
    n_samples: int
    aux_vars: AuxVars
    metrics: _containers.ScalarMap[str, float]
    losses: _containers.RepeatedScalarFieldContainer[float]
    train_seconds: float
    n_steps: int
    def __init__(self, task_id: _Optional[str] = ..., experiment_id: _Optional[str] = ..., round: _Optional[int] = ..., ok: _Optional[bool] = ..., error: _Optional[_Union[TaskError, _Mapping]] = ..., payload_id: _Optional[str] = ..., n_samples: _Optional[int] = ..., aux_vars: _Optional[_Union[AuxVars, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., losses: _Optional[_Iterable[float]] = ..., train_seconds: _Optional[float] = ..., n_steps: _Optional[int] = ...) -> None: ...

class LogRecord(_message.Message):
    __slots__ = ("level", "message", "task_id", "time")
    LEVEL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    level: str
    message: str
    task_id: str
    time: float
    def __init__(self, level: _Optional[str] = ..., message: _Optional[str] = ..., task_id: _Optional[str] = ..., time: _Optional[float] = ...) -> None: ...

class NodeMessage(_message.Message):
    __slots__ = ("protocol_version", "node_id", "hello", "heartbeat", "reply", "log")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HELLO_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    node_id: str
    hello: Hello
    heartbeat: Heartbeat
    reply: TaskReply
    log: LogRecord
    def __init__(self, protocol_version: _Optional[int] = ..., node_id: _Optional[str] = ..., hello: _Optional[_Union[Hello, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., reply: _Optional[_Union[TaskReply, _Mapping]] = ..., log: _Optional[_Union[LogRecord, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("researcher_id", "heartbeat_interval")
    RESEARCHER_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    researcher_id: str
    heartbeat_interval: float
    def __init__(self, researcher_id: _Optional[str] = ..., heartbeat_interval: _Optional[float] = ...) -> None: ...

class Refusal(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class ResearcherMessage(_message.Message):
    __slots__ = ("protocol_version", "welcome", "refusal", "task", "cancel")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    REFUSAL_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    welcome: Welcome
    refusal: Refusal
    task: TaskRequest
    cancel: CancelTask
    def __init__(self, protocol_version: _Optional[int] = ..., welcome: _Optional[_Union[Welcome, _Mapping]] = ..., refusal: _Optional[_Union[Refusal, _Mapping]] = ..., task: _Optional[_Union[TaskRequest, _Mapping]] = ..., cancel: _Optional[_Union[CancelTask, _Mapping]] = ...) -> None: ...
