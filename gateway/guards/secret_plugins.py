"""detect-secrets plugins of our own, for credential formats the library's plugins miss.

detect-secrets loads these the way it loads any custom plugin: `gateway.guards.secrets`
names this file in the library's settings (`plugins_used: [{name, path: file://…}]`, what
`detect-secrets scan --plugin FILE` writes into a baseline), and the library imports it and
adds its classes to `get_mapping_from_secret_type_to_class()` beside its own. So a guard's
`plugins:` list, `available_plugins()` and the labels work for them like for the built-ins.

This module is imported by path (detect_secrets.util.importlib.import_file_as_module): it
must import nothing of the gateway's.
"""

from __future__ import annotations

import re
from typing import ClassVar

from detect_secrets.plugins.base import RegexBasedDetector


class OpenAIProjectKeyDetector(RegexBasedDetector):
    """OpenAI API keys in the formats issued since 2024: project keys (`sk-proj-…`),
    service-account keys (`sk-svcacct-…`) and admin keys (`sk-admin-…`).

    The library's `OpenAIDetector` requires the `T3BlbkFJ` marker of the legacy user keys,
    which these do not all carry. Their body is 40+ URL-safe base64 characters (real ones run
    to ~150); requiring 40 keeps prose such as `sk-proj-name` or `sk-admin-panel` out.
    """

    secret_type = "OpenAI Project Key"

    # A literal `sk-` first, so `re` finds candidates by substring search instead of trying
    # the pattern at every position of a long prompt.
    denylist: ClassVar[list[re.Pattern[str]]] = [
        re.compile(r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_-]{40,}"),
    ]
