"""The Ray Serve layer: thin deployments over llmaas classes, and the app builder."""

from llmaas.deployments.builder import AppArgs, build_app, build_from_catalog

__all__ = ["AppArgs", "build_app", "build_from_catalog"]
