from muster.v1 import agent_pb2 as _agent_pb2
from muster.v1 import run_pb2 as _run_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PullImageRequest(_message.Message):
    __slots__ = ("image", "pool", "policy")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    POOL_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    image: str
    pool: str
    policy: _run_pb2.PullPolicy
    def __init__(self, image: _Optional[str] = ..., pool: _Optional[str] = ..., policy: _Optional[_Union[_run_pb2.PullPolicy, str]] = ...) -> None: ...

class NodePullResult(_message.Message):
    __slots__ = ("node", "digest", "error", "pulled")
    NODE_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PULLED_FIELD_NUMBER: _ClassVar[int]
    node: str
    digest: str
    error: str
    pulled: bool
    def __init__(self, node: _Optional[str] = ..., digest: _Optional[str] = ..., error: _Optional[str] = ..., pulled: _Optional[bool] = ...) -> None: ...

class PullImageResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[NodePullResult]
    def __init__(self, results: _Optional[_Iterable[_Union[NodePullResult, _Mapping]]] = ...) -> None: ...

class ListImagesRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class NodeImages(_message.Message):
    __slots__ = ("node", "images", "error")
    NODE_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    node: str
    images: _containers.RepeatedCompositeFieldContainer[_agent_pb2.NodeImage]
    error: str
    def __init__(self, node: _Optional[str] = ..., images: _Optional[_Iterable[_Union[_agent_pb2.NodeImage, _Mapping]]] = ..., error: _Optional[str] = ...) -> None: ...

class ListImagesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[NodeImages]
    def __init__(self, nodes: _Optional[_Iterable[_Union[NodeImages, _Mapping]]] = ...) -> None: ...

class LoginRequest(_message.Message):
    __slots__ = ("registry", "username", "password")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    PASSWORD_FIELD_NUMBER: _ClassVar[int]
    registry: str
    username: str
    password: str
    def __init__(self, registry: _Optional[str] = ..., username: _Optional[str] = ..., password: _Optional[str] = ...) -> None: ...

class LoginResponse(_message.Message):
    __slots__ = ("registry",)
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    registry: str
    def __init__(self, registry: _Optional[str] = ...) -> None: ...

class LogoutRequest(_message.Message):
    __slots__ = ("registry",)
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    registry: str
    def __init__(self, registry: _Optional[str] = ...) -> None: ...

class LogoutResponse(_message.Message):
    __slots__ = ("registry",)
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    registry: str
    def __init__(self, registry: _Optional[str] = ...) -> None: ...

class ListRegistriesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RegistryLogin(_message.Message):
    __slots__ = ("registry", "username")
    REGISTRY_FIELD_NUMBER: _ClassVar[int]
    USERNAME_FIELD_NUMBER: _ClassVar[int]
    registry: str
    username: str
    def __init__(self, registry: _Optional[str] = ..., username: _Optional[str] = ...) -> None: ...

class ListRegistriesResponse(_message.Message):
    __slots__ = ("registries",)
    REGISTRIES_FIELD_NUMBER: _ClassVar[int]
    registries: _containers.RepeatedCompositeFieldContainer[RegistryLogin]
    def __init__(self, registries: _Optional[_Iterable[_Union[RegistryLogin, _Mapping]]] = ...) -> None: ...
