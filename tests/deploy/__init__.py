"""Deployment checks: the image, the Kubernetes manifests, settings parity, Redis sizing."""
