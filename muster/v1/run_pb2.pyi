import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from muster.v1 import codespec_pb2 as _codespec_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_PENDING: _ClassVar[RunStatus]
    RUN_STATUS_RUNNING: _ClassVar[RunStatus]
    RUN_STATUS_SUCCEEDED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]
    RUN_STATUS_CANCELED: _ClassVar[RunStatus]

class ReplicaRole(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_ROLE_UNSPECIFIED: _ClassVar[ReplicaRole]
    REPLICA_ROLE_JOB: _ClassVar[ReplicaRole]
    REPLICA_ROLE_WORKER: _ClassVar[ReplicaRole]

class ContainerState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTAINER_STATE_UNSPECIFIED: _ClassVar[ContainerState]
    CONTAINER_STATE_PENDING: _ClassVar[ContainerState]
    CONTAINER_STATE_CREATING: _ClassVar[ContainerState]
    CONTAINER_STATE_RUNNING: _ClassVar[ContainerState]
    CONTAINER_STATE_EXITED: _ClassVar[ContainerState]
    CONTAINER_STATE_FAILED: _ClassVar[ContainerState]
    CONTAINER_STATE_REMOVED: _ClassVar[ContainerState]
    CONTAINER_STATE_PULLING: _ClassVar[ContainerState]

class RestartPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESTART_POLICY_UNSPECIFIED: _ClassVar[RestartPolicy]
    RESTART_POLICY_NEVER: _ClassVar[RestartPolicy]
    RESTART_POLICY_ALWAYS: _ClassVar[RestartPolicy]

class LogStream(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_STREAM_UNSPECIFIED: _ClassVar[LogStream]
    LOG_STREAM_STDOUT: _ClassVar[LogStream]
    LOG_STREAM_STDERR: _ClassVar[LogStream]

class PullPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PULL_POLICY_UNSPECIFIED: _ClassVar[PullPolicy]
    PULL_POLICY_MISSING: _ClassVar[PullPolicy]
    PULL_POLICY_ALWAYS: _ClassVar[PullPolicy]
    PULL_POLICY_NEVER: _ClassVar[PullPolicy]
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_PENDING: RunStatus
RUN_STATUS_RUNNING: RunStatus
RUN_STATUS_SUCCEEDED: RunStatus
RUN_STATUS_FAILED: RunStatus
RUN_STATUS_CANCELED: RunStatus
REPLICA_ROLE_UNSPECIFIED: ReplicaRole
REPLICA_ROLE_JOB: ReplicaRole
REPLICA_ROLE_WORKER: ReplicaRole
CONTAINER_STATE_UNSPECIFIED: ContainerState
CONTAINER_STATE_PENDING: ContainerState
CONTAINER_STATE_CREATING: ContainerState
CONTAINER_STATE_RUNNING: ContainerState
CONTAINER_STATE_EXITED: ContainerState
CONTAINER_STATE_FAILED: ContainerState
CONTAINER_STATE_REMOVED: ContainerState
CONTAINER_STATE_PULLING: ContainerState
RESTART_POLICY_UNSPECIFIED: RestartPolicy
RESTART_POLICY_NEVER: RestartPolicy
RESTART_POLICY_ALWAYS: RestartPolicy
LOG_STREAM_UNSPECIFIED: LogStream
LOG_STREAM_STDOUT: LogStream
LOG_STREAM_STDERR: LogStream
PULL_POLICY_UNSPECIFIED: PullPolicy
PULL_POLICY_MISSING: PullPolicy
PULL_POLICY_ALWAYS: PullPolicy
PULL_POLICY_NEVER: PullPolicy

class CodespecRef(_message.Message):
    __slots__ = ("named", "inline")
    NAMED_FIELD_NUMBER: _ClassVar[int]
    INLINE_FIELD_NUMBER: _ClassVar[int]
    named: str
    inline: _codespec_pb2.Codespec
    def __init__(self, named: _Optional[str] = ..., inline: _Optional[_Union[_codespec_pb2.Codespec, _Mapping]] = ...) -> None: ...

class RunCodeTarget(_message.Message):
    __slots__ = ("codespec", "node_pool", "replicas", "resolved_codespec", "tags", "buffer_ttl", "restart_policy")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CODESPEC_FIELD_NUMBER: _ClassVar[int]
    NODE_POOL_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_CODESPEC_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    BUFFER_TTL_FIELD_NUMBER: _ClassVar[int]
    RESTART_POLICY_FIELD_NUMBER: _ClassVar[int]
    codespec: CodespecRef
    node_pool: str
    replicas: int
    resolved_codespec: _codespec_pb2.Codespec
    tags: _containers.ScalarMap[str, str]
    buffer_ttl: str
    restart_policy: RestartPolicy
    def __init__(self, codespec: _Optional[_Union[CodespecRef, _Mapping]] = ..., node_pool: _Optional[str] = ..., replicas: _Optional[int] = ..., resolved_codespec: _Optional[_Union[_codespec_pb2.Codespec, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ..., buffer_ttl: _Optional[str] = ..., restart_policy: _Optional[_Union[RestartPolicy, str]] = ...) -> None: ...

class Replica(_message.Message):
    __slots__ = ("role", "index", "node_name", "state", "ready", "exit_code", "hostname", "container_name", "endpoint_addresses", "message", "gpu_devices", "image_digest", "pull_bytes_done", "pull_bytes_total")
    class EndpointAddressesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ROLE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    GPU_DEVICES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PULL_BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    PULL_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    role: ReplicaRole
    index: int
    node_name: str
    state: ContainerState
    ready: bool
    exit_code: int
    hostname: str
    container_name: str
    endpoint_addresses: _containers.ScalarMap[str, str]
    message: str
    gpu_devices: _containers.RepeatedScalarFieldContainer[str]
    image_digest: str
    pull_bytes_done: int
    pull_bytes_total: int
    def __init__(self, role: _Optional[_Union[ReplicaRole, str]] = ..., index: _Optional[int] = ..., node_name: _Optional[str] = ..., state: _Optional[_Union[ContainerState, str]] = ..., ready: _Optional[bool] = ..., exit_code: _Optional[int] = ..., hostname: _Optional[str] = ..., container_name: _Optional[str] = ..., endpoint_addresses: _Optional[_Mapping[str, str]] = ..., message: _Optional[str] = ..., gpu_devices: _Optional[_Iterable[str]] = ..., image_digest: _Optional[str] = ..., pull_bytes_done: _Optional[int] = ..., pull_bytes_total: _Optional[int] = ...) -> None: ...

class RunEvent(_message.Message):
    __slots__ = ("time", "message")
    TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("id", "job", "worker", "timeout_seconds", "tags", "status", "status_reason", "running_count", "created_at", "started_at", "finished_at", "replicas", "events", "pull_policy", "buffers", "cluster", "buffer_access_ttl", "etag")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class BuffersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    RUNNING_COUNT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    PULL_POLICY_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    BUFFER_ACCESS_TTL_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: int
    job: RunCodeTarget
    worker: RunCodeTarget
    timeout_seconds: int
    tags: _containers.ScalarMap[str, str]
    status: RunStatus
    status_reason: str
    running_count: int
    created_at: _timestamp_pb2.Timestamp
    started_at: _timestamp_pb2.Timestamp
    finished_at: _timestamp_pb2.Timestamp
    replicas: _containers.RepeatedCompositeFieldContainer[Replica]
    events: _containers.RepeatedCompositeFieldContainer[RunEvent]
    pull_policy: PullPolicy
    buffers: _containers.ScalarMap[str, str]
    cluster: str
    buffer_access_ttl: str
    etag: str
    def __init__(self, id: _Optional[int] = ..., job: _Optional[_Union[RunCodeTarget, _Mapping]] = ..., worker: _Optional[_Union[RunCodeTarget, _Mapping]] = ..., timeout_seconds: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ..., status: _Optional[_Union[RunStatus, str]] = ..., status_reason: _Optional[str] = ..., running_count: _Optional[int] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finished_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., replicas: _Optional[_Iterable[_Union[Replica, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[RunEvent, _Mapping]]] = ..., pull_policy: _Optional[_Union[PullPolicy, str]] = ..., buffers: _Optional[_Mapping[str, str]] = ..., cluster: _Optional[str] = ..., buffer_access_ttl: _Optional[str] = ..., etag: _Optional[str] = ...) -> None: ...

class CreateRunRequest(_message.Message):
    __slots__ = ("run", "request_id")
    RUN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    run: Run
    request_id: str
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "statuses", "tags", "since")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    statuses: _containers.RepeatedScalarFieldContainer[RunStatus]
    tags: _containers.ScalarMap[str, str]
    since: _timestamp_pb2.Timestamp
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., statuses: _Optional[_Iterable[_Union[RunStatus, str]]] = ..., tags: _Optional[_Mapping[str, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CountRunsRequest(_message.Message):
    __slots__ = ("tags", "since")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TAGS_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.ScalarMap[str, str]
    since: _timestamp_pb2.Timestamp
    def __init__(self, tags: _Optional[_Mapping[str, str]] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RunStatusCount(_message.Message):
    __slots__ = ("status", "count")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    count: int
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., count: _Optional[int] = ...) -> None: ...

class CountRunsResponse(_message.Message):
    __slots__ = ("counts", "total")
    COUNTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    counts: _containers.RepeatedCompositeFieldContainer[RunStatusCount]
    total: int
    def __init__(self, counts: _Optional[_Iterable[_Union[RunStatusCount, _Mapping]]] = ..., total: _Optional[int] = ...) -> None: ...

class WatchRunRequest(_message.Message):
    __slots__ = ("run_id", "changes_only")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGES_ONLY_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    changes_only: bool
    def __init__(self, run_id: _Optional[int] = ..., changes_only: _Optional[bool] = ...) -> None: ...

class WatchRunResponse(_message.Message):
    __slots__ = ("run", "partial")
    RUN_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    run: Run
    partial: bool
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., partial: _Optional[bool] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("time", "role", "replica", "stream", "text", "source", "sequence", "partial")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    role: ReplicaRole
    replica: int
    stream: LogStream
    text: str
    source: str
    sequence: int
    partial: bool
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., role: _Optional[_Union[ReplicaRole, str]] = ..., replica: _Optional[int] = ..., stream: _Optional[_Union[LogStream, str]] = ..., text: _Optional[str] = ..., source: _Optional[str] = ..., sequence: _Optional[int] = ..., partial: _Optional[bool] = ...) -> None: ...

class GetRunLogsRequest(_message.Message):
    __slots__ = ("run_id", "follow", "since", "tail", "resume_after")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    follow: bool
    since: _timestamp_pb2.Timestamp
    tail: int
    resume_after: int
    def __init__(self, run_id: _Optional[int] = ..., follow: _Optional[bool] = ..., since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tail: _Optional[int] = ..., resume_after: _Optional[int] = ...) -> None: ...

class GetRunLogsResponse(_message.Message):
    __slots__ = ("lines", "resume_after")
    LINES_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    resume_after: int
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., resume_after: _Optional[int] = ...) -> None: ...

class CancelRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class CancelRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class UpdateRunTagsRequest(_message.Message):
    __slots__ = ("run_id", "tags", "clear_tags", "etag")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_TAGS_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    tags: _containers.ScalarMap[str, str]
    clear_tags: bool
    etag: str
    def __init__(self, run_id: _Optional[int] = ..., tags: _Optional[_Mapping[str, str]] = ..., clear_tags: _Optional[bool] = ..., etag: _Optional[str] = ...) -> None: ...

class UpdateRunTagsResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...
