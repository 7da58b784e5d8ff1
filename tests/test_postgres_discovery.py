"""What `make test` says about the PostgreSQL it looked for (tests.support._find_postgres):
what it found at TEST_POSTGRES_URL, and why no throwaway cluster stood in."""

from __future__ import annotations

import pytest

from tests import support
from tests.support import free_port, probe_postgres


def test_a_closed_port_is_nothing_listening() -> None:
    port = free_port()

    usable, found = probe_postgres(f"postgresql://postgres@127.0.0.1:{port}/postgres")

    assert not usable
    assert found.startswith(f"nothing listens at 127.0.0.1:{port}"), found


def test_a_server_that_refuses_the_login_is_not_called_silent() -> None:
    if not probe_postgres("postgresql://postgres@127.0.0.1:5432/postgres")[0]:
        pytest.skip("needs the local PostgreSQL at 127.0.0.1:5432")

    usable, found = probe_postgres("postgresql://no_such_role_21@127.0.0.1:5432/postgres")

    assert not usable
    assert found == (
        'the server at 127.0.0.1:5432 answered but refused role "no_such_role_21" on '
        'database "postgres": role "no_such_role_21" does not exist'
    )


@pytest.mark.parametrize("refusing", [False, True])
def test_the_note_says_what_was_found_and_where_binaries_were_looked_for(
    monkeypatch: pytest.MonkeyPatch, refusing: bool
) -> None:
    if refusing and not probe_postgres("postgresql://postgres@127.0.0.1:5432/postgres")[0]:
        pytest.skip("needs the local PostgreSQL at 127.0.0.1:5432")
    url = (
        "postgresql://no_such_role_21@127.0.0.1:5432/postgres"
        if refusing
        else f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    )
    monkeypatch.setenv("TEST_POSTGRES_URL", url)
    monkeypatch.setattr(support, "POSTGRES_BINARIES", [])  # none: no cluster is started

    admin_url, note = support._find_postgres()

    assert admin_url is None
    found = (
        "the server at 127.0.0.1:5432 answered but refused role"
        if refusing
        else "nothing listens at 127.0.0.1:"
    )
    assert note.startswith(f"PostgreSQL: {found}"), note
    assert "nothing answers" not in note
    assert "/usr/lib/postgresql/<version>/bin" in note and "PATH" in note, note
    assert "only the SQLite tests run" in note
