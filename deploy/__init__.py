"""Deployment tooling: certificates, local TLS deployment, compose validation."""
