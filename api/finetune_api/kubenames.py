"""Kubernetes' own name rules (k8s.io/apimachinery/pkg/util/validation), in Python.

Each is the twin of a CEL `format.<name>()` check in the CRD, so a spec the apiserver would refuse when the
operator creates the pod (a toleration key with a space, a nodeSelector value over 63 characters) is refused
at `kubectl apply` time instead, by the model and the apiserver alike. Each function returns True when valid.
"""

from __future__ import annotations

import re

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
_QUALIFIED_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
QUALIFIED_NAME_MAX_LENGTH = 63
LABEL_VALUE_MAX_LENGTH = 63
# A qualified name's longest form: a DNS subdomain prefix, '/', a 63-character name.
QUALIFIED_NAME_WITH_PREFIX_MAX_LENGTH = DNS1123_SUBDOMAIN_MAX_LENGTH + 1 + QUALIFIED_NAME_MAX_LENGTH
# The prefix Kubernetes reserves for its own resources (IsPrefixedNativeResource).
NATIVE_RESOURCE_PREFIX = "kubernetes.io/"
# Quota names extended resources as requests.<name> (IsExtendedResourceName).
QUOTA_REQUESTS_PREFIX = "requests."


def is_dns1123_subdomain(value: str) -> bool:
    """IsDNS1123Subdomain: lower-case labels joined by '.', at most 253 characters."""
    return len(value) <= DNS1123_SUBDOMAIN_MAX_LENGTH and bool(_DNS1123_SUBDOMAIN_RE.fullmatch(value))


def is_qualified_name(value: str) -> bool:
    """IsQualifiedName (label keys, toleration keys): [DNS-subdomain '/'] name of at most 63 characters."""
    parts = value.split("/")
    if len(parts) > 2:
        return False
    if len(parts) == 2 and not is_dns1123_subdomain(parts[0]):
        return False
    name = parts[-1]
    return len(name) <= QUALIFIED_NAME_MAX_LENGTH and bool(_QUALIFIED_NAME_RE.fullmatch(name))


def is_label_value(value: str) -> bool:
    """IsValidLabelValue: empty, or a qualified name's name part (at most 63 characters)."""
    return value == "" or (len(value) <= LABEL_VALUE_MAX_LENGTH and bool(_QUALIFIED_NAME_RE.fullmatch(value)))


def is_extended_resource_name(value: str) -> bool:
    """What a container's resources accept beside cpu/memory/…: `<domain>/<name>` outside kubernetes.io.

    validateContainerResourceName: a qualified name; with a '/', either a native (kubernetes.io/) resource or
    an extended one, whose quota name requests.<name> must itself be a qualified name.
    """
    return (
        "/" in value
        and NATIVE_RESOURCE_PREFIX not in value
        and not value.startswith(QUOTA_REQUESTS_PREFIX)
        and is_qualified_name(value)
        and is_qualified_name(QUOTA_REQUESTS_PREFIX + value)
    )
