"""Deployment manifests shipped with virtproof (RBAC for the KubeVirt backend), read as package data."""
