import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CodespecKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODESPEC_KIND_UNSPECIFIED: _ClassVar[CodespecKind]
    CODESPEC_KIND_JOB: _ClassVar[CodespecKind]
    CODESPEC_KIND_WORKER: _ClassVar[CodespecKind]

class CodespecOrder(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CODESPEC_ORDER_UNSPECIFIED: _ClassVar[CodespecOrder]
    CODESPEC_ORDER_NEWEST_FIRST: _ClassVar[CodespecOrder]
    CODESPEC_ORDER_NAME: _ClassVar[CodespecOrder]
CODESPEC_KIND_UNSPECIFIED: CodespecKind
CODESPEC_KIND_JOB: CodespecKind
CODESPEC_KIND_WORKER: CodespecKind
CODESPEC_ORDER_UNSPECIFIED: CodespecOrder
CODESPEC_ORDER_NEWEST_FIRST: CodespecOrder
CODESPEC_ORDER_NAME: CodespecOrder

class ResourceQuantities(_message.Message):
    __slots__ = ("cpu", "memory")
    CPU_FIELD_NUMBER: _ClassVar[int]
    MEMORY_FIELD_NUMBER: _ClassVar[int]
    cpu: str
    memory: str
    def __init__(self, cpu: _Optional[str] = ..., memory: _Optional[str] = ...) -> None: ...

class Resources(_message.Message):
    __slots__ = ("requests", "limits", "gpu", "shm")
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    SHM_FIELD_NUMBER: _ClassVar[int]
    requests: ResourceQuantities
    limits: ResourceQuantities
    gpu: int
    shm: str
    def __init__(self, requests: _Optional[_Union[ResourceQuantities, _Mapping]] = ..., limits: _Optional[_Union[ResourceQuantities, _Mapping]] = ..., gpu: _Optional[int] = ..., shm: _Optional[str] = ...) -> None: ...

class Buffers(_message.Message):
    __slots__ = ("inputs", "outputs")
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedScalarFieldContainer[str]
    outputs: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, inputs: _Optional[_Iterable[str]] = ..., outputs: _Optional[_Iterable[str]] = ...) -> None: ...

class Codespec(_message.Message):
    __slots__ = ("name", "version", "kind", "image", "command", "args", "working_dir", "env", "resources", "max_replicas", "buffers", "endpoints", "created_at")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class EndpointsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    COMMAND_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    WORKING_DIR_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    kind: CodespecKind
    image: str
    command: _containers.RepeatedScalarFieldContainer[str]
    args: _containers.RepeatedScalarFieldContainer[str]
    working_dir: str
    env: _containers.ScalarMap[str, str]
    resources: Resources
    max_replicas: int
    buffers: Buffers
    endpoints: _containers.ScalarMap[str, int]
    created_at: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., kind: _Optional[_Union[CodespecKind, str]] = ..., image: _Optional[str] = ..., command: _Optional[_Iterable[str]] = ..., args: _Optional[_Iterable[str]] = ..., working_dir: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., resources: _Optional[_Union[Resources, _Mapping]] = ..., max_replicas: _Optional[int] = ..., buffers: _Optional[_Union[Buffers, _Mapping]] = ..., endpoints: _Optional[_Mapping[str, int]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateCodespecRequest(_message.Message):
    __slots__ = ("codespec",)
    CODESPEC_FIELD_NUMBER: _ClassVar[int]
    codespec: Codespec
    def __init__(self, codespec: _Optional[_Union[Codespec, _Mapping]] = ...) -> None: ...

class CreateCodespecResponse(_message.Message):
    __slots__ = ("codespec", "created")
    CODESPEC_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    codespec: Codespec
    created: bool
    def __init__(self, codespec: _Optional[_Union[Codespec, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetCodespecRequest(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ...) -> None: ...

class GetCodespecResponse(_message.Message):
    __slots__ = ("codespec",)
    CODESPEC_FIELD_NUMBER: _ClassVar[int]
    codespec: Codespec
    def __init__(self, codespec: _Optional[_Union[Codespec, _Mapping]] = ...) -> None: ...

class ListCodespecsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "prefix", "order")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    prefix: str
    order: CodespecOrder
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., prefix: _Optional[str] = ..., order: _Optional[_Union[CodespecOrder, str]] = ...) -> None: ...

class ListCodespecsResponse(_message.Message):
    __slots__ = ("codespecs", "next_page_token")
    CODESPECS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    codespecs: _containers.RepeatedCompositeFieldContainer[Codespec]
    next_page_token: str
    def __init__(self, codespecs: _Optional[_Iterable[_Union[Codespec, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
