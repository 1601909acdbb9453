import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Buffer(_message.Message):
    __slots__ = ("id", "created_at", "soft_deleted", "expires_at", "tags", "etag", "location")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SOFT_DELETED_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    id: str
    created_at: _timestamp_pb2.Timestamp
    soft_deleted: bool
    expires_at: _timestamp_pb2.Timestamp
    tags: _containers.ScalarMap[str, str]
    etag: str
    location: str
    def __init__(self, id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., soft_deleted: _Optional[bool] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., tags: _Optional[_Mapping[str, str]] = ..., etag: _Optional[str] = ..., location: _Optional[str] = ...) -> None: ...

class CreateBufferRequest(_message.Message):
    __slots__ = ("tags", "ttl_seconds")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TAGS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.ScalarMap[str, str]
    ttl_seconds: int
    def __init__(self, tags: _Optional[_Mapping[str, str]] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class CreateBufferResponse(_message.Message):
    __slots__ = ("buffer",)
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    buffer: Buffer
    def __init__(self, buffer: _Optional[_Union[Buffer, _Mapping]] = ...) -> None: ...

class GetBufferRequest(_message.Message):
    __slots__ = ("id", "soft_deleted")
    ID_FIELD_NUMBER: _ClassVar[int]
    SOFT_DELETED_FIELD_NUMBER: _ClassVar[int]
    id: str
    soft_deleted: bool
    def __init__(self, id: _Optional[str] = ..., soft_deleted: _Optional[bool] = ...) -> None: ...

class GetBufferResponse(_message.Message):
    __slots__ = ("buffer",)
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    buffer: Buffer
    def __init__(self, buffer: _Optional[_Union[Buffer, _Mapping]] = ...) -> None: ...

class BufferFilter(_message.Message):
    __slots__ = ("tags", "exclude_tags", "soft_deleted")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ExcludeTagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TAGS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_TAGS_FIELD_NUMBER: _ClassVar[int]
    SOFT_DELETED_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.ScalarMap[str, str]
    exclude_tags: _containers.ScalarMap[str, str]
    soft_deleted: bool
    def __init__(self, tags: _Optional[_Mapping[str, str]] = ..., exclude_tags: _Optional[_Mapping[str, str]] = ..., soft_deleted: _Optional[bool] = ...) -> None: ...

class ListBuffersRequest(_message.Message):
    __slots__ = ("filter", "page_size", "page_token")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    filter: BufferFilter
    page_size: int
    page_token: str
    def __init__(self, filter: _Optional[_Union[BufferFilter, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBuffersResponse(_message.Message):
    __slots__ = ("buffers", "next_page_token")
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    buffers: _containers.RepeatedCompositeFieldContainer[Buffer]
    next_page_token: str
    def __init__(self, buffers: _Optional[_Iterable[_Union[Buffer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CountBuffersRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: BufferFilter
    def __init__(self, filter: _Optional[_Union[BufferFilter, _Mapping]] = ...) -> None: ...

class CountBuffersResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...

class UpdateBufferRequest(_message.Message):
    __slots__ = ("id", "tags", "clear_tags", "ttl_seconds", "etag")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    CLEAR_TAGS_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    id: str
    tags: _containers.ScalarMap[str, str]
    clear_tags: bool
    ttl_seconds: int
    etag: str
    def __init__(self, id: _Optional[str] = ..., tags: _Optional[_Mapping[str, str]] = ..., clear_tags: _Optional[bool] = ..., ttl_seconds: _Optional[int] = ..., etag: _Optional[str] = ...) -> None: ...

class UpdateBufferResponse(_message.Message):
    __slots__ = ("buffer",)
    BUFFER_FIELD_NUMBER: _ClassVar[int]
    buffer: Buffer
    def __init__(self, buffer: _Optional[_Union[Buffer, _Mapping]] = ...) -> None: ...

class DeleteBuffersRequest(_message.Message):
    __slots__ = ("ids", "filter", "all", "ttl_seconds", "purge")
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    PURGE_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    filter: BufferFilter
    all: bool
    ttl_seconds: int
    purge: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., filter: _Optional[_Union[BufferFilter, _Mapping]] = ..., all: _Optional[bool] = ..., ttl_seconds: _Optional[int] = ..., purge: _Optional[bool] = ...) -> None: ...

class DeleteBuffersResponse(_message.Message):
    __slots__ = ("buffers",)
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    buffers: _containers.RepeatedCompositeFieldContainer[Buffer]
    def __init__(self, buffers: _Optional[_Iterable[_Union[Buffer, _Mapping]]] = ...) -> None: ...

class RestoreBuffersRequest(_message.Message):
    __slots__ = ("ids", "tags", "all")
    class TagsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    IDS_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[str]
    tags: _containers.ScalarMap[str, str]
    all: bool
    def __init__(self, ids: _Optional[_Iterable[str]] = ..., tags: _Optional[_Mapping[str, str]] = ..., all: _Optional[bool] = ...) -> None: ...

class RestoreBuffersResponse(_message.Message):
    __slots__ = ("buffers",)
    BUFFERS_FIELD_NUMBER: _ClassVar[int]
    buffers: _containers.RepeatedCompositeFieldContainer[Buffer]
    def __init__(self, buffers: _Optional[_Iterable[_Union[Buffer, _Mapping]]] = ...) -> None: ...

class GetBufferAccessRequest(_message.Message):
    __slots__ = ("id", "writable", "ttl_seconds")
    ID_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_FIELD_NUMBER: _ClassVar[int]
    TTL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    id: str
    writable: bool
    ttl_seconds: int
    def __init__(self, id: _Optional[str] = ..., writable: _Optional[bool] = ..., ttl_seconds: _Optional[int] = ...) -> None: ...

class GetBufferAccessResponse(_message.Message):
    __slots__ = ("uri", "expires_at")
    URI_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    uri: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, uri: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
