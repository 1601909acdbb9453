import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from muster.v1 import node_pb2 as _node_pb2
from muster.v1 import run_pb2 as _run_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ConnectRequest(_message.Message):
    __slots__ = ("register", "heartbeat", "container_status", "log_batch", "image_pulled", "images_listed", "container_statuses")
    REGISTER_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_STATUS_FIELD_NUMBER: _ClassVar[int]
    LOG_BATCH_FIELD_NUMBER: _ClassVar[int]
    IMAGE_PULLED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_LISTED_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_STATUSES_FIELD_NUMBER: _ClassVar[int]
    register: Register
    heartbeat: Heartbeat
    container_status: ContainerStatus
    log_batch: LogBatch
    image_pulled: ImagePulled
    images_listed: ImagesListed
    container_statuses: ContainerStatusBatch
    def __init__(self, register: _Optional[_Union[Register, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., container_status: _Optional[_Union[ContainerStatus, _Mapping]] = ..., log_batch: _Optional[_Union[LogBatch, _Mapping]] = ..., image_pulled: _Optional[_Union[ImagePulled, _Mapping]] = ..., images_listed: _Optional[_Union[ImagesListed, _Mapping]] = ..., container_statuses: _Optional[_Union[ContainerStatusBatch, _Mapping]] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("registered", "start_container", "teardown_run", "pull_image", "list_images", "log_batch_ack", "start_containers", "epoch")
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    START_CONTAINER_FIELD_NUMBER: _ClassVar[int]
    TEARDOWN_RUN_FIELD_NUMBER: _ClassVar[int]
    PULL_IMAGE_FIELD_NUMBER: _ClassVar[int]
    LIST_IMAGES_FIELD_NUMBER: _ClassVar[int]
    LOG_BATCH_ACK_FIELD_NUMBER: _ClassVar[int]
    START_CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    registered: Registered
    start_container: StartContainer
    teardown_run: TeardownRun
    pull_image: PullImage
    list_images: ListImages
    log_batch_ack: LogBatchAck
    start_containers: StartContainerBatch
    epoch: int
    def __init__(self, registered: _Optional[_Union[Registered, _Mapping]] = ..., start_container: _Optional[_Union[StartContainer, _Mapping]] = ..., teardown_run: _Optional[_Union[TeardownRun, _Mapping]] = ..., pull_image: _Optional[_Union[PullImage, _Mapping]] = ..., list_images: _Optional[_Union[ListImages, _Mapping]] = ..., log_batch_ack: _Optional[_Union[LogBatchAck, _Mapping]] = ..., start_containers: _Optional[_Union[StartContainerBatch, _Mapping]] = ..., epoch: _Optional[int] = ...) -> None: ...

class EndpointPort(_message.Message):
    __slots__ = ("name", "port")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    name: str
    port: int
    def __init__(self, name: _Optional[str] = ..., port: _Optional[int] = ...) -> None: ...

class EndpointAddress(_message.Message):
    __slots__ = ("name", "address")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    name: str
    address: str
    def __init__(self, name: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class ContainerStatus(_message.Message):
    __slots__ = ("run_id", "role", "replica", "container_name", "state", "ready", "exit_code", "message", "endpoints", "time", "generation", "host_ip", "image_digest", "pull_bytes_done", "pull_bytes_total", "cluster_id", "buffer_error")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HOST_IP_FIELD_NUMBER: _ClassVar[int]
    IMAGE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    PULL_BYTES_DONE_FIELD_NUMBER: _ClassVar[int]
    PULL_BYTES_TOTAL_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    BUFFER_ERROR_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    role: _run_pb2.ReplicaRole
    replica: int
    container_name: str
    state: _run_pb2.ContainerState
    ready: bool
    exit_code: int
    message: str
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointAddress]
    time: _timestamp_pb2.Timestamp
    generation: int
    host_ip: str
    image_digest: str
    pull_bytes_done: int
    pull_bytes_total: int
    cluster_id: str
    buffer_error: str
    def __init__(self, run_id: _Optional[int] = ..., role: _Optional[_Union[_run_pb2.ReplicaRole, str]] = ..., replica: _Optional[int] = ..., container_name: _Optional[str] = ..., state: _Optional[_Union[_run_pb2.ContainerState, str]] = ..., ready: _Optional[bool] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., endpoints: _Optional[_Iterable[_Union[EndpointAddress, _Mapping]]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., generation: _Optional[int] = ..., host_ip: _Optional[str] = ..., image_digest: _Optional[str] = ..., pull_bytes_done: _Optional[int] = ..., pull_bytes_total: _Optional[int] = ..., cluster_id: _Optional[str] = ..., buffer_error: _Optional[str] = ...) -> None: ...

class Register(_message.Message):
    __slots__ = ("node_name", "pools", "labels", "allocatable", "advertise_address", "agent_version", "network_mode", "network_name", "containers", "instance_id", "gpu_devices", "accepts_start_batches")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ALLOCATABLE_FIELD_NUMBER: _ClassVar[int]
    ADVERTISE_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    NETWORK_MODE_FIELD_NUMBER: _ClassVar[int]
    NETWORK_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    GPU_DEVICES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_START_BATCHES_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    pools: _containers.RepeatedScalarFieldContainer[str]
    labels: _containers.ScalarMap[str, str]
    allocatable: _node_pb2.Capacity
    advertise_address: str
    agent_version: str
    network_mode: _node_pb2.NetworkMode
    network_name: str
    containers: _containers.RepeatedCompositeFieldContainer[ContainerStatus]
    instance_id: str
    gpu_devices: _containers.RepeatedScalarFieldContainer[str]
    accepts_start_batches: bool
    def __init__(self, node_name: _Optional[str] = ..., pools: _Optional[_Iterable[str]] = ..., labels: _Optional[_Mapping[str, str]] = ..., allocatable: _Optional[_Union[_node_pb2.Capacity, _Mapping]] = ..., advertise_address: _Optional[str] = ..., agent_version: _Optional[str] = ..., network_mode: _Optional[_Union[_node_pb2.NetworkMode, str]] = ..., network_name: _Optional[str] = ..., containers: _Optional[_Iterable[_Union[ContainerStatus, _Mapping]]] = ..., instance_id: _Optional[str] = ..., gpu_devices: _Optional[_Iterable[str]] = ..., accepts_start_batches: _Optional[bool] = ...) -> None: ...

class Registered(_message.Message):
    __slots__ = ("heartbeat_interval_seconds", "node_lost_after_seconds", "cluster_id", "log_window", "accepts_status_batches", "any_message_is_alive")
    HEARTBEAT_INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    NODE_LOST_AFTER_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    LOG_WINDOW_FIELD_NUMBER: _ClassVar[int]
    ACCEPTS_STATUS_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ANY_MESSAGE_IS_ALIVE_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_seconds: int
    node_lost_after_seconds: int
    cluster_id: str
    log_window: int
    accepts_status_batches: bool
    any_message_is_alive: bool
    def __init__(self, heartbeat_interval_seconds: _Optional[int] = ..., node_lost_after_seconds: _Optional[int] = ..., cluster_id: _Optional[str] = ..., log_window: _Optional[int] = ..., accepts_status_batches: _Optional[bool] = ..., any_message_is_alive: _Optional[bool] = ...) -> None: ...

class ContainerStatusBatch(_message.Message):
    __slots__ = ("statuses",)
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedCompositeFieldContainer[ContainerStatus]
    def __init__(self, statuses: _Optional[_Iterable[_Union[ContainerStatus, _Mapping]]] = ...) -> None: ...

class StartContainerBatch(_message.Message):
    __slots__ = ("starts",)
    STARTS_FIELD_NUMBER: _ClassVar[int]
    starts: _containers.RepeatedCompositeFieldContainer[StartContainer]
    def __init__(self, starts: _Optional[_Iterable[_Union[StartContainer, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("time",)
    TIME_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class LogEntry(_message.Message):
    __slots__ = ("run_id", "role", "replica", "time", "stream", "text", "sequence", "partial")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    STREAM_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    role: _run_pb2.ReplicaRole
    replica: int
    time: _timestamp_pb2.Timestamp
    stream: _run_pb2.LogStream
    text: str
    sequence: int
    partial: bool
    def __init__(self, run_id: _Optional[int] = ..., role: _Optional[_Union[_run_pb2.ReplicaRole, str]] = ..., replica: _Optional[int] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stream: _Optional[_Union[_run_pb2.LogStream, str]] = ..., text: _Optional[str] = ..., sequence: _Optional[int] = ..., partial: _Optional[bool] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("entries", "batch_id")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[LogEntry]
    batch_id: int
    def __init__(self, entries: _Optional[_Iterable[_Union[LogEntry, _Mapping]]] = ..., batch_id: _Optional[int] = ...) -> None: ...

class LogBatchAck(_message.Message):
    __slots__ = ("batch_id",)
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    batch_id: int
    def __init__(self, batch_id: _Optional[int] = ...) -> None: ...

class StartContainer(_message.Message):
    __slots__ = ("run_id", "role", "replica", "container_name", "hostname", "image", "command", "args", "working_dir", "env", "cpu_limit_millis", "memory_limit_bytes", "endpoints", "generation", "hosts", "gpu_devices", "pull_policy", "registry_credentials", "cluster_id", "buffers", "shm_size_bytes", "restart_always")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class HostsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_FIELD_NUMBER: _ClassVar[int]
    CONTAINER_NAME_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    CPU_LIMIT_MILLIS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_LIMIT_BYTES_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    GPU_DEVICES_FIELD_NUMBER: _ClassVar[int]
    PULL_POLICY_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_ID_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    SHM_SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    RESTART_ALWAYS_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    role: _run_pb2.ReplicaRole
    replica: int
    container_name: str
    hostname: str
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    working_dir: str
    env: _containers.ScalarMap[str, str]
    cpu_limit_millis: int
    memory_limit_bytes: int
    endpoints: _containers.RepeatedCompositeFieldContainer[EndpointPort]
    generation: int
    hosts: _containers.ScalarMap[str, str]
    gpu_devices: _containers.RepeatedScalarFieldContainer[str]
    pull_policy: _run_pb2.PullPolicy
    registry_credentials: _containers.RepeatedCompositeFieldContainer[RegistryCredential]
    cluster_id: str
    buffers: _containers.RepeatedCompositeFieldContainer[BufferPipe]
    shm_size_bytes: int
    restart_always: bool
    def __init__(self, run_id: _Optional[int] = ..., role: _Optional[_Union[_run_pb2.ReplicaRole, str]] = ..., replica: _Optional[int] = ..., container_name: _Optional[str] = ..., hostname: _Optional[str] = ..., image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., working_dir: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., cpu_limit_millis: _Optional[int] = ..., memory_limit_bytes: _Optional[int] = ..., endpoints: _Optional[_Iterable[_Union[EndpointPort, _Mapping]]] = ..., generation: _Optional[int] = ..., hosts: _Optional[_Mapping[str, str]] = ..., gpu_devices: _Optional[_Iterable[str]] = ..., pull_policy: _Optional[_Union[_run_pb2.PullPolicy, str]] = ..., registry_credentials: _Optional[_Iterable[_Union[RegistryCredential, _Mapping]]] = ..., cluster_id: _Optional[str] = ..., buffers: _Optional[_Iterable[_Union[BufferPipe, _Mapping]]] = ..., shm_size_bytes: _Optional[int] = ..., restart_always: _Optional[bool] = ...) -> None: ...

class BufferPipe(_message.Message):
    __slots__ = ("name", "output", "buffer_id", "access_url", "ca_pem")
    NAME_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FIELD_NUMBER: _ClassVar[int]
    BUFFER_ID_FIELD_NUMBER: _ClassVar[int]
    ACCESS_URL_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    name: str
    output: bool
    buffer_id: str
    access_url: str
    ca_pem: str
    def __init__(self, name: _Optional[str] = ..., output: _Optional[bool] = ..., buffer_id: _Optional[str] = ..., access_url: _Optional[str] = ..., ca_pem: _Optional[str] = ...) -> None: ...

class TeardownRun(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    def __init__(self, run_id: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("join_token", "node_name", "csr_pem")
    JOIN_TOKEN_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    join_token: str
    node_name: str
    csr_pem: str
    def __init__(self, join_token: _Optional[str] = ..., node_name: _Optional[str] = ..., csr_pem: _Optional[str] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("certificate_pem", "ca_pem", "agent_port", "pools")
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    CA_PEM_FIELD_NUMBER: _ClassVar[int]
    AGENT_PORT_FIELD_NUMBER: _ClassVar[int]
    POOLS_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    ca_pem: str
    agent_port: int
    pools: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, certificate_pem: _Optional[str] = ..., ca_pem: _Optional[str] = ..., agent_port: _Optional[int] = ..., pools: _Optional[_Iterable[str]] = ...) -> None: ...

class RenewCertificateRequest(_message.Message):
    __slots__ = ("csr_pem",)
    CSR_PEM_FIELD_NUMBER: _ClassVar[int]
    csr_pem: str
    def __init__(self, csr_pem: _Optional[str] = ...) -> None: ...

class RenewCertificateResponse(_message.Message):
    __slots__ = ("certificate_pem",)
    CERTIFICATE_PEM_FIELD_NUMBER: _ClassVar[int]
    certificate_pem: str
    def __init__(self, certificate_pem: _Optional[str] = ...) -> None: ...

class RegistryCredential(_message.Message):
    __slots__ = ("registry", "username", "password")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    registry: str
    username: str
    password: str
    def __init__(self, registry: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class PullImage(_message.Message):
    __slots__ = ("request_id", "image", "policy", "registry_credentials")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REGISTRY_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: str
    policy: _run_pb2.PullPolicy
    registry_credentials: _containers.RepeatedCompositeFieldContainer[RegistryCredential]
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[str] = ..., policy: _Optional[_Union[_run_pb2.PullPolicy, str]] = ..., registry_credentials: _Optional[_Iterable[_Union[RegistryCredential, _Mapping]]] = ...) -> None: ...

class ImagePulled(_message.Message):
    __slots__ = ("request_id", "image", "digest", "error", "pulled")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PULLED_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    image: str
    digest: str
    error: str
    pulled: bool
    def __init__(self, request_id: _Optional[str] = ..., image: _Optional[str] = ..., digest: _Optional[str] = ..., error: _Optional[str] = ..., pulled: _Optional[bool] = ...) -> None: ...

class ListImages(_message.Message):
    __slots__ = ("request_id",)
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    def __init__(self, request_id: _Optional[str] = ...) -> None: ...

class ImagesListed(_message.Message):
    __slots__ = ("request_id", "images")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    images: _containers.RepeatedCompositeFieldContainer[NodeImage]
    def __init__(self, request_id: _Optional[str] = ..., images: _Optional[_Iterable[_Union[NodeImage, _Mapping]]] = ...) -> None: ...

class NodeImage(_message.Message):
    __slots__ = ("tags", "digest", "size_bytes")
    TAGS_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedScalarFieldContainer[str]
    digest: str
    size_bytes: int
    def __init__(self, tags: _Optional[_Iterable[str]] = ..., digest: _Optional[str] = ..., size_bytes: _Optional[int] = ...) -> None: ...
