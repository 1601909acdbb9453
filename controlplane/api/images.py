"""ImageService and RegistryService servicers: translation only."""

from __future__ import annotations

import grpc

from controlplane.api.convert import node_images_to_pb, node_pull_to_pb, pull_policy_from_pb
from controlplane.api.errors import grpc_errors
from controlplane.services.images import ImageService
from controlplane.services.registries import RegistryService
from muster.v1 import image_pb2 as pb
from muster.v1 import image_pb2_grpc as pb_grpc

# Answers must be back before the caller's deadline, or it learns nothing at all.
_DEADLINE_MARGIN = 0.5


def _time_left(context: grpc.aio.ServicerContext) -> float | None:
    remaining = context.time_remaining()
    return None if remaining is None else remaining - _DEADLINE_MARGIN


class ImageServicer(pb_grpc.ImageServiceServicer):
    """Pulls and lists images on nodes."""

    def __init__(self, images: ImageService) -> None:
        self._images = images

    @grpc_errors
    async def PullImage(
        self, request: pb.PullImageRequest, context: grpc.aio.ServicerContext
    ) -> pb.PullImageResponse:
        policy = pull_policy_from_pb(request.policy, "policy") or "missing"
        results = await self._images.pull(
            request.image, request.pool, policy, within=_time_left(context)
        )
        return pb.PullImageResponse(results=[node_pull_to_pb(r) for r in results])

    @grpc_errors
    async def ListImages(
        self, request: pb.ListImagesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListImagesResponse:
        nodes = await self._images.list(request.node, within=_time_left(context))
        return pb.ListImagesResponse(nodes=[node_images_to_pb(n) for n in nodes])


class RegistryServicer(pb_grpc.RegistryServiceServicer):
    """Registry logins; never answers with a password."""

    def __init__(self, registries: RegistryService) -> None:
        self._registries = registries

    @grpc_errors
    async def Login(
        self, request: pb.LoginRequest, context: grpc.aio.ServicerContext
    ) -> pb.LoginResponse:
        registry = await self._registries.login(
            request.registry, request.username, request.password
        )
        return pb.LoginResponse(registry=registry)

    @grpc_errors
    async def Logout(
        self, request: pb.LogoutRequest, context: grpc.aio.ServicerContext
    ) -> pb.LogoutResponse:
        return pb.LogoutResponse(registry=await self._registries.logout(request.registry))

    @grpc_errors
    async def ListRegistries(
        self, request: pb.ListRegistriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRegistriesResponse:
        return pb.ListRegistriesResponse(
            registries=[
                pb.RegistryLogin(registry=r, username=u) for r, u in self._registries.list()
            ]
        )
