"""``eeszt-gw console``: serve the web console; ``console add-user | remove-user | list-users``
keep its users file. Every one of them takes :class:`ConsoleSettings`' flags (the user commands
read only ``--users-file``)."""

from __future__ import annotations

import argparse
import getpass
import sys
import textwrap

from eeszt_gw.config import ENV_NOTE, UsageError, add_settings, load

from .settings import ConsoleSettings

_ABOUT = (
    "A web console for operators: the status report (as `eeszt-gw status`, refreshed live), "
    "the dead letters (list, show, replay, purge by age, as `eeszt-gw dlq`) and one request's "
    "audit trail (as `eeszt-gw audit`). Users log in with a password from --users-file; a "
    "viewer looks, an operator also replays and purges, audited under their name. TAJs are "
    "masked everywhere. See docs/console.md.")


def _users_file(settings: ConsoleSettings):
    from .users import UsersFile

    if settings.users_file is None:
        raise UsageError("--users-file: required: give it, or set EESZT_USERS_FILE or "
                         "'users_file' in --config")
    return UsersFile(settings.users_file)


def _serve(ns: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from .app import create_app
    from .users import UsersError

    settings = load(ConsoleSettings, ns, "console")
    tls = settings.checked_broker_tls()
    users = _users_file(settings)
    try:
        if not users.users():
            raise UsageError(f"--users-file {settings.users_file}: no users yet (add one with "
                             "`eeszt-gw console add-user NAME --role operator`)")
    except UsersError as exc:
        raise UsageError(str(exc)) from None
    for path, flag in ((settings.tls_cert, "--tls-cert"), (settings.tls_key, "--tls-key")):
        if path is not None and not path.is_file():
            raise UsageError(f"{flag} {path}: no such file")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pika").setLevel(logging.CRITICAL)
    app = create_app(settings, tls)
    scheme = "https" if settings.tls_cert else "http"
    print(f"eeszt-gw console on {scheme}://{settings.host}:{settings.port}/", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
                ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
                proxy_headers=False, server_header=False)
    return 0


def _read_password(ns: argparse.Namespace) -> str:
    if ns.password_stdin:
        line = sys.stdin.readline()
        return line[:-1] if line.endswith("\n") else line
    first = getpass.getpass("password: ")
    if getpass.getpass("password again: ") != first:
        raise UsageError("password: the two entries differ")
    return first


def _add_user(ns: argparse.Namespace) -> int:
    from .users import UsersError

    users = _users_file(load(ConsoleSettings, ns, "console"))
    try:
        from .users import check_name

        check_name(ns.name)
        replaced = users.add(ns.name, ns.role, _read_password(ns))
    except UsersError as exc:
        raise UsageError(str(exc)) from None
    print(f"{'replaced' if replaced else 'added'} {ns.name} ({ns.role}) in {users.path}")
    return 0


def _remove_user(ns: argparse.Namespace) -> int:
    from .users import UsersError

    users = _users_file(load(ConsoleSettings, ns, "console"))
    try:
        removed = users.remove(ns.name)
    except UsersError as exc:
        raise UsageError(str(exc)) from None
    if not removed:
        print(f"no user {ns.name} in {users.path}", file=sys.stderr)
        return 1
    print(f"removed {ns.name} from {users.path}")
    return 0


def _list_users(ns: argparse.Namespace) -> int:
    from .users import UsersError

    users = _users_file(load(ConsoleSettings, ns, "console"))
    try:
        found = users.users()
    except UsersError as exc:
        raise UsageError(str(exc)) from None
    for user in found:
        print(f"{user.name}\t{user.role}")
    if not found:
        print(f"no users in {users.path}", file=sys.stderr)
    return 0


def register(sub) -> None:
    text = textwrap.fill(_ABOUT, 88)
    p = sub.add_parser("console", help="the operators' web console (status, dead letters, audit)",
                       description=f"{text}\n\n{textwrap.fill(ENV_NOTE, 88)}",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_settings(p, ConsoleSettings)
    p.set_defaults(func=_serve)
    users = p.add_subparsers(dest="sub", metavar="[USERS COMMAND]", required=False)
    about_users = " The users file holds only argon2 hashes, is written atomically with mode 0600."
    add = users.add_parser("add-user", help="add a user, or set their role and password",
                           description="Add NAME to --users-file (or replace their role and "
                           "password). The password (at least 12 characters) is asked twice, or "
                           "read from one line of stdin with --password-stdin." + about_users)
    add.add_argument("name", metavar="NAME")
    add.add_argument("--role", required=True, choices=("viewer", "operator"),
                     help="viewer: looks only; operator: also replays and purges dead letters")
    add.add_argument("--password-stdin", action="store_true",
                     help="read the password from stdin (one line) instead of asking")
    add_settings(add, ConsoleSettings)
    add.set_defaults(func=_add_user)
    rm = users.add_parser("remove-user", help="remove a user (their sessions end at once)",
                          description="Remove NAME from --users-file; their open sessions end "
                          "at their next request." + about_users)
    rm.add_argument("name", metavar="NAME")
    add_settings(rm, ConsoleSettings)
    rm.set_defaults(func=_remove_user)
    ls = users.add_parser("list-users", help="the users and their roles",
                          description="Print each user of --users-file and their role.")
    add_settings(ls, ConsoleSettings)
    ls.set_defaults(func=_list_users)
