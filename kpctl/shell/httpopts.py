"""The http-filter rule options shared by attach, http-rules and serve:
every rule of a rules file (kpctl/http.py documents the format) as an
option, and --rules FILE.  Options add to the file's rules: a deny or
allow list gets their values too, a method list or limit replaces the
file's."""

from __future__ import annotations

from kpctl.shell.args import Namespace, Opt, UsageError, count

RULE_OPTS = (
    Opt(("--rules",), "rules", "http-filter: read the rules from FILE (one `KEYWORD VALUE` "
        "a line, see the README); the options below add to them",
        metavar="FILE", complete="file"),
    Opt(("--allow-methods",), "allow_methods", "http-filter: only these methods, e.g. "
        "GET,HEAD,POST (others: 405)", metavar="LIST"),
    Opt(("--deny-host",), "deny_host", "http-filter: 403 for requests to this Host",
        metavar="HOST", multi=True),
    Opt(("--deny-path",), "deny_path", "http-filter: 403 for paths starting with PREFIX",
        metavar="PREFIX", multi=True),
    Opt(("--allow-path",), "allow_path", "http-filter: 403 for paths starting with none of "
        "the allowed PREFIXes", metavar="PREFIX", multi=True),
    Opt(("--max-request-line",), "max_request_line", "http-filter: 414 for a request line "
        "longer than N bytes", metavar="N", type=count),
    Opt(("--max-header-bytes",), "max_header_bytes", "http-filter: 431 for a header block "
        "over N bytes", metavar="N", type=count),
    Opt(("--max-headers",), "max_headers", "http-filter: 431 for more than N header fields",
        metavar="N", type=count),
    Opt(("--max-body-bytes",), "max_body_bytes", "http-filter: 413 for a body over N bytes",
        metavar="N", type=count),
)

RULE_DESTS = tuple(o.dest for o in RULE_OPTS)


def given(ns: Namespace) -> bool:
    """Was any rule option given?"""
    return any(ns.get(d) not in (None, [], ()) for d in RULE_DESTS)


def rules_from(ns: Namespace, what: str):
    """The HttpRules the options of `ns` say (--rules FILE first, the
    options added); a UsageError names the mistake."""
    import dataclasses

    from kpctl import http

    try:
        if ns.get("rules"):
            try:
                with open(ns.rules, encoding="utf-8") as f:
                    text = f.read()
            except OSError as e:
                raise UsageError(f"{what}: cannot read {ns.rules}: {e.strerror}") from None
            rules = http.parse_rules_file(text, ns.rules)
        else:
            rules = http.HttpRules()
        changes: dict = {}
        if ns.get("allow_methods"):
            methods = frozenset(m.strip().upper() for m in ns.allow_methods.split(",")
                                if m.strip())
            unknown = sorted(methods - http.METHODS.keys())
            if unknown or not methods:
                raise UsageError(f"{what}: --allow-methods: unknown method "
                                 f"{', '.join(unknown) or repr(ns.allow_methods)} "
                                 f"(known: {', '.join(http.METHODS)})")
            changes["allow_methods"] = methods
        for dest, field in (("deny_host", "deny_hosts"), ("deny_path", "deny_paths"),
                            ("allow_path", "allow_paths")):
            if ns.get(dest):
                changes[field] = getattr(rules, field) + tuple(ns[dest])
        for dest in ("max_request_line", "max_header_bytes", "max_headers", "max_body_bytes"):
            if ns.get(dest) is not None:
                changes[dest] = ns[dest]
        rules = dataclasses.replace(rules, **changes)
        rules.check()
    except http.HttpRulesError as e:
        raise UsageError(f"{what}: {e.message}") from None
    return rules
