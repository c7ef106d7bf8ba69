"""The console's users file: argon2 hashes only, written atomically with mode 0600, re-read when
it changes; and the `eeszt-gw console add-user | remove-user | list-users` commands."""

from __future__ import annotations

import json
import stat
import subprocess
import sys

import pytest

from eeszt_gw.console.users import UsersError, UsersFile
from tests.conftest import ROOT

PASSWORD = "correct horse battery staple"


def test_add_stores_an_argon2_hash_never_the_password_in_a_0600_file(tmp_path):
    # Given an empty folder
    path = tmp_path / "console-users.json"
    users = UsersFile(path)
    # When a user is added
    assert users.add("anna", "operator", PASSWORD) is False
    # Then the file is private, holds an argon2id hash and not the password
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert PASSWORD not in text
    entry = json.loads(text)["users"]["anna"]
    assert entry["role"] == "operator" and entry["hash"].startswith("$argon2id$")
    # and no temporary file is left beside it
    assert [p.name for p in tmp_path.iterdir()] == ["console-users.json"]
    # And the password logs in, a wrong one and an unknown user do not
    assert users.authenticate("anna", PASSWORD).role == "operator"
    assert users.authenticate("anna", PASSWORD + "x") is None
    assert users.authenticate("nobody", PASSWORD) is None


def test_a_second_reader_sees_a_removal_and_a_role_change(tmp_path):
    path = tmp_path / "u.json"
    writer, reader = UsersFile(path), UsersFile(path)
    writer.add("anna", "operator", PASSWORD)
    writer.add("bela", "viewer", PASSWORD)
    assert [(u.name, u.role) for u in reader.users()] == [("anna", "operator"), ("bela", "viewer")]
    assert writer.add("bela", "operator", PASSWORD) is True  # replaced
    assert writer.remove("anna") is True and writer.remove("anna") is False
    assert reader.get("anna") is None
    assert reader.get("bela").role == "operator"


@pytest.mark.parametrize("name,role,password,field", [
    ("anna", "admin", PASSWORD, "role"),
    ("anna smith", "viewer", PASSWORD, "user name"),
    ("anna", "viewer", "short", "password"),
])
def test_bad_input_is_refused_naming_the_field(tmp_path, name, role, password, field):
    with pytest.raises(UsersError, match=field):
        UsersFile(tmp_path / "u.json").add(name, role, password)
    assert not (tmp_path / "u.json").exists()


def test_a_broken_users_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "u.json"
    path.write_text('{"users": {"anna": {"role": "root", "hash": "x"}}}')
    with pytest.raises(UsersError, match="u.json.*anna"):
        UsersFile(path).users()
    path.write_text("not json")
    with pytest.raises(UsersError, match="not readable JSON"):
        UsersFile(path).get("anna")


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "eeszt_gw.cli", "console", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_the_user_commands(tmp_path):
    path = str(tmp_path / "u.json")
    # add-user reads the password from stdin and never prints it
    added = cli("add-user", "anna", "--role", "operator", "--password-stdin", "--users-file", path,
                stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert "added anna (operator)" in added.stdout and PASSWORD not in added.stdout + added.stderr
    assert UsersFile(path).authenticate("anna", PASSWORD) is not None  # the newline is not in it
    # a short password is refused with the field named, exit 2
    short = cli("add-user", "bela", "--role", "viewer", "--password-stdin", "--users-file", path,
                stdin="short\n")
    assert short.returncode == 2 and "error: password: at least 12" in short.stderr
    # list-users prints names and roles, never hashes
    listed = cli("list-users", "--users-file", path)
    assert listed.stdout == "anna\toperator\n" and "argon2" not in listed.stdout
    # remove-user: 0 when removed, 1 when there was no such user
    assert cli("remove-user", "anna", "--users-file", path).returncode == 0
    gone = cli("remove-user", "anna", "--users-file", path)
    assert gone.returncode == 1 and "no user anna" in gone.stderr
    # without --users-file: an error naming the flag and the environment variable
    missing = cli("list-users")
    assert missing.returncode == 2 and "--users-file" in missing.stderr
    assert "EESZT_USERS_FILE" in missing.stderr
