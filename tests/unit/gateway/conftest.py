from tests.gateway_fixtures import pg_store, redis_env, sqlite_store, store  # noqa: F401
