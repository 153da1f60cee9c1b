# A real PostgreSQL for the registry tests that run on both stores (tests/stores/mod.rs):
# Debian's server, a fresh cluster in a temporary folder, listening on a free localhost port
# only, owned by the `postgres` user (the server refuses to run as root), stopped at the end.
# Exports BEATLAB_TEST_POSTGRES=postgres://postgres@127.0.0.1:PORT/postgres; each test makes
# its own database there.

if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
    apt_install postgresql
fi
pg_bin="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/pg_ctl | sort -V | tail -1)")"
pg_dir="$(mktemp -d /tmp/beatlab-pg.XXXXXX)"
chown postgres: "$pg_dir"
# A port nobody listens on.
pg_port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
pg_as() { runuser -u postgres -- "$@"; }
pg_as "$pg_bin/initdb" --pgdata="$pg_dir/data" --username=postgres --auth=trust \
    --encoding=UTF8 --no-instructions >/dev/null
# In the cluster's own configuration, so that a test restarting the server gets the same one.
# fsync off: a test server's data need not survive a power loss.
cat >>"$pg_dir/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pg_port
unix_socket_directories = '$pg_dir'
max_connections = 200
fsync = off
CONF
pg_as "$pg_bin/pg_ctl" --pgdata="$pg_dir/data" --log="$pg_dir/server.log" --wait start >/dev/null
on_exit "runuser -u postgres -- '$pg_bin/pg_ctl' --pgdata='$pg_dir/data' --mode=fast --wait stop >/dev/null; rm -rf '$pg_dir'"
export BEATLAB_TEST_POSTGRES="postgres://postgres@127.0.0.1:$pg_port/postgres"
# For tests that restart the server mid-sweep.
export BEATLAB_TEST_POSTGRES_CTL="runuser -u postgres -- $pg_bin/pg_ctl --pgdata=$pg_dir/data --log=$pg_dir/server.log"
echo "test.sh: PostgreSQL $("$pg_bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$pg_port ($pg_dir)"
