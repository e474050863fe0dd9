"""API key storage (hashed, shown once), lookups and their cache, and `poolgate keys` on a real SQLite database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import text

from gateway.cli import main
from gateway.errors import GatewayError
from gateway.limits.keys import KeyParamError, KeyStore, hash_secret
from gateway.store import make_engine, upgrade


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    upgrade(url)
    return url


async def test_a_key_is_stored_only_as_its_hash_and_found_by_its_secret(db: str) -> None:
    engine = make_engine(db)
    store = KeyStore(engine, cache_ttl_s=0)
    record, secret = await store.create("team-a", budget_usd=3.0, period="week", rpm=5, pools=["auto"],
                                        default_flags={"cost": 0.4})
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT key_hash, key_prefix FROM api_keys"))).one()
    assert stored.key_hash == hash_secret(secret) and secret not in stored
    assert secret.startswith(stored.key_prefix) and len(secret) > 40
    found = await store.by_secret(secret)
    assert found is not None and found.id == record.id and found.limits().budget_nano == 3 * 10**9
    assert found.pools == frozenset({"auto"}) and found.default_flags == {"cost": 0.4}
    assert await store.by_secret(secret + "x") is None
    await engine.dispose()


async def test_bad_key_parameters_are_refused_naming_the_parameter(db: str) -> None:
    engine = make_engine(db)
    store = KeyStore(engine)
    for kwargs, word in [({"period": "year"}, "period"), ({"rpm": 0}, "rpm"), ({"budget_usd": -1.0}, "budget"),
                         ({"default_flags": {"speed": 1}}, "speed"), ({"pools": "auto"}, "pools")]:
        with pytest.raises(KeyParamError, match=word):
            await store.create("x", **kwargs)  # type: ignore[arg-type]
    await engine.dispose()


async def test_with_the_database_down_known_keys_still_pass_and_unknown_ones_get_503(db: str) -> None:
    engine = make_engine(db)
    store = KeyStore(engine, cache_ttl_s=0)  # every lookup goes to the database
    _, secret = await store.create("team-b")
    assert await store.by_secret(secret) is not None
    async with engine.begin() as conn:  # the table disappears: every query fails from now on
        await conn.execute(text("DROP TABLE api_keys"))
    assert (await store.by_secret(secret)) is not None  # served from the expired cache entry
    with pytest.raises(GatewayError) as info:
        await store.by_secret("pg-never-seen")
    assert info.value.status == 503 and info.value.code == "key_store_unavailable"
    await engine.dispose()


def _cli(db: str, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["keys", *args], env={"POOLGATE_DATABASE_URL": db, "POOLGATE_REDIS_URL": ""})
    return result.exit_code, result.output


def test_keys_cli_creates_lists_and_revokes(db: str) -> None:
    code, out = _cli(db, "create", "--name", "ops", "--rpm", "10", "--budget-usd", "2", "--period", "day",
                     "--pools", "auto, other", "--default-flags", '{"cost": 0.5}', "--json")
    assert code == 0, out
    key = json.loads(out)
    assert key["secret"].startswith("pg-") and key["pools"] == ["auto", "other"] and key["rpm"] == 10
    code, out = _cli(db, "list")
    assert code == 0 and key["id"] in out and "$2/day" in out and "active" in out and key["secret"] not in out
    code, out = _cli(db, "revoke", key["id"])
    assert code == 0 and "within key_cache_ttl_s" in out  # no Redis configured
    code, out = _cli(db, "list", "--active")
    assert code == 0 and out.strip() == "no keys"


def test_keys_cli_errors_are_one_clear_line(db: str, tmp_path: Path) -> None:
    code, out = _cli(db, "create", "--name", "x", "--default-flags", "{not json")
    assert code == 2 and "--default-flags" in out and "Traceback" not in out
    code, out = _cli(db, "create", "--name", "x", "--default-flags", '{"speed": 2}')
    assert code == 2 and "speed" in out
    code, out = _cli(db, "revoke", "key_nope")
    assert code == 1 and "no key 'key_nope'" in out
    code, out = _cli(f"sqlite+aiosqlite:///{tmp_path}/empty.db", "list")  # embedded: migrated as serve does
    assert code == 0 and out.strip() == "no keys"


def test_keys_cli_on_an_unmigrated_postgres_points_at_db_upgrade(pg_database: str) -> None:
    code, out = _cli(pg_database, "list")
    assert code == 1 and "api_keys" in out and "poolgate db upgrade" in out and "Traceback" not in out
